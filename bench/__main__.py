"""`make bench`: every model variant of a run, on every installed runtime, in one run on this machine.

    python -m bench --run artifacts/real [--threads 1] [--runs 200]

Per variant: file size, params, MACs, load time, latency p50/p90 (batch 1, after
warm-up, fixed threads), images/s, accuracy / macro-F1 / ECE on the run's test
split, and wall time + peak RSS of a fresh `python -m device.classify` process.
Ratios are against teacher float32 on the same runtime. Writes <run>/bench/results.json
and <run>/bench/results.md (the model card takes its speed table from there).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import command_line, unfinished, write_report
from convert.tflite import VARIANTS, model_of
from device.atomic import atomic_write_bytes
from device.bench import cpu_name
from device.runtime import RUNTIMES
from train.config import RUN_DIR

ROOT = Path(__file__).resolve().parents[1]


def interpreters(pythons: list[str]) -> dict[str, str]:
    """{runtime: the first of `pythons` that imports it}. tflite-runtime needs numpy<2 and LiteRT works with
    numpy 2, so they usually live in two environments (`make bench` passes the device venv and .venv)."""
    found = {}
    for runtime, module in RUNTIMES.items():
        for python in pythons:
            ok = subprocess.run([python, "-c", f"import {module}"], capture_output=True, cwd=ROOT).returncode == 0
            if ok:
                found[runtime] = python
                break
    return found

RSS_PROBE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "p = subprocess.run(sys.argv[1:], capture_output=True); w = time.perf_counter() - t; "
             "print(p.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")


def fresh_process(python, model, image, runtime):
    """Wall seconds and peak RSS (MB) of one fresh `python -m device.classify` process."""
    out = subprocess.run([str(python), "-c", RSS_PROBE, str(python), "-m", "device.classify", "--runtime", runtime,
                          "--model", str(model), str(image)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300).stdout.split()
    return {"ok": out[0] == "0", "wall_s": round(float(out[1]), 3), "peak_rss_mb": round(float(out[2]), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--run", default=RUN_DIR)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5, help="fresh-process measurements (median reported)")
    p.add_argument("--teacher-run", help="take the teacher variants from this run (default: --run)")
    p.add_argument("--reference-run", help="also time this run's teacher_fp32 as 'reference_fp32' (e.g. the "
                                          "EfficientNetB0 teacher of an older run); ratios stay against teacher_fp32")
    p.add_argument("--student-run", action="append", default=[], metavar="RUN",
                   help="also time the int8 student of this run (repeat: a ladder of student sizes); its test split "
                        "must be --run's")
    p.add_argument("--out", help="report folder (default: <run>/bench)")
    p.add_argument("--python", action="append", default=[], metavar="PATH",
                   help="a Python interpreter to time the runtimes it has (repeat; default: this one)")
    a = p.parse_args(argv)
    run = Path(a.run)
    teacher_run = Path(a.teacher_run) if a.teacher_run else run
    # (row name, run folder, file variant); the reference teacher keeps its own file name.
    todo = [(v, teacher_run if v.startswith("teacher") else run, v)
            for v in sorted(VARIANTS, key=lambda v: not v.startswith("teacher"))]  # the ratios' reference first
    if a.reference_run:
        todo.insert(0, ("reference_fp32", Path(a.reference_run), "teacher_fp32"))
    todo += [(f"student_int8 ({Path(r).name})", Path(r), "student_int8") for r in a.student_run]
    for src in dict.fromkeys(src for _, src, _ in todo):
        if why := unfinished(src):
            print(f"error: {why}", file=sys.stderr)
            return 2
    manifests = {src: json.loads((src / "manifest.json").read_text()) for _, src, _ in todo}
    split = json.loads((run / "split.json").read_text())
    for r in a.student_run:  # accuracies side by side mean the same test images
        if json.loads((Path(r) / "split.json").read_text())["test"] != split["test"]:
            p.error(f"--student-run {r}: its test split is not --run's (train it with the same --split-seed and data)")
    image = split["test"][0]
    out = Path(a.out) if a.out else run / "bench"
    # The device scores labelled scans, not a training run's files: the test split as path,label rows.
    labels_csv = out / "test_labels.csv"
    rows = io.StringIO()
    csv.writer(rows).writerows((p, Path(p).parent.name) for p in split["test"])
    atomic_write_bytes(labels_csv, rows.getvalue().encode())
    rows = []
    found = interpreters(a.python or [sys.executable])
    for runtime in RUNTIMES:
        python = found.get(runtime)
        if python is None:
            print(f"skip {runtime}: not installed in {', '.join(a.python or [sys.executable])}")
            continue
        for v, src, file_variant in todo:
            model = src / f"{file_variant}.tflite"
            if not model.is_file():
                continue
            proc = subprocess.run([str(python), "-m", "device.bench", "--model", str(model), "--runtime", runtime,
                                   "--threads", str(a.threads), "--runs", str(a.runs), "--json",
                                   "--eval", str(labels_csv)], capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(f"FAILED {runtime} {v}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout)
            fresh = sorted((fresh_process(python, model, image, runtime) for _ in range(a.repeats)),
                           key=lambda f: f["wall_s"])
            res = manifests[src]["results"].get(model_of(file_variant), {})
            rows.append({"runtime": runtime, "variant": v, "from_run": src.name, "bytes": model.stat().st_size,
                         "params": res.get("params"), "macs": res.get("macs"), **r,
                         "fresh_process": fresh[len(fresh) // 2],
                         "fresh_process_peak_rss_mb_max": max(f["peak_rss_mb"] for f in fresh)})
            print(f"{runtime:15s} {v:28s} p50 {r['p50_ms']:8.2f} ms  acc {r['eval']['accuracy']:.2%}")
    for r in rows:
        base = next((b for b in rows if b["runtime"] == r["runtime"] and b["variant"] == "teacher_fp32"), None)
        if base:
            r["speedup_vs_teacher_fp32"] = round(base["p50_ms"] / r["p50_ms"], 2)
            r["smaller_vs_teacher_fp32"] = round(base["bytes"] / r["bytes"], 2)
    result = {"run": run.name, "teacher_run": teacher_run.name,
              "reference_run": Path(a.reference_run).name if a.reference_run else None,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "command": command_line("bench", argv),
              "machine": {"cpu": cpu_name(), "cores": __import__("os").cpu_count(), "arch": platform.machine()},
              "threads": a.threads, "runs": a.runs, "kd_gain_test_accuracy": manifests[run].get("kd_gain_test_accuracy"),
              "rows": rows}
    write_report(out, "results", result, to_markdown(result))
    return 0


def ratio(row, key) -> str:
    """"-" where the run has no teacher_fp32 on that runtime to compare with."""
    return f"{row[key]:.1f}x" if key in row else "-"


def to_markdown(r) -> str:
    m = r["machine"]
    lines = [f"Run `{r['run']}` on {m['cpu']} ({m['cores']} cores, {m['arch']}), {r['threads']} interpreter "
             f"thread(s), batch 1, {r['runs']} timed runs after warm-up. Command: `{r['command']}`.", "",
             "| runtime | model | size | params | MACs | load | p50 | p90 | speed-up | smaller | accuracy | "
             "macro-F1 | fresh classify: wall / peak RSS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        lines.append(
            f"| {x['runtime']} | {x['variant']} | {x['bytes'] / 1024:,.0f} KB | {x['params'] or 0:,} | "
            f"{(x['macs'] or 0) / 1e6:.1f} M | {x['load_ms']:.0f} ms | {x['p50_ms']:.2f} ms | {x['p90_ms']:.2f} ms | "
            f"{ratio(x, 'speedup_vs_teacher_fp32')} | {ratio(x, 'smaller_vs_teacher_fp32')} | "
            f"{x['eval']['accuracy']:.2%} | {x['eval']['macro_f1']:.4f} | "
            f"{x['fresh_process']['wall_s']:.2f} s / {x['fresh_process']['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
