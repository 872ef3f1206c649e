"""Classify brain-MRI slices on the board.  NOT a medical device: research and education only.

    python -m device.classify scan.jpg [more.jpg folder/ ...] [--json | --csv]

Exit codes: 0 all images classified, 1 some images failed, 2 usage or model error.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from device.metadata import ModelError
from device.preprocess import ImageError, is_image_path

PACKAGE_MODEL = Path(__file__).resolve().parent / "models" / "student_int8.tflite"


def default_model() -> Path | None:
    """The model shipped in the package, else the newest int8 student under ./artifacts."""
    if PACKAGE_MODEL.is_file():
        return PACKAGE_MODEL
    found = sorted(Path("artifacts").glob("*/student_int8.tflite"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def expand(paths):
    """Yield (path, error-or-None): files as given, folders recursively (image extensions only)."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f.name))
            if not files:
                yield p, "folder contains no images (.jpg/.jpeg/.png/.bmp/.tif/.gif/.webp)"
            for f in files:
                yield f, None
        elif p.exists():
            yield p, None
        else:
            yield p, "no such file or folder"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 too; keep it to one line
        raise UsageError(message)


def build_parser():
    p = Parser(prog="python -m device.classify", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument("--model", help="a .tflite with its .json sidecar (default: the shipped model)")
    p.add_argument("--top-k", type=int, default=1, help="labels to show per image (human output)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: runtime's choice)")
    p.add_argument("--runtime", default="auto", choices=["auto", "tflite-runtime", "litert"])
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="below this top probability the answer is 'uncertain' (0..1)")
    return p


def main(argv=None) -> int:
    try:
        a = build_parser().parse_args(argv)
        if a.top_k < 1:
            raise UsageError("--top-k must be >= 1")
        if not 0.0 <= a.min_confidence <= 1.0:
            raise UsageError("--min-confidence must be between 0 and 1")
    except UsageError as e:
        print(f"error: {e} (see --help)", file=sys.stderr)
        return 2
    model = Path(a.model) if a.model else default_model()
    if model is None:
        print("error: no model given and none shipped in device/models/ or found in artifacts/", file=sys.stderr)
        return 2
    from device.runtime import Classifier  # after argument checks: --help stays instant

    try:
        clf = Classifier(model, runtime=a.runtime, threads=a.threads)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    writer = None
    if a.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "label", "probability", *clf.labels, "latency_ms", "error"])
    n_ok = n_bad = n_files = 0
    for path, problem in expand(a.paths):
        t0 = time.perf_counter()
        n_files += problem is None
        if problem is None:
            try:
                probs = clf.predict_file(path)
            except ImageError as e:
                problem = str(e)
        ms = (time.perf_counter() - t0) * 1000
        if problem is not None:
            n_bad += 1
            if a.json:
                print(json.dumps({"path": str(path), "error": problem}), flush=True)
            elif writer:
                writer.writerow([str(path), "", "", *[""] * len(clf.labels), "", problem])
            else:
                print(f"{path}: error: {problem}", file=sys.stderr, flush=True)
            continue
        n_ok += 1
        order = probs.argsort()[::-1]
        top = int(order[0])
        label = clf.labels[top] if probs[top] >= a.min_confidence else "uncertain"
        if a.json:
            print(json.dumps({"path": str(path), "label": label, "probability": round(float(probs[top]), 4),
                              "probabilities": {c: round(float(v), 4) for c, v in zip(clf.labels, probs)},
                              "latency_ms": round(ms, 2)}), flush=True)
        elif writer:
            writer.writerow([str(path), label, f"{probs[top]:.4f}", *[f"{v:.4f}" for v in probs], f"{ms:.2f}", ""])
        else:
            shown = ", ".join(f"{clf.labels[i]} {probs[i]:.1%}" for i in order[: a.top_k])
            print(f"{path}: {label}  ({shown})  {ms:.1f} ms", flush=True)
    if n_files == 0:  # nothing but missing paths / empty folders: a usage error
        return 2
    if n_bad and not (a.json or a.csv):
        print(f"{n_bad} of {n_ok + n_bad} images failed", file=sys.stderr)
    return 1 if n_bad else 0


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # e.g. piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
