"""KD ablation on one fixed split: distilled vs scratch student over seeds, and a T / alpha sweep.

    python -m experiments.ablation --data ../shared/data/brain-tumor-mri/Training \\
        --teacher artifacts/kd96/teacher.keras --extra-run artifacts/kd96 --seeds 1,2 --sweep

The teacher is trained once (pass --teacher; it is reused by every run, so only the
student's seed changes); each seed trains the student with and without KD under the
same budget. Every finished run is kept (re-running skips it), and the report is
rewritten after each one into --docs (default: the --out folder): ablation.md, ablation.json, kd_sweep.png.
Finished reports are kept as one line each in experiments/results.jsonl (`load_report` reads either).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from device.atomic import atomic_write_bytes, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.jsonl")


def load_report(ref: str) -> dict:
    """An ablation report: a JSON file written by this script, or a report name in experiments/results.jsonl."""
    if Path(ref).is_file():
        return json.loads(Path(ref).read_text())
    for line in RESULTS.read_text().splitlines():
        r = json.loads(line)
        if r.get("report") == ref:
            return r
    raise SystemExit(f"error: no report file or name '{ref}' in {RESULTS}")


def train(args, out: Path, extra) -> dict:
    if not (out / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "train", "--data", args.data, "--teacher", args.teacher, "--out", str(out),
               *extra, *args.train_args]
        print("+", " ".join(cmd), flush=True)
        with open(out.parent / f"{out.name}.log", "w") as log:
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return json.loads((out / "manifest.json").read_text())


# Config fields that change the distilled student but not the scratch one (a field of an older run that this
# version no longer has counts as a difference: such a scratch student is not reused). alpha is not one: the
# twin on the views weighs its two label terms by it; the views and their recipe are not either.
TEACHER_ONLY = {"teacher", "teacher_recipe", "teacher_members", "teacher_weights", "teacher_epochs",
                "teacher_head_epochs", "teacher_head_lr", "teacher_lr", "teacher_dropout", "teacher_size",
                "label_smoothing", "temperature", "kd_loss", "dkd_beta", "tta", "baseline", "out"}
# Config fields that change where files go, not what is trained.
NO_EFFECT = {"cache_dir"}


def with_baseline_from(m: dict, old: dict) -> dict:
    """m (a --no-baseline run) plus the scratch student of an earlier run with the same student config."""
    diff = sorted(k for k in set(m["config"]) | set(old["config"])
                  if k not in TEACHER_ONLY | NO_EFFECT and m["config"].get(k) != old["config"].get(k))
    if diff:
        raise SystemExit(f"error: cannot reuse the scratch student of {old['config']['out']}: "
                         f"config differs in {', '.join(diff)}")
    m = dict(m, results=dict(m["results"], baseline=old["results"]["baseline"]))
    m["baseline_from"] = old["config"]["out"]
    return m


def acc(m, name, split="test") -> float:
    return m["results"][name][split]["accuracy"] * 100


def mean_sd(v, sign="") -> str:
    """'mean ± sd'; sign="+" writes the mean's sign (for gains)."""
    return f"{statistics.mean(v):{sign}.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}"


def report(args, pairs, sweep, command) -> str:
    gains = [p["student"] - p["baseline"] for p in pairs]
    lines = ["# KD ablation (real data, fixed leakage-checked held-out test split)", "",
             f"Command: `{command}`", "",
             "Accuracy (%) on the held-out test split (and on the leakage-checked validation split, which picked",
             "each model's best epoch); the teacher is the same model in every row.", "",
             "| seed | teacher | distilled student | scratch student | KD gain (points) | val: distilled | val: scratch |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p['seed']} | {p['teacher']:.2f} | {p['student']:.2f} | {p['baseline']:.2f} | {g:+.2f} | "
              f"{p['student_val']:.2f} | {p['baseline_val']:.2f} |" for p, g in zip(pairs, gains)]
    if pairs:
        lines.append(f"| **mean ± sd** | | **{mean_sd([p['student'] for p in pairs])}** | "
                     f"**{mean_sd([p['baseline'] for p in pairs])}** | **{mean_sd(gains)}** | "
                     f"{mean_sd([p['student_val'] for p in pairs])} | {mean_sd([p['baseline_val'] for p in pairs])} |")
        lines += ["", f"KD gain on validation: {mean_sd([p['student_val'] - p['baseline_val'] for p in pairs])} points."]
        reused = [f"seed {p['seed']} from `{p['baseline_from']}`" for p in pairs if p.get("baseline_from")]
        if reused:
            lines += ["", "Scratch students reused from an earlier run with the same student config (they do not "
                      "depend on the teacher): " + ", ".join(reused) + "."]
    if sweep:
        seed = sweep[0]["seed"]
        base = next((p["baseline"] for p in pairs if p["seed"] == seed), None)
        lines += ["", f"T / alpha sweep (student seed {seed}; gain against that seed's scratch student"
                  f"{f' {base:.2f}%' if base is not None else ''}):", "",
                  "| T | alpha | distilled student | KD gain |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['T']:g} | {r['alpha']:g} | {r['student']:.2f} | "
                  f"{(r['student'] - base) if base is not None else float('nan'):+.2f} |" for r in sweep]
    return "\n".join(lines) + "\n"


def plot(pairs, sweep, path):
    from train.plots import plt, save_fig

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for alpha in sorted({r["alpha"] for r in sweep}):
        pts = sorted((r["T"], r["student"]) for r in sweep if r["alpha"] == alpha)
        ax.plot([t for t, _ in pts], [a for _, a in pts], "o-", label=f"KD, alpha={alpha:g}")
    if pairs:
        ax.axhline(statistics.mean(p["baseline"] for p in pairs), color="k", ls="--", label="scratch (mean of seeds)")
        ax.axhline(statistics.mean(p["teacher"] for p in pairs), color="tab:red", ls=":", label="teacher")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("temperature T")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    save_fig(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.ablation", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True, help="trained teacher .keras (reused by every run)")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--extra-run", action="append", default=[],
                   help="finished run folders to include as seeds (a --no-baseline run takes its seed's scratch "
                        "student from --reuse-baselines)")
    p.add_argument("--sweep", action="store_true", help="also the T x alpha grid (first seed, no baseline)")
    p.add_argument("--temperatures", default="2,4,8")
    p.add_argument("--alphas", default="0.1,0.5")
    p.add_argument("--reuse-baselines", default="",
                   help="an earlier ablation folder: take each seed's scratch student from it (the scratch student "
                        "does not depend on the teacher) when its config matches, and train only the distilled one")
    p.add_argument("--out", default="artifacts/ablation")
    p.add_argument("--docs", help="report folder (default: --out)")
    p.add_argument("train_args", nargs="*", help="extra flags for python -m train (after --)")
    args = p.parse_args(argv)
    out = Path(args.out)
    docs = Path(args.docs) if args.docs else out
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    command = "python -m experiments.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    pairs, sweep = [], []

    def pair(m):
        return {"seed": m["config"]["seed"], "run": m["run"], "student": acc(m, "student"),
                "baseline": acc(m, "baseline"), "teacher": acc(m, "teacher"),
                "student_val": acc(m, "student", "val"), "baseline_val": acc(m, "baseline", "val"),
                "alpha": m["config"]["alpha"], "T": m["config"]["temperature"], "baseline_from": m.get("baseline_from")}

    def write():
        atomic_write_bytes(docs / "ablation.md", report(args, pairs, sweep, command).encode())
        atomic_write_json(docs / "ablation.json", {"command": command, "seeds": pairs, "sweep": sweep})
        if sweep:
            plot(pairs, sweep, docs / "kd_sweep.png")

    def earlier_baseline(seed):
        f = Path(args.reuse_baselines) / f"seed{seed}" / "manifest.json" if args.reuse_baselines else None
        return f if f is not None and f.is_file() else None

    for r in args.extra_run:
        m = json.loads((Path(r) / "manifest.json").read_text())
        if "baseline" not in m["results"]:  # a --no-baseline run: its seed's scratch student from the earlier one
            old = earlier_baseline(m["config"]["seed"])
            if old is None:
                raise SystemExit(f"error: {r} has no scratch student and --reuse-baselines has none for seed "
                                 f"{m['config']['seed']}")
            m = with_baseline_from(m, json.loads(old.read_text()))
        pairs.append(pair(m))
    seeds = [int(x) for x in args.seeds.split(",") if x]
    for s in seeds:
        old = earlier_baseline(s)
        if old is not None:
            m = train(args, out / f"seed{s}", ["--seed", str(s), "--no-baseline"])
            pairs.append(pair(with_baseline_from(m, json.loads(old.read_text()))))
        else:
            pairs.append(pair(train(args, out / f"seed{s}", ["--seed", str(s)])))
        write()
    if args.sweep:
        seed = seeds[0] if seeds else pairs[0]["seed"]
        for T in (float(t) for t in args.temperatures.split(",")):
            for alpha in (float(a) for a in args.alphas.split(",")):
                m = train(args, out / f"T{T:g}_a{alpha:g}_seed{seed}",
                          ["--seed", str(seed), "--temperature", str(T), "--alpha", str(alpha), "--no-baseline"])
                sweep.append({"seed": seed, "T": T, "alpha": alpha, "student": acc(m, "student")})
                write()
    write()
    print(report(args, pairs, sweep, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
