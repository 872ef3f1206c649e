"""`python -m train`: data -> teacher -> its logits on views -> distilled student -> no-KD baseline -> evaluation -> report,
all into one run folder.

Every stage is resumable: re-run the same command after a kill and finished models are reused, an unfinished
one continues from its last completed epoch.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

from train import log
from train.config import Config, ConfigError, add_flags, from_args
from train.data import DataError, format_report, prepare

_log = functools.partial(log, "train")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    add_flags(p)
    args = p.parse_args(argv)
    if args.data is None and not args.preset:
        print("no --data: training on the embedded synthetic phantoms with --preset synthetic, as `make all` does "
              "(give --data DIR for your own scans)", flush=True)
        args.preset = ["synthetic"]
    cfg = from_args(args)
    try:
        return run(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(cfg: Config) -> int:
    cfg.validate()
    import keras

    from train import fit, report, student, teacher

    out, t_start, seconds, epochs = Path(cfg.out), time.time(), {}, {}
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    strategy = fit.make_strategy(cfg.strategy)

    # ---- data: decoded once through the device's own preprocessing, split, leakage-checked
    splits = prepare(cfg)
    print(format_report(splits.report), flush=True)
    report.write_split(out, splits, cfg.image_size)
    n_classes = len(splits.classes)

    # ---- teacher: given (--teacher), or this run's own, at its own resolution
    t0 = time.time()
    if cfg.teacher:
        teacher_model = teacher.load_given(cfg, strategy)
        teacher_files = [Path(p) for p in cfg.teacher_paths]
        if not (out / "teacher.keras").is_file():  # the run records its teacher: convert makes its variants from it
            fit.save_model(teacher_model, out / "teacher.keras")
        t_splits = splits.at_size(cfg, int(teacher_model.input_shape[1]))
    else:
        t_splits = splits.at_size(cfg, cfg.teacher_size or cfg.image_size)
        train_teacher = teacher.train_members if cfg.teacher_recipe == "ensemble" else teacher.train_efficientnet
        teacher_model = train_teacher(cfg, student.train_set(t_splits, cfg, full_labels_only=True), n_classes, out,
                                      strategy, epochs)
        teacher_files = [out / "teacher.keras"]
        fit.save_model(teacher_model, teacher_files[0])
    seconds["teacher"] = time.time() - t0

    # ---- soft targets: the teacher's logits on K views of every training image (--views), or on the images
    t0 = time.time()
    if cfg.views:
        views = teacher.view_cache(cfg, teacher_model, splits, teacher_files)
    else:
        views = teacher.image_logits(cfg, teacher_model, splits, t_splits, out, teacher_files)
    seconds["view_cache"] = time.time() - t0

    # ---- students: distilled, then the same student on labels only (the baseline)
    data = student.train_set(splits, cfg)
    models = {"teacher": teacher_model, **student.train_students(cfg, data, n_classes, out, strategy, seconds,
                                                                 epochs, views)}

    # ---- evaluation and report
    results = report.evaluate(models, splits, t_splits)
    # how often the teacher's answer on a view is its image's label (plain and mixed views)
    cache, labels = views
    la, plain = labels[cache.a], cache.a == cache.b
    ok = cache.logits.argmax(1) == np.where(cache.lam >= 0.5, la, labels[cache.b])
    results["teacher"]["view_cache"] = {
        "views": int(len(cache.x)), "unlabeled_images": int((labels == -1).sum()), "key": cache.key,
        "recipe": cache.recipe,
        "seconds": round(seconds["view_cache"], 1),
        "label_agreement_plain": float(ok[plain & (la >= 0) & (la < n_classes)].mean()),
        "label_agreement_mixed": float(ok[~plain & (la >= 0) & (la < n_classes)].mean()) if (~plain).any() else None}
    if cfg.teacher_recipe == "ensemble" and not cfg.teacher and len(cfg.members) > 1:
        results["teacher"]["members"] = report.score_members(
            [out / f"teacher_member{i}.keras" for i in range(len(cfg.members))], cfg, t_splits)
    seconds["total"] = time.time() - t_start
    manifest = report.write(out, cfg, splits, results, seconds, epochs)
    print(report.summary_table(manifest))
    return 0
