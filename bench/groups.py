"""The source shortcut, in-house: int8 models scored per (class, style group) on the run's validation and test
split (docs/research.md, Q19).

    python -m bench.groups --data ../shared/data/brain-tumor-mri/Training \\
        --models device/models/student_int8.tflite,artifacts/gb-s42/student_int8.tflite

Style groups are train/groups.py's (k-means on generic ImageNet features, fitted on the training split). The
figure this issue is judged on in-house: the recall of tumours in the groups whose training images are mostly
no tumour ("tumours in the no-tumour look"), validation and test pooled; and the worst (class, group) cell with
at least MIN_CELL images. Evaluation only: nothing is fitted here but the groups themselves.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench import command_line, write_report
from device.metadata import ModelError
from device.metrics import NO_TUMOUR
from device.runtime import Classifier

MIN_CELL = 10           # a (class, group) cell smaller than this (validation and test pooled) is not "worst"
NO_TUMOUR_LOOK = 0.5    # a group whose training split is at least this share no tumour has the no-tumour look


def score(pred: np.ndarray, y: np.ndarray, g: np.ndarray, look: np.ndarray, classes: list[str]) -> dict:
    no = classes.index(NO_TUMOUR)
    cells = {}
    for c in range(len(classes)):
        for j in range(int(g.max()) + 1 if len(g) else 0):
            m = (y == c) & (g == j)
            if m.any():
                cells[f"{classes[c]}:g{j}"] = {"n": int(m.sum()), "recall": float((pred[m] == c).mean())}
    big = {k: v for k, v in cells.items() if v["n"] >= MIN_CELL}
    worst = min(big, key=lambda k: big[k]["recall"]) if big else None
    t = (y != no) & look[g]
    return {"n": int(len(y)), "accuracy": float((pred == y).mean()),
            "tumours_in_no_tumour_look": {"n": int(t.sum()),
                                          "found": float((pred[t] != no).mean()) if t.any() else None},
            "worst_cell": {"cell": worst, **big[worst]} if worst else None, "cells": cells}


def cell_table(cells: dict, classes: list[str], n_groups: int) -> str:
    """Markdown: one row per class, one column per group, "recall (images)" in each cell."""
    head = "| class | " + " | ".join(f"g{j}" for j in range(n_groups)) + " |"
    rows = [head, "|---|" + "---:|" * n_groups]
    for c in classes:
        rows.append(f"| {c} | " + " | ".join(
            f"{cells[f'{c}:g{j}']['recall']:.1%} ({cells[f'{c}:g{j}']['n']})" if f"{c}:g{j}" in cells else "-"
            for j in range(n_groups)) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    from train.config import Config, ConfigError
    from train.data import DataError, prepare
    from train.groups import style_groups, table

    p = argparse.ArgumentParser(prog="python -m bench.groups", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the training data (class-per-folder), split as `python -m train`")
    p.add_argument("--models", required=True, help="int8 .tflite files (with their sidecars), comma-separated")
    p.add_argument("--split-seed", type=int, default=Config.split_seed)
    p.add_argument("--out", default="artifacts/bench-groups", help="folder for groups.json / groups.md")
    args = p.parse_args(argv)
    models = [Path(m) for m in args.models.split(",") if m]
    missing = [str(m) for m in models if not m.is_file()]
    if missing:
        print(f"error: model not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        cfg = Config(data=args.data, split_seed=args.split_seed)
        cfg.validate()
        splits = prepare(cfg)
        clfs = {str(m): Classifier(m) for m in models}
    except (ConfigError, DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    groups = style_groups(splits, cfg)
    n, classes = len(splits.classes), splits.classes
    t = table(splits.images.labels[splits.train], groups.group[splits.train], n, groups.n)
    look = t[classes.index(NO_TUMOUR)] / np.maximum(t.sum(0), 1) >= NO_TUMOUR_LOOK
    idx = {"val": splits.val, "test": splits.test}
    result = {"command": command_line("bench.groups", argv), "no_tumour_look_groups": np.flatnonzero(look).tolist(),
              "models": {}}
    for name, clf in clfs.items():
        # each file through the model's own preprocessing (its sidecar's contract), not the run's cached pixels
        paths = splits.images.paths
        preds = {s: np.array([clf.assess(paths[i]).probabilities.argmax() for i in ix]) for s, ix in idx.items()}
        y = {s: splits.images.labels[ix] for s, ix in idx.items()}
        g = {s: groups.group[ix] for s, ix in idx.items()}
        r = {s: score(preds[s], y[s], g[s], look, classes) for s in idx}
        r["pooled"] = score(np.concatenate([preds["val"], preds["test"]]), np.concatenate([y["val"], y["test"]]),
                            np.concatenate([g["val"], g["test"]]), look, classes)
        result["models"][Path(name).as_posix()] = r
    rows = ["| model | val | test | tumours in the no-tumour look found (val+test) | worst cell (val+test) |",
            "|---|---:|---:|---:|---|"]
    for name, r in result["models"].items():
        tl, w = r["pooled"]["tumours_in_no_tumour_look"], r["pooled"]["worst_cell"]
        rows.append(f"| {name} | {r['val']['accuracy']:.2%} | {r['test']['accuracy']:.2%} | "
                    f"{tl['found']:.1%} of {tl['n']} | {w['cell']}: {w['recall']:.1%} of {w['n']} |")
    rows += ["", f"Recall per (class, style group) of `{Path(next(iter(result['models']))).name}`, validation and test "
             f"pooled (groups {', '.join(f'g{j}' for j in result['no_tumour_look_groups'])} have the no-tumour look):",
             "", cell_table(next(iter(result["models"].values()))["pooled"]["cells"], classes, groups.n), "",
             f"Command: `{result['command']}`."]
    write_report(Path(args.out), "groups", result, "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
