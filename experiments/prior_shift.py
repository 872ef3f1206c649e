"""Q23's probe (docs/research.md): a site's class priors re-estimated from its unlabeled scans by EM (Saerens,
Latinne and Decaestecker, "Adjusting the Outputs of a Classifier to New a Priori Probabilities", Neural
Computation 2002), measured on external-dev halves split by a fixed hash of the file name: the adaptation half
without its labels, the evaluation half scored.

    python -m experiments.prior_shift --data ../shared/data/external-dev [--model device/models/student_int8.tflite]
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from bench.external import by_source
from device.metrics import NO_TUMOUR
from device.preprocess import ImageError
from device.priors import adjust, em_priors
from experiments import open_model


def half(path: str) -> int:
    return hashlib.sha256(Path(path).name.encode()).digest()[0] % 2   # 0: adaptation, 1: evaluation


def balanced(pred_tumour: np.ndarray, tumour: np.ndarray) -> tuple[float | None, float | None, float]:
    sens = float(pred_tumour[tumour].mean()) if tumour.any() else None
    spec = float((~pred_tumour[~tumour]).mean()) if (~tumour).any() else None
    return sens, spec, float(np.mean([v for v in (sens, spec) if v is not None]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="external-dev (evaluation only)")
    p.add_argument("--model", default="device/models/student_int8.tflite")
    a = p.parse_args(argv)
    root = Path(a.data)
    if not root.is_dir():
        print(f"error: --data {root}: no such folder", file=sys.stderr)
        return 2
    clf = open_model(a.model)
    if clf is None:
        return 2
    no = clf.labels.index(NO_TUMOUR)
    print("| source | eval images | EM priors (adaptation half) | sens. / spec. (balanced), default | adapted |")
    print("|---|---:|---|---|---|")
    for src, its in sorted(by_source(root).items()):
        rows = []
        for path, label in its:
            try:
                rows.append((half(path), clf.probabilities(path), label != NO_TUMOUR))
            except ImageError:
                continue
        h = np.array([r[0] for r in rows])
        probs = np.stack([r[1] for r in rows]).astype(np.float64) + 1e-6
        tumour = np.array([r[2] for r in rows])
        prior = em_priors(probs[h == 0])   # training prior: uniform (class-balanced)
        ev = h == 1
        before = balanced(probs[ev].argmax(1) != no, tumour[ev])
        after = balanced(adjust(probs[ev], prior).argmax(1) != no, tumour[ev])

        def fmt(r):
            s = "/".join("-" if v is None else f"{v:.1%}" for v in r[:2])
            return f"{s} ({r[2]:.1%})"

        print(f"| {src} | {int(ev.sum())} | " + ", ".join(f"{c} {v:.2f}" for c, v in zip(clf.labels, prior))
              + f" | {fmt(before)} | {fmt(after)} |")
    clf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
