"""`python -m convert`: every TFLite variant of a run, each converted in a fresh process.

    python -m convert --run artifacts/RUN [--variants student_int8,student_fp32,...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from convert import calibration
from convert.tflite import DEFAULT_VARIANTS, VARIANTS, model_of
from device.atomic import atomic_write_json
from train.config import RUN_DIR


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert", description=__doc__.splitlines()[0])
    p.add_argument("--run", default=RUN_DIR, help="run folder written by python -m train")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--calibration-size", type=int, default=calibration.SIZE,
                   help="representative images (training split)")
    p.add_argument("--seed", type=int, default=calibration.SEED)
    a = p.parse_args(argv)
    run = Path(a.run)
    if not (run / "split.json").is_file():
        print(f"error: {run} is not a finished training run (no split.json); run `make distill` first",
              file=sys.stderr)
        return 2
    variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"error: unknown variant(s) {bad}; choose from {VARIANTS}", file=sys.stderr)
        return 2
    results, failed = [], []
    for v in variants:
        if not (run / f"{model_of(v)}.keras").is_file():
            print(f"skip {v}: {run}/{model_of(v)}.keras not found")
            continue
        proc = subprocess.run([sys.executable, "-m", "convert.tflite", "--run", str(run), "--variant", v,
                               "--calibration-size", str(a.calibration_size), "--seed", str(a.seed)],
                              capture_output=True, text=True)
        line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        try:
            r = json.loads(line)
        except ValueError:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"FAILED {v}: {tail}", file=sys.stderr)
            failed.append(v)
            continue
        results.append(r)
        status = "ok" if not r["problems"] else "AUDIT FAILED: " + "; ".join(r["problems"])
        print(f"{v:16s} {r['bytes']:>10,d} bytes  in {r['input']['dtype']}{r['input']['quantization']}  "
              f"out {r['output']['dtype']}  {status}")
        if v.endswith("int8"):
            print(f"{'':16s} ops: {', '.join(r['op_types'])}")
        if r["problems"]:
            failed.append(v)
    atomic_write_json(run / "convert_report.json", {"variants": results, "failed": failed})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
