"""Scans from other sources: tumour / no-tumour calls, the 4-class labels and the OOD flag, per source.

    python -m bench.external --run artifacts/real [--data ../shared/data/external-dev]

--data is a class-per-folder tree whose classes are some of the model's labels (the dev set has glioma/ and
notumor/ only). A file's source comes from `manifest.csv` (columns file, source) when the folder has one, else
from its name's prefix before "__". The same figures are given for the run's own test split, so "how much worse
elsewhere" is one table. Evaluation only: nothing here is fitted or tuned (the OOD threshold and the temperature
come from the training data's validation split). Writes <run>/bench/external.json and external.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench import command_line, unfinished, write_report
from device.bench import labelled
from device.metadata import ModelError
from device.metrics import NO_TUMOUR, pct, tumour_calls
from device.preprocess import ImageError, load_image
from device.runtime import Classifier
from train.config import RUN_DIR

DEFAULT_DATA = "../shared/data/external-dev"
MODELS = ("student_int8", "baseline_int8", "teacher_int8")


def sources(root: Path, items) -> list[str]:
    table = {}
    if (root / "manifest.csv").is_file():
        with open(root / "manifest.csv", newline="") as fh:
            table = {str(root / r["file"]): r["source"] for r in csv.DictReader(fh) if "source" in r}
    return [table.get(p) or (Path(p).name.split("__")[0] if "__" in Path(p).name else "all") for p, _ in items]


def by_source(root: Path, groups: dict | None = None) -> dict[str, list]:
    """The (path, label) pairs of a class-per-folder tree, grouped by source (added to `groups` if given)."""
    groups = {} if groups is None else groups
    items = labelled(root)
    for item, src in zip(items, sources(root, items)):
        groups.setdefault(src, []).append(item)
    return groups


def score(labels: list[str], truth: np.ndarray, probs: np.ndarray, ood: np.ndarray | None) -> dict:
    """Tumour (any tumour class) vs no tumour; the 4-class labels given to each true class; the OOD flag."""
    pred = probs.argmax(1)
    no = labels.index(NO_TUMOUR)
    tumour, called = truth != no, pred != no
    r = tumour_calls(truth, pred, labels) | {
        "labels_given": {labels[t]: {labels[k]: int(((truth == t) & (pred == k)).sum()) for k in range(len(labels))}
                         for t in sorted(set(truth.tolist()))}}
    known = [v for v in (r["sensitivity"], r["specificity"]) if v is not None]
    r["balanced_accuracy"] = float(np.mean(known))
    if ood is not None:
        kept = ~ood
        wrong = called != tumour
        r["ood_rate"] = float(ood.mean())
        answered = tumour_calls(truth[kept], pred[kept], labels)
        r["reject_ood"] = {"answered": float(kept.mean()),
                           "wrong_call_rate": float(wrong[kept].mean()) if kept.any() else None,
                           "sensitivity": answered["sensitivity"], "specificity": answered["specificity"]}
    return r


def evaluate(model: Path, groups: dict[str, list[tuple[str, str]]], pixels) -> dict:
    clf = Classifier(model)
    out = {}
    for name, items in groups.items():
        decoded = [(pixels(p, clf.size, clf.contract), lab) for p, lab in items]
        rows = [(clf.assess_pixels(x), lab) for x, lab in decoded if x is not None]  # unreadable files: left out
        if not rows:
            out[name] = {"n": 0, "unreadable": len(items)}
            continue
        probs = np.stack([a.probabilities for a, _ in rows])
        truth = np.array([clf.labels.index(lab) for _, lab in rows])
        ood = np.array([not a.in_distribution for a, _ in rows]) if clf.ood is not None else None
        out[name] = score(clf.labels, truth, probs, ood) | {"unreadable": len(items) - len(rows)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.external", description=__doc__.splitlines()[0])
    p.add_argument("--run", default=RUN_DIR)
    p.add_argument("--data", default=DEFAULT_DATA, help="class-per-folder scans from other sources")
    p.add_argument("--models", default=",".join(MODELS), help="TFLite variants of the run")
    a = p.parse_args(argv)
    run, root = Path(a.run), Path(a.data)
    if not root.is_dir():
        print(f"error: --data {root}: no such folder", file=sys.stderr)
        return 2
    if why := unfinished(run, ("split.json",)):
        print(f"error: {why}", file=sys.stderr)
        return 2
    split = json.loads((run / "split.json").read_text())
    groups = by_source(root, {"in-distribution test split": [(q, Path(q).parent.name) for q in split["test"]]})
    cache: dict = {}

    def pixels(path, size, contract):
        key = (path, size, contract)
        if key not in cache:
            try:
                cache[key] = load_image(path, size, contract)
            except ImageError:
                cache[key] = None
        return cache[key]

    result = {"run": run.name, "data": str(root), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "command": command_line("bench.external", argv),
              "models": {}}
    for m in a.models.split(","):
        path = run / f"{m}.tflite"
        if not path.is_file():
            continue
        try:
            result["models"][m] = evaluate(path, groups, pixels)
        except ModelError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{m}: done", flush=True)
    write_report(run / "bench", "external", result, to_markdown(result))
    return 0



def to_markdown(r: dict) -> str:
    lines = [f"Scans from other sources (`{r['data']}`), run `{r['run']}`; command `{r['command']}`. Tumour = any "
             f"of the three tumour classes. OOD = flagged as unlike the training images; with `--reject-ood` those "
             f"are answered \"uncertain\".", "",
             "| model | source | images | sensitivity | specificity | balanced acc. | OOD flagged | "
             "`--reject-ood`: answered | wrong calls among answered |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, per in r["models"].items():
        for src, s in per.items():
            if not s["n"]:
                continue
            rej = s.get("reject_ood", {})
            lines.append(f"| {m} | {src} | {s['n']:,} | {pct(s['sensitivity'])} | {pct(s['specificity'])} | "
                         f"{pct(s['balanced_accuracy'])} | {pct(s.get('ood_rate'))} | {pct(rej.get('answered'))} | "
                         f"{pct(rej.get('wrong_call_rate'))} |")
    first = next(iter(r["models"].values()), {})
    lines += ["", "Labels the first model gives (rows: true class per source):", ""]
    for src, s in first.items():
        for truth, given in s.get("labels_given", {}).items():
            lines.append(f"- {src}, {truth}: " + ", ".join(f"{k} {v:,}" for k, v in given.items() if v))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
