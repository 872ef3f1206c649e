"""Latency / load-time / memory benchmark of one model on this board's runtime.

    python -m device.bench --model M [--runs 200] [--warmup 20] [--threads 1] [--runtime auto]
                           [--eval LABELS]   # also accuracy / macro-F1 / ECE on labelled scans

LABELS: a folder with one sub-folder per class (named as the model's labels), or a CSV file of `path,label` rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np

from device.metadata import ModelError
from device.runtime import RUNTIMES


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench(model, runtime="auto", threads=1, runs=200, warmup=20) -> dict:
    from device.runtime import Classifier, ClassifierOptions

    t0 = time.perf_counter()
    clf = Classifier(model, ClassifierOptions(runtime=runtime, threads=threads))
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (clf.size, clf.size), dtype=np.uint8)
    for _ in range(warmup):
        clf.predict_pixels(img)
    lat = np.empty(runs)
    for i in range(runs):
        t = time.perf_counter()
        clf.predict_pixels(img)
        lat[i] = (time.perf_counter() - t) * 1000
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    from device.explain import EVALUATIONS, explain

    explain_ms = []
    for _ in range(max(3, runs // 20)):   # an occlusion map: EVALUATIONS runs of the interpreter
        t = time.perf_counter()
        explain(clf, img)
        explain_ms.append((time.perf_counter() - t) * 1000)
    return {"explain_p50_ms": round(float(np.median(explain_ms)), 2), "explain_evaluations": EVALUATIONS,
            "model": str(model), "runtime": clf.runtime, "threads": threads, "runs": runs,
            "load_ms": round(load_s * 1000, 2), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "images_per_s": round(1000.0 / float(lat.mean()), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "machine": f"{cpu_name()} ({platform.machine()})",
            "python": platform.python_version(), "numpy": np.__version__}


def labelled(source) -> list[tuple[str, str]]:
    """(path, label) pairs from a class-per-folder tree or a `path,label` CSV file."""
    import csv
    from pathlib import Path

    from device.classify import expand

    src = Path(source)
    if src.is_dir():
        return [(str(p), p.relative_to(src).parts[0]) for p, problem in expand([src]) if problem is None
                and len(p.relative_to(src).parts) > 1]
    with open(src, newline="") as fh:
        return [(row[0], row[1]) for row in csv.reader(fh) if len(row) >= 2 and row[0] != "path"]


def evaluate(model, source, runtime="auto", threads=1) -> dict:
    """Accuracy / macro-F1 / ECE of a .tflite on labelled scans (see LABELS above)."""
    from device.metrics import summarize
    from device.runtime import Classifier, ClassifierOptions

    clf = Classifier(model, ClassifierOptions(runtime=runtime, threads=threads))
    items = labelled(source)
    unknown = sorted({lab for _, lab in items} - set(clf.labels))
    if not items or unknown:
        raise ModelError(f"--eval {source}: " + (f"labels {unknown} are not the model's {clf.labels}" if unknown
                                                  else "no labelled images found"))
    labels = np.array([clf.labels.index(lab) for _, lab in items])
    results = [clf.assess(p) for p, _ in items]
    probs = np.stack([r.probabilities for r in results])
    r = summarize(labels, probs, clf.labels)
    out = {k: r[k] for k in ("n", "accuracy", "macro_f1", "ece")}
    if clf.ood is not None:  # with --reject-ood: how many are answered, and how well
        kept = np.array([x.in_distribution for x in results])
        out["in_distribution"] = float(kept.mean())
        out["accuracy_answered"] = float((probs.argmax(1) == labels)[kept].mean()) if kept.any() else float("nan")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--runtime", default="auto", choices=["auto", *RUNTIMES])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.add_argument("--eval", metavar="LABELS", help="also evaluate on labelled scans: a class-per-folder tree or "
                                                   "a path,label CSV")
    a = p.parse_args(argv)
    bad = [f"--{n} {v}: want >= {lo}" for n, v, lo in (("runs", a.runs, 1), ("warmup", a.warmup, 0),
                                                       ("threads", a.threads, 1)) if v < lo]
    if a.eval and not os.path.exists(a.eval):
        bad.append(f"--eval {a.eval}: no such file or folder")
    if bad:
        print(f"error: {bad[0]}", file=sys.stderr)
        return 2
    try:
        r = bench(a.model, a.runtime, a.threads, a.runs, a.warmup)
        if a.eval:
            r["eval"] = evaluate(a.model, a.eval, a.runtime, a.threads)
    except (ModelError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r))
    else:
        print(f"model {r['model']}  runtime {r['runtime']}  threads {r['threads']}  on {r['machine']}")
        print(f"load {r['load_ms']:.1f} ms | latency p50 {r['p50_ms']:.2f} ms  p90 {r['p90_ms']:.2f} ms  "
              f"p99 {r['p99_ms']:.2f} ms | {r['images_per_s']:.0f} img/s | peak RSS {r['peak_rss_mb']:.0f} MB")
        print(f"explanation map (--explain, {r['explain_evaluations']} runs): p50 {r['explain_p50_ms']:.1f} ms")
        if "eval" in r:
            e = r["eval"]
            print(f"test split: {e['n']} images, accuracy {e['accuracy']:.2%}, macro-F1 {e['macro_f1']:.4f}, "
                  f"ECE {e['ece']:.4f}")
            if "in_distribution" in e:
                print(f"like the training data: {e['in_distribution']:.2%} (accuracy on those "
                      f"{e['accuracy_answered']:.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
