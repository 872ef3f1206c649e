"""The one-run benchmark (`python -m bench`) and the evaluation on scans from other sources (`bench.external`)."""
import re
from pathlib import Path

from device.atomic import atomic_write_bytes, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def portable(text: str) -> str:
    """text with every absolute path made portable: relative to the repository when inside it, else its last two
    parts (a run folder and a file). Reports, cards and sidecars travel; this machine's paths must not."""
    def short(m):
        p = Path(m.group(0))
        try:
            return str(p.resolve().relative_to(ROOT))
        except ValueError:
            return str(Path(*p.parts[-2:])) if len(p.parts) > 2 else p.name
    return re.sub(r"(?<![\w.~:/])/[^\s`'\",;)]+", short, text)


def command_line(module: str, argv) -> str:
    """The command a report was made with, in a form that holds no absolute path."""
    import sys

    return portable(f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:]))


def write_report(folder: Path, stem: str, result: dict, markdown: str) -> None:
    """<folder>/<stem>.json and .md (the model card reads the .md), and the table on stdout."""
    atomic_write_json(folder / f"{stem}.json", result)
    atomic_write_bytes(folder / f"{stem}.md", markdown.encode())
    print(markdown)


def unfinished(run: Path, files=("manifest.json", "split.json")) -> str | None:
    """The one line for a --run folder a benchmark cannot read (missing, or training never finished), else None."""
    if not run.is_dir():
        return f"--run {run}: no such run folder (train one with `make distill`)"
    missing = [f for f in files if not (run / f).is_file()]
    return f"--run {run} is not a finished training run (no {', '.join(missing)})" if missing else None
