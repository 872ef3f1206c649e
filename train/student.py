"""The student stage: the distilled student, then the same student (same seed, same loop, same budget) on labels
only, the baseline every KD gain is measured against. Finished students are reused on a re-run."""
from __future__ import annotations

import functools
import time
from pathlib import Path

import keras
import numpy as np

from device.metrics import NO_TUMOUR
from train import fit, log
from train.config import Config
from train.models import build_student

_log = functools.partial(log, "student")


def class_weights(labels, n) -> np.ndarray:
    """Balanced weights for labels 0..n-1 (a weakly labelled tumour, label n, counts as a group of its own)."""
    present = np.unique(labels)
    counts = np.bincount(labels, minlength=n + 1).astype(np.float64)
    return (len(labels) / (len(present) * np.maximum(counts, 1))).astype(np.float32)


def train_set(splits, cfg: Config, full_labels_only: bool = False) -> fit.TrainSet:
    """A split's training arrays (class-balanced sample weights unless --no-class-balance) and validation arrays.
    full_labels_only: without the weakly labelled tumours (the teacher learns the tumour types from full labels)."""
    imgs, n = splits.images, len(splits.classes)
    train, val = splits.train, splits.val
    if full_labels_only:
        train, val = train[imgs.labels[train] < n], val[imgs.labels[val] < n]
    y = imgs.labels[train]
    w = class_weights(y, n)[y] if cfg.class_balance else np.ones(len(y), np.float32)
    weak = imgs.weak_sources and not full_labels_only
    return fit.TrainSet(imgs.x[train], y, w, imgs.x[val], imgs.labels[val],
                        imgs.classes.index(NO_TUMOUR) if weak else None)


def train_students(cfg: Config, data: fit.TrainSet, n_classes: int, out: Path, strategy, seconds: dict,
                   epoch_seconds: dict, views) -> dict:
    """{"student": distilled, "baseline": labels only (unless --no-baseline)}. The teacher teaches through the
    view cache (views = (cache, labels of its images); with --views 0 the cache holds the images themselves); the
    baseline is the twin on the same views with their labels."""
    cache, view_labels = views
    mixed, known = cache.soft_labels(view_labels, n_classes)
    runs = {"student": dict(teacher=True, view_target=cache.logits, view_mask=np.ones(len(cache.x), np.float32))}
    if cfg.baseline:
        runs["baseline"] = dict(teacher=False, view_target=mixed, view_mask=known.astype(np.float32))
    k = max(cfg.views, 1)
    models = {}
    for name, how in runs.items():
        t0, path = time.time(), out / f"{name}.keras"
        if path.is_file():
            _log(f"{name}: loading finished {path}")
            models[name] = keras.models.load_model(path)
        else:
            keras.utils.set_random_seed(cfg.seed)  # same init and data order for KD and baseline
            with strategy.scope():
                models[name] = build_student(cfg.image_size, n_classes, cfg.student_width, cfg.student_dropout)
            what = f"teacher's logits, T {cfg.temperature:g}" if how["teacher"] else "their labels"
            on = f"{k} cached views per image" if cfg.views else "the images themselves (--views 0)"
            _log(f"{name}: {cfg.student_epochs} epochs on {on} ({what}), alpha {cfg.alpha:g} on the images")
            epoch_seconds[name] = fit.fit_on_views(models[name], data, cache, how["view_target"], how["view_mask"],
                                                   k, cfg, teacher=how["teacher"], stage_dir=out / "stages" / name,
                                                   strategy=strategy)
            fit.save_model(models[name], path)
        seconds[name] = time.time() - t0
    return models
