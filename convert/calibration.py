"""The representative MRI sample set used to calibrate int8 activation ranges.

Drawn only from the run's training split (never validation or test), stratified
by class, deterministic from the seed; its file list is saved beside the model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from device.preprocess import load_image

SIZE = 300   # representative images, drawn stratified from the training split
SEED = 42


def choose(train_paths: list[str], classes: list[str], n: int, seed: int) -> list[str]:
    """Stratified, reproducible pick of n training files (class = parent folder name)."""
    by_class = {c: sorted(p for p in train_paths if Path(p).parent.name == c) for c in classes}
    total = sum(len(v) for v in by_class.values())
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        files = by_class[c]
        k = min(len(files), max(1, int(round(n * len(files) / max(total, 1)))))
        picked += [files[i] for i in sorted(rng.choice(len(files), size=k, replace=False))]
    return picked


def load(paths: list[str], size: int) -> np.ndarray:
    return np.stack([load_image(p, size) for p in paths])


def read_split(run_dir) -> dict:
    f = Path(run_dir) / "split.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: run `make distill` (python -m train) first")
    return json.loads(f.read_text())
