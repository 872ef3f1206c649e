"""KD gain on both held-out splits together (validation + test), per ablation report.

    python -m experiments.pooled_gain --sizes 408,606 ablation_tdef_px64 ablation_t8_px64

--sizes: the validation and test image counts of the reports' split (64 px: 408,606; 96 px: 412,613; the run's
data report says). Per seed, each student's accuracy over the pooled images is the count-weighted mean of its two
accuracies; the gain is distilled minus scratch. The two splits disagree by up to 0.8 points on a 5-seed mean even
where no epoch was picked on validation, so neither alone is the better estimate; pooled, the noise is smaller.
"""
import argparse

from experiments.ablation import load_report, mean_sd


def pooled(acc_val: float, acc_test: float, n_val: int, n_test: int) -> float:
    return (acc_val * n_val + acc_test * n_test) / (n_val + n_test)


def gains(report: dict, n_val: int, n_test: int) -> dict:
    out = {"test": [], "val": [], "pooled": []}
    for p in report["seeds"]:
        out["test"].append(p["student"] - p["baseline"])
        out["val"].append(p["student_val"] - p["baseline_val"])
        out["pooled"].append(pooled(p["student_val"], p["student"], n_val, n_test)
                             - pooled(p["baseline_val"], p["baseline"], n_val, n_test))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", required=True, help="VAL,TEST image counts of the reports' split, e.g. 408,606")
    ap.add_argument("reports", nargs="+", help="ablation reports: JSON files or names in experiments/results.jsonl")
    args = ap.parse_args(argv)
    n_val, n_test = (int(v) for v in args.sizes.split(","))
    print("| report | seeds | KD gain test | KD gain val | KD gain pooled | pooled > 0 |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in args.reports:
        g = gains(load_report(path), n_val, n_test)
        print(f"| {path} | {len(g['test'])} | {mean_sd(g['test'], '+')} | {mean_sd(g['val'], '+')} | "
              f"{mean_sd(g['pooled'], '+')} | "
              f"{sum(v > 0 for v in g['pooled'])}/{len(g['pooled'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
