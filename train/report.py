"""The report stage: score every model of a run on validation and test, and write the manifest (config, data
report, results, timings, provenance), the figures and a summary table."""
from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from device.atomic import atomic_write_json
from device.metrics import NO_TUMOUR, pct, softmax, summarize, tumour_calls
from train import fit
from train.calibrate import calibration_report
from train.data import Splits
from train.models import count_macs
from train.plots import confusion_png, curves_png


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "cpus": os.cpu_count()}


def write_split(out: Path, splits: Splits, image_size: int) -> None:
    """The run's file lists: what calibration draws from (train) and what parity and bench score (test), all with
    full labels (the class is the parent folder's name); weakly labelled files are listed apart, per split."""
    imgs, timgs, n = splits.images, splits.test_images, len(splits.classes)
    lists = {name: [src.paths[i] for i in idx if src.labels[i] < n]
             for name, src, idx in (("train", imgs, splits.train), ("val", imgs, splits.val),
                                    ("test", timgs, splits.test))}
    weak = {name: [src.paths[i] for i in idx if src.labels[i] >= n]
            for name, src, idx in (("train", imgs, splits.train), ("val", imgs, splits.val),
                                   ("test", timgs, splits.test))}
    atomic_write_json(out / "data_report.json", splits.report)
    atomic_write_json(out / "split.json", {"classes": splits.classes, "image_size": image_size, **lists,
                                           **({"weak_tumour": weak} if imgs.weak_sources else {})})


def by_source(s: Splits, split: str, logits) -> dict:
    """Per --data folder: 4-class summary on its fully labelled images, tumour calls on all of them."""
    images, idx = (s.images, s.val) if split == "val" else (s.test_images, s.test)
    out = {}
    for k, folder in enumerate(images.sources):
        m = images.source[idx] == k
        labels, probs = images.labels[idx][m], softmax(logits[m])
        full = labels < len(s.classes)
        calls = tumour_calls(labels, probs.argmax(1), s.classes) if NO_TUMOUR in s.classes else None
        out[folder] = {"tumour_calls": calls,
                       "accuracy": float((probs[full].argmax(1) == labels[full]).mean()) if full.any() else None}
    return out


def evaluate(models: dict, splits: Splits, teacher_splits: Splits) -> dict:
    """{name: params, MACs, input size, val and test summaries}; the teacher scores its own resolution's pixels.
    The students also get the temperature their device models will carry (train/calibrate.py)."""
    results = {}
    for name, model in models.items():
        s = teacher_splits if name == "teacher" else splits
        entry = {"architecture": model.name, "params": int(model.count_params()), "macs": count_macs(model),
                 "input_size": int(model.input_shape[1])}
        logits, labels = {}, {}
        for split, images, idx in (("val", s.images, s.val), ("test", s.test_images, s.test)):
            z = fit.predict_logits(model, images.x[idx])
            if images.weak_sources:
                entry.setdefault("by_source", {})[split] = by_source(s, split, z)
            full = images.labels[idx] < len(s.classes)     # the 4-class figures: fully labelled images
            logits[split], labels[split] = z[full], images.labels[idx][full]
            entry[split] = summarize(labels[split], softmax(logits[split]), s.classes)
        if name != "teacher":
            entry["calibration"] = calibration_report(logits["val"], labels["val"], logits["test"], labels["test"])
        results[name] = entry
    return results


def score_members(member_files: list[Path], cfg, teacher_splits: Splits) -> list[dict]:
    """Each ensemble member's test accuracy alone, so the ensemble's gain is visible."""
    s, rows = teacher_splits, []
    for f, spec in zip(member_files, cfg.members):
        probs = softmax(fit.predict_logits(keras.models.load_model(f), s.test_images.x[s.test]))
        rows.append({"file": f.name, "augment": spec.augment, "epochs": spec.epochs,
                     "test_accuracy": summarize(s.test_images.labels[s.test], probs, s.classes)["accuracy"]})
    return rows


def write(out: Path, cfg, splits: Splits, results: dict, seconds: dict, epoch_seconds: dict) -> dict:
    for name, r in results.items():
        r["train_seconds"] = round(seconds.get(name, 0.0), 1)
        if name in epoch_seconds:
            r["epoch_seconds"] = epoch_seconds[name]
    confusion_png({k: v["test"]["confusion"] for k, v in results.items()}, splits.classes, out / "confusion.png")
    curves_png({k: fit.read_history(out / "stages" / k) for k in results}, out / "curves.png")
    gain = (results["student"]["test"]["accuracy"] - results["baseline"]["test"]["accuracy"]
            if "baseline" in results else None)
    manifest = {
        "run": out.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv),
        "git_commit": git_commit(), "versions": versions(), "config": dataclasses.asdict(cfg),
        "data_report": splits.report, "results": results, "kd_gain_test_accuracy": gain,
        "seconds": {k: round(v, 1) for k, v in seconds.items()}, "epoch_seconds": epoch_seconds,
        "classes": splits.classes,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest



def summary_table(manifest) -> str:
    rows = ["| model | params | MACs | val acc | test acc | test macro-F1 | train time |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in manifest["results"].items():
        rows.append(f"| {name} | {r['params']:,} | {r['macs'] / 1e6:.1f} M | {r['val']['accuracy']:.2%} | "
                    f"{r['test']['accuracy']:.2%} | {r['test']['macro_f1']:.4f} | {r['train_seconds']:.0f} s |")
    for name, r in manifest["results"].items():
        if "calibration" in r:
            c = r["calibration"]
            rows.append(f"{name}: temperature {c['temperature']:.2f} (validation), test ECE {c['test_ece_before']:.2%}"
                        f" -> {c['test_ece_after']:.2%}")
    for name, r in manifest["results"].items():
        for folder, x in r.get("by_source", {}).get("test", {}).items():
            t = x["tumour_calls"] or {}
            rows.append(f"{name} on {folder} (test): accuracy {pct(x['accuracy'])}, tumour sensitivity "
                        f"{pct(t.get('sensitivity'))}, specificity {pct(t.get('specificity'))}")
    g = manifest.get("kd_gain_test_accuracy")
    if g is not None:
        rows.append(f"\nKD gain (distilled - baseline, test accuracy): {g * 100:+.2f} points")
    rows.append(f"total wall time: {manifest['seconds']['total']:.0f} s")
    return "\n".join(rows)
