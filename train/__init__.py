"""Training: data, teacher, distillation, report (python -m train)."""
import time


def log(stage: str, msg: str) -> None:
    """One progress line of a training stage, time-stamped and flushed (readable in nohup logs)."""
    print(f"[{stage} {time.strftime('%H:%M:%S')}] {msg}", flush=True)
