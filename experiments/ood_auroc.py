"""Does the OOD score catch confident errors, or only odd-looking scans? (docs/research.md, Q21; issue 39 item 3)

    python -m experiments.ood_auroc --run artifacts/gb-s42 --data ../shared/data/external-dev

For the shipped int8 student (and teacher), on the run's validation split (in-house) and on each external-dev
source (evaluation only), the AUROC of each candidate score for "this answer is wrong" (tumour vs no tumour on
external-dev, the 4 classes in-house), and for "this scan is from another source". Candidates the board can
compute: the sidecar's Mahalanobis score, 1 - the top probability, the entropy, and the disagreement of the
student with the int8 teacher (both ship), and whether their top answers differ (what --second-opinion says):
how many answers that flags, and how many of the wrong ones.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.external import sources
from device.bench import labelled
from device.metrics import NO_TUMOUR
from device.preprocess import ImageError
from device.runtime import Classifier
from experiments import open_model


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney)."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    r = np.arange(1, len(order) + 1, dtype=np.float64)
    # average ranks over ties
    _, start, counts = np.unique(allv, return_index=True, return_counts=True)
    for s, c in zip(start, counts):
        r[s:s + c] = r[s:s + c].mean()
    ranks[order] = r
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def scores(student: Classifier, teacher: Classifier, items):
    rows = []
    for path, label in items:
        try:
            a = student.assess(path)
            t = teacher.probabilities(path)
        except ImageError:
            continue
        p = a.probabilities
        rows.append((label, p, t, a.ood_score))
    labels = [r[0] for r in rows]
    p = np.stack([r[1] for r in rows])
    t = np.stack([r[2] for r in rows])
    ent = -(p * np.log(np.clip(p, 1e-6, 1))).sum(1)
    cand = {"mahalanobis (shipped)": np.array([r[3] for r in rows]), "1 - top probability": 1 - p.max(1),
            "entropy": ent, "student-teacher disagreement": 0.5 * np.abs(p - t).sum(1),
            "top answers differ (--second-opinion)": (p.argmax(1) != t.argmax(1)).astype(np.float64)}
    return labels, p, cand


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run folder with split.json (its validation split)")
    ap.add_argument("--data", required=True, help="external-dev (evaluation only)")
    ap.add_argument("--student", default="device/models/student_int8.tflite")
    ap.add_argument("--teacher", default="device/models/teacher_int8.tflite")
    a = ap.parse_args(argv)
    run, root = Path(a.run), Path(a.data)
    if not (run / "split.json").is_file() or not root.is_dir():
        print(f"error: need {run}/split.json and the folder {root}", file=sys.stderr)
        return 2
    student, teacher = open_model(a.student), open_model(a.teacher)
    if student is None or teacher is None:
        return 2
    classes = student.labels
    val = [(q, Path(q).parent.name) for q in json.loads((run / "split.json").read_text())["val"]]
    groups = {"validation (in-house)": val}
    items = labelled(root)
    for item, src in zip(items, sources(root, items)):
        groups.setdefault(src, []).append(item)
    table, pooled = {}, {}
    for name, its in groups.items():
        labels, p, cand = scores(student, teacher, its)
        truth = np.array([classes.index(lab) for lab in labels])
        pred = p.argmax(1)
        if name.startswith("validation"):
            wrong = pred != truth
        else:
            no = classes.index(NO_TUMOUR)
            wrong = (pred == no) != (truth == no)
        differ = cand["top answers differ (--second-opinion)"] > 0
        # the free alternative at the same flag rate: the same number of the least confident answers
        low = np.zeros(len(differ), bool)
        low[np.argsort(-cand["1 - top probability"], kind="stable")[:int(differ.sum())]] = True
        sure_wrong = wrong & (p.max(1) >= 0.9)   # confident errors: what no confidence threshold can catch
        table[name] = {"n": len(labels), "wrong": int(wrong.sum()),
                       "auroc_wrong": {k: auroc(v, wrong) for k, v in cand.items()},
                       "second_opinion": {"flagged": float(differ.mean()),
                                          "wrong_caught": float(differ[wrong].mean()) if wrong.any() else None,
                                          "right_flagged": float(differ[~wrong].mean()) if (~wrong).any() else None,
                                          "wrong_caught_by_confidence": float(low[wrong].mean()) if wrong.any() else None,
                                          "confident_wrong": float(sure_wrong.sum()),
                                          "confident_wrong_caught": float(differ[sure_wrong].mean())
                                          if sure_wrong.any() else None}}
        pooled[name] = cand
    val_c = pooled.pop("validation (in-house)")
    for name, cand in pooled.items():
        table[name]["auroc_source"] = {k: auroc(np.concatenate([cand[k], val_c[k]]),
                                                np.r_[np.ones(len(cand[k]), bool), np.zeros(len(val_c[k]), bool)])
                                       for k in cand}
    print(json.dumps(table, indent=1))
    names = list(next(iter(table.values()))["auroc_wrong"])
    print("| score | " + " | ".join(f"wrong: {g}" for g in table) + " | " +
          " | ".join(f"source: {g}" for g in table if g in pooled) + " |")
    for k in names:
        cells = [f"{table[g]['auroc_wrong'][k]:.3f}" if table[g]["auroc_wrong"][k] is not None else "-" for g in table]
        cells += [f"{table[g]['auroc_source'][k]:.3f}" for g in table if g in pooled]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("\n| --second-opinion | " + " | ".join(table) + " |")
    for k in ("flagged", "wrong_caught", "right_flagged", "wrong_caught_by_confidence", "confident_wrong",
              "confident_wrong_caught"):
        fmt = "{:.0f}" if k == "confident_wrong" else "{:.1%}"
        print(f"| {k.replace('_', ' ')} | " + " | ".join(
            "-" if table[g]["second_opinion"][k] is None else fmt.format(table[g]["second_opinion"][k])
            for g in table) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
