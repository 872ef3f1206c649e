"""KD ablation on one fixed split: distilled vs scratch student over seeds, and a T / alpha sweep.

    python -m bench.ablation --data ../shared/data/brain-tumor-mri/Training \
        --teacher artifacts/real/teacher.keras --seeds 1,2 [--sweep] [--extra-run artifacts/real]

The teacher is trained once (pass --teacher); each seed trains the student with
and without KD under the same budget. Results: docs/ablation.md, docs/ablation.json,
docs/kd_sweep.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from device.metadata import atomic_write_bytes, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def train(args, out, extra):
    out = Path(out)
    if not (out / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "train", "--data", args.data, "--teacher", args.teacher, "--out", str(out),
               *extra, *args.train_args]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=open(out.with_suffix(".log"), "w"), stderr=subprocess.STDOUT)
    return json.loads((out / "manifest.json").read_text())


def acc(m, name):
    return m["results"][name]["test"]["accuracy"] * 100


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True, help="trained teacher .keras (reused by every run)")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--extra-run", action="append", default=[], help="finished run folders to include")
    p.add_argument("--sweep", action="store_true", help="also T in {2,4,8} x alpha in {0.1,0.5} (seed 1)")
    p.add_argument("--out", default="artifacts/ablation")
    p.add_argument("train_args", nargs="*", help="extra flags for python -m train (after --)")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    runs = [json.loads((Path(r) / "manifest.json").read_text()) for r in args.extra_run]
    for s in [int(x) for x in args.seeds.split(",") if x]:
        runs.append(train(args, Path(args.out) / f"seed{s}", ["--seed", str(s)]))
    pairs = [(m["config"]["seed"], acc(m, "student"), acc(m, "baseline"), acc(m, "teacher")) for m in runs]
    gains = [s - b for _, s, b, _ in pairs]
    sweep = []
    if args.sweep:
        for T in (2.0, 4.0, 8.0):
            for alpha in (0.1, 0.5):
                m = train(args, Path(args.out) / f"T{T:g}_a{alpha:g}",
                          ["--seed", "1", "--temperature", str(T), "--alpha", str(alpha), "--no-baseline"])
                sweep.append({"T": T, "alpha": alpha, "student_acc": acc(m, "student")})

    def ms(v):
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}"

    lines = ["# KD ablation (real data, fixed leakage-checked held-out split)", "",
             f"Command: `python -m bench.ablation {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             "| seed | teacher acc | distilled student acc | scratch student acc | KD gain (points) |",
             "|---:|---:|---:|---:|---:|"]
    for (seed, s, b, t), g in zip(pairs, gains):
        lines.append(f"| {seed} | {t:.2f} | {s:.2f} | {b:.2f} | {g:+.2f} |")
    lines.append(f"| **mean ± sd** | | **{ms([s for _, s, _, _ in pairs])}** | **{ms([b for _, _, b, _ in pairs])}** | "
                 f"**{ms(gains)}** |")
    if sweep:
        lines += ["", "T / alpha sweep (seed 1, no baseline):", "", "| T | alpha | student acc |", "|---:|---:|---:|"]
        lines += [f"| {r['T']:g} | {r['alpha']:g} | {r['student_acc']:.2f} |" for r in sweep]
        from train.plots import plt, save_fig

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for alpha in (0.1, 0.5):
            pts = [r for r in sweep if r["alpha"] == alpha]
            ax.plot([r["T"] for r in pts], [r["student_acc"] for r in pts], "o-", label=f"alpha={alpha}")
        ax.axhline(statistics.mean(b for _, _, b, _ in pairs), color="k", ls="--", label="scratch (mean)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("temperature T")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
        save_fig(fig, ROOT / "docs" / "kd_sweep.png")
    md = "\n".join(lines) + "\n"
    (ROOT / "docs").mkdir(exist_ok=True)
    atomic_write_bytes(ROOT / "docs" / "ablation.md", md.encode())
    atomic_write_json(ROOT / "docs" / "ablation.json", {"pairs": pairs, "gains": gains, "sweep": sweep})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
