"""Q22's probe (docs/research.md): the screening threshold the rule gives on a run's validation split, beside the
default answer's sensitivity and specificity. Measured, did not pay: no --screen flag was added.

    python -m experiments.screen_threshold --run artifacts/gb-s42 --model device/models/student_int8.tflite
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from device.metrics import NO_TUMOUR
from experiments import open_model

MIN_SPECIFICITY, GRID = 0.975, 256


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder with split.json (its validation split)")
    p.add_argument("--model", required=True, help="an int8 model with its sidecar")
    a = p.parse_args(argv)
    if not (Path(a.run) / "split.json").is_file():
        print(f"error: --run {a.run} has no split.json", file=sys.stderr)
        return 2
    clf = open_model(a.model)
    if clf is None:
        return 2
    no = clf.labels.index(NO_TUMOUR)
    paths = json.loads((Path(a.run) / "split.json").read_text())["val"]
    probs = np.stack([clf.probabilities(q) for q in paths])
    tumour = np.array([Path(q).parent.name != NO_TUMOUR for q in paths])
    p_tumour, called = 1 - probs[:, no], probs.argmax(1) != no
    t = next(k / GRID for k in range(1, GRID + 1) if (p_tumour[~tumour] < k / GRID).mean() >= MIN_SPECIFICITY)
    print(f"rule: t = {t:.4f}: specificity {(p_tumour[~tumour] < t).mean():.2%}, sensitivity "
          f"{(p_tumour[tumour] >= t).mean():.2%} ({(~tumour).sum()} no-tumour, {tumour.sum()} tumour images)")
    print(f"default answer: specificity {(~called[~tumour]).mean():.2%}, sensitivity {called[tumour].mean():.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
