"""KD gain against student size: several bench.ablation reports, one per student width, same teacher.

    PYTHONPATH=. python tools/kd_vs_size.py 16708=docs/ablation_w025.json 58212=docs/ablation_w05.json \
        215620=docs/ablation_tlong3_5.json --out docs/kd_vs_size.png

Each argument is PARAMS=REPORT (the student's parameter count, then its ablation report). Prints one markdown
row per size (mean ± sd over the report's seeds) and plots test and validation accuracy against parameters.
"""
import argparse
import json
import statistics
from pathlib import Path

from bench.ablation import mean_sd as ms
from train.plots import plt, save_fig


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", metavar="PARAMS=REPORT")
    p.add_argument("--out", default="")
    args = p.parse_args()
    rows = []
    for item in args.reports:
        params, _, path = item.partition("=")
        seeds = json.loads(Path(path).read_text())["seeds"]
        rows.append((int(params), seeds))
    rows.sort()
    print("| student params | seeds | scratch test | distilled test | KD gain test (seeds > 0) | scratch val | "
          "distilled val | KD gain val (seeds > 0) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for params, s in rows:
        gt = [p["student"] - p["baseline"] for p in s]
        gv = [p["student_val"] - p["baseline_val"] for p in s]
        print(f"| {params:,} | {', '.join(str(p['seed']) for p in s)} | {ms([p['baseline'] for p in s])} | "
              f"{ms([p['student'] for p in s])} | {ms(gt, '+')} ({sum(g > 0 for g in gt)}/{len(gt)}) | "
              f"{ms([p['baseline_val'] for p in s])} | {ms([p['student_val'] for p in s])} | "
              f"{ms(gv, '+')} ({sum(g > 0 for g in gv)}/{len(gv)}) |")
    if not args.out:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    x = [r[0] for r in rows]
    for ax, (split, suffix) in zip(axes, (("test", ""), ("validation", "_val"))):
        for key, label, fmt in (("student", "distilled", "o-"), ("baseline", "scratch", "s--")):
            vals = [[p[key + suffix] for p in r[1]] for r in rows]
            ax.errorbar(x, [statistics.mean(v) for v in vals],
                        yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in vals], fmt=fmt, capsize=3,
                        label=label)
        if split == "test":  # reports hold the teacher's test accuracy only
            ax.axhline(statistics.mean(p["teacher"] for p in rows[-1][1]), color="tab:red", ls=":", label="teacher")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v / 1000:.0f}K" for v in x])
        ax.minorticks_off()
        ax.set_xlabel("student parameters")
        ax.set_title(f"{split} accuracy, mean ± sd over seeds")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("accuracy (%)")
    save_fig(fig, args.out)


if __name__ == "__main__":
    main()
