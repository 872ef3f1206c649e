"""A figure of explanation maps (device/explain.py) for a few test-split images of each class, for the model card.

    python -m bench.explain --run artifacts/views-s42 [--model device/models/student_int8.tflite] [--per-class 3]

Writes <run>/bench/explanations.png (the test split's own slices: it stays under artifacts/, never in the
repository, since the data may not be redistributed) and prints what each map cost.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench import unfinished
from device.explain import render
from device.metadata import ModelError
from device.preprocess import ImageError
from device.runtime import Classifier
from train.config import RUN_DIR


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__.splitlines()[0])
    p.add_argument("--run", default=RUN_DIR, help="a training run: its test split is drawn from")
    p.add_argument("--model", help="the int8 model to explain (default: <run>/student_int8.tflite)")
    p.add_argument("--per-class", type=int, default=3)
    a = p.parse_args(argv)
    run = Path(a.run)
    if why := unfinished(run, ("split.json",)):
        print(f"error: {why}", file=sys.stderr)
        return 2
    try:
        clf = Classifier(a.model or run / "student_int8.tflite")
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    test = json.loads((run / "split.json").read_text())["test"]
    rows, costs = [], []
    for label in clf.labels:
        tiles = []
        for path in [q for q in test if Path(q).parent.name == label][: a.per_class]:
            try:
                e = clf.explain(path)
            except ImageError:
                continue
            costs.append(e.seconds * 1000)
            tiles.append(render(e, scale=2))
        if tiles:
            rows.append(tiles)
    if not rows:
        print("error: no readable test images", file=sys.stderr)
        return 2
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)))
    for i, r in enumerate(rows):
        for j, tile in enumerate(r):
            grid.paste(tile, (j * w, i * h))
    out = run / "bench" / "explanations.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"{out}: {len(costs)} maps, median {np.median(costs):.1f} ms each ({clf.runtime})")
    clf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
