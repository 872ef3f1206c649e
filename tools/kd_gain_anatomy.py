"""Where a KD gain comes from, over many finished runs that hold a distilled and a scratch student.

    PYTHONPATH=. python tools/kd_gain_anatomy.py artifacts/ablation-*/seed*

Two questions, because validation gains here often exceed test gains:
1. Does picking the best epoch on validation flatter one student more? Per run, the validation accuracy at the best
   epoch against the mean of the last three epochs (not picked), for each student; and the KD gain both ways.
2. Which classes does KD move? Per-class recall of distilled minus scratch, on validation and test.
"""
import collections
import csv
import json
import statistics
import sys
from pathlib import Path

from bench.ablation import mean_sd


def ms(v):
    return mean_sd(v, "+")


def val_curve(run: Path, stage: str) -> list[float]:
    with open(run / "stages" / stage / "history.csv") as f:
        return [float(r["val_accuracy"]) * 100 for r in csv.DictReader(f)]


def main(runs):
    bias = {"student": [], "baseline": []}
    gain_best, gain_last = [], []
    recall = collections.defaultdict(list)
    for run in map(Path, runs):
        man = run / "manifest.json"
        if not man.is_file():
            continue
        res = json.loads(man.read_text())["results"]
        if "baseline" not in res or not (run / "stages" / "baseline" / "history.csv").is_file():
            continue
        best, last = {}, {}
        for stage in bias:
            v = val_curve(run, stage)
            best[stage], last[stage] = max(v), statistics.mean(v[-3:])
            bias[stage].append(best[stage] - last[stage])
        gain_best.append(best["student"] - best["baseline"])
        gain_last.append(last["student"] - last["baseline"])
        for split in ("val", "test"):
            for c, r in res["student"][split]["per_class_recall"].items():
                recall[split, c].append((r - res["baseline"][split]["per_class_recall"][c]) * 100)
    print(f"{len(gain_best)} runs with both students and their epoch histories\n")
    print(f"best-epoch minus last-3-epoch validation accuracy: distilled {ms(bias['student'])}, "
          f"scratch {ms(bias['baseline'])} points")
    print(f"KD gain on validation at the best epochs {ms(gain_best)}, over the last 3 epochs {ms(gain_last)}\n")
    print("| class | recall gain, val | recall gain, test |\n|---|---:|---:|")
    for c in sorted({c for _, c in recall}):
        print(f"| {c} | {ms(recall['val', c])} | {ms(recall['test', c])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
