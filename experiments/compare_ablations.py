"""Paired comparison of two KD recipes over the same student seeds (two ablation reports).

    python -m experiments.compare_ablations ablation_hinton7 ablation_dkd2

Per seed, B's distilled student minus A's, on test and validation; then mean ± sd over the seeds both hold.
The scratch student of a seed is the same model in both, so the paired difference cancels its noise.
"""
import sys

from experiments.ablation import load_report, mean_sd


def by_seed(ref):
    return {p["seed"]: p for p in load_report(ref)["seeds"]}


a, b = by_seed(sys.argv[1]), by_seed(sys.argv[2])
seeds = [s for s in a if s in b]
print(f"A = {sys.argv[1]}\nB = {sys.argv[2]}\n\n| seed | A test | B test | B - A | A val | B val | B - A (val) |")
print("|---:|---:|---:|---:|---:|---:|---:|")
d_test, d_val = [], []
for s in seeds:
    pa, pb = a[s], b[s]
    d_test.append(pb["student"] - pa["student"])
    d_val.append(pb["student_val"] - pa["student_val"])
    print(f"| {s} | {pa['student']:.2f} | {pb['student']:.2f} | {d_test[-1]:+.2f} | {pa['student_val']:.2f} | "
          f"{pb['student_val']:.2f} | {d_val[-1]:+.2f} |")


print(f"\nB - A over {len(seeds)} seeds: test {mean_sd(d_test, '+')}, val {mean_sd(d_val, '+')} points; "
      f"B ahead on test in {sum(d > 0 for d in d_test)}, on val in {sum(d > 0 for d in d_val)}")
