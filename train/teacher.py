"""The teacher stage: load given teachers or train the run's own (ensemble members or EfficientNetB0), average an
ensemble's logits, and cache its answers on the views the student learns from.

Each ensemble member is saved with a record of how it was trained (`teacher_member{i}.json`), so a re-run
resumes member by member and never silently reuses a member trained differently.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import keras
import numpy as np

from device.atomic import atomic_path, atomic_write_json
from train import fit, log
from train.config import Config, ConfigError
from train.models import build_efficientnet_lite, build_efficientnetb0, build_student
from train.pretrained import imagenet_weights

# A member record's fields, named as the error message names them. The seed is not compared: a run with
# another --seed may reuse members on purpose.
RECORD_FIELDS = {"augment": "augmentation", "epochs": "epochs", "lr": "--teacher-lr",
                 "label_smoothing": "--label-smoothing", "dropout": "--teacher-dropout", "patience": "--patience"}
# Members trained by earlier versions with options that no longer exist (other CNN families, mixup, folds...)
# carry them in their record; only the neutral value may be reused.
REMOVED_OPTIONS = {"arch": "dw", "mixup": 0.0, "cutmix": 0.0, "ema": 0.0, "drop_path": 0.0, "folds": 0}


_log = functools.partial(log, "teacher")


def load_given(cfg: Config, strategy):
    """The teachers named by --teacher as one model (several: the mean of their logits)."""
    paths = [Path(p) for p in cfg.teacher_paths]
    _log(f"loading {', '.join(map(str, paths))}")
    with strategy.scope():
        models = [keras.models.load_model(p) for p in paths]
        return models[0] if len(models) == 1 else ensemble(models, max(int(m.input_shape[1]) for m in models))


def member_record(cfg: Config, i: int) -> dict:
    m = cfg.members[i]
    # Members with one spec differ by seed; numbering seeds per spec keeps each member's seed fixed when members
    # of another spec are added.
    seed = cfg.seed + 1000 * (1 + cfg.members[:i].count(m))
    return {"augment": m.augment, "epochs": m.epochs, "seed": seed, "lr": cfg.teacher_lr,
            "label_smoothing": cfg.label_smoothing, "dropout": cfg.teacher_dropout, "patience": cfg.patience}


def record_mismatch(old: dict, want: dict) -> str:
    """'' when a finished member's record fits this run's slot, else what differs, old and wanted."""
    diff = [f"{RECORD_FIELDS[f]} {old[f]} (this run wants {want[f]})" for f in RECORD_FIELDS
            if f in old and old[f] != want[f]]
    diff += [f"{f} {old[f]} (an option this version no longer has)" for f, neutral in REMOVED_OPTIONS.items()
             if old.get(f, neutral) != neutral]
    return ", ".join(diff)


def train_members(cfg: Config, data: fit.TrainSet, n: int, out: Path, strategy, epoch_times: dict):
    """The ensemble: one student-family CNN per --teacher-members entry, each saved when done."""
    size = int(data.x.shape[1])
    members = []
    for i, spec in enumerate(cfg.members):
        path, want = out / f"teacher_member{i}.keras", member_record(cfg, i)
        record = path.with_suffix(".json")
        if path.is_file():
            m = keras.models.load_model(path)
            old = json.loads(record.read_text()) if record.is_file() else {}
            why = (f"{m.input_shape[1]} px input (this run's teacher takes {size} px)" if m.input_shape[1] != size
                   else record_mismatch(old, want))
            if why:
                raise ConfigError(f"{path} was trained with {why}: remove it or pick another --out")
            _log(f"member {i}: loading finished {path}")
            members.append(m)
            continue
        _log(f"member {i + 1}/{len(cfg.members)}: {size} px, '{spec.augment}' augmentation, up to {spec.epochs} epochs")
        keras.utils.set_random_seed(want["seed"])
        with strategy.scope():
            m = build_student(size, n, 1.0, cfg.teacher_dropout)
        epoch_times[f"teacher_member{i}"] = fit.fit_classifier(
            m, data, cfg, epochs=spec.epochs, augment=spec.augment, seed=want["seed"],
            stage_dir=out / "stages" / f"teacher_member{i}", strategy=strategy)
        fit.save_model(m, path)
        atomic_write_json(record, want)
        members.append(m)
    with strategy.scope():
        return ensemble(members, size) if len(members) > 1 else members[0]


def train_efficientnet(cfg: Config, data: fit.TrainSet, n: int, out: Path, strategy, epoch_times: dict):
    """One large network: EfficientNet-Lite0/1/2 fine-tuned from ImageNet (lite0, lite1, lite2), or EfficientNetB0
    (efficientnetb0)."""
    size, stages = int(data.x.shape[1]), out / "stages"
    if (out / "teacher.keras").is_file():
        _log(f"loading finished {out / 'teacher.keras'}")
        with strategy.scope():
            return keras.models.load_model(out / "teacher.keras")
    keras.utils.set_random_seed(cfg.seed)
    if cfg.teacher_recipe == "efficientnetb0":
        _log(f"EfficientNetB0 at {size} px, weights {cfg.teacher_weights}, up to {cfg.teacher_epochs} epochs")
        with strategy.scope():
            model = build_efficientnetb0(size, n, cfg.teacher_weights, cfg.teacher_dropout)
        epoch_times["teacher"] = fit.fit_classifier(model, data, cfg, epochs=cfg.teacher_epochs, augment=cfg.augment,
                                                    seed=cfg.seed, stage_dir=stages / "teacher", strategy=strategy)
        return model
    variant, name = cfg.teacher_recipe, f"EfficientNet-{cfg.teacher_recipe.title()}"
    weights = imagenet_weights(cfg.cache_dir, variant)
    with strategy.scope():
        model = build_efficientnet_lite(size, n, weights, cfg.teacher_dropout, variant)
    backbone = model.get_layer(f"{variant}_backbone")
    head_done = stages / "teacher_head" / "head.weights.h5"
    if cfg.teacher_head_epochs and head_done.is_file():
        model.load_weights(head_done)
    elif cfg.teacher_head_epochs:
        # A random head's gradients would wreck the ImageNet features: train it alone first.
        _log(f"{name} at {size} px: head only, {cfg.teacher_head_epochs} epoch(s)")
        backbone.trainable = False
        epoch_times["teacher_head"] = fit.fit_classifier(
            model, data, cfg, epochs=cfg.teacher_head_epochs, augment=cfg.augment, seed=cfg.seed,
            stage_dir=stages / "teacher_head", strategy=strategy, lr=cfg.teacher_head_lr)
        with atomic_path(head_done) as tmp:
            model.save_weights(tmp)
    # Then everything but BatchNorm, which keeps its ImageNet statistics (inference mode): faster, and better in
    # the probe that chose this recipe (issue 27).
    backbone.trainable = True
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    _log(f"{name} at {size} px: fine-tuning, BatchNorm frozen, up to {cfg.teacher_epochs} epochs")
    epoch_times["teacher"] = fit.fit_classifier(model, data, cfg, epochs=cfg.teacher_epochs, augment=cfg.augment,
                                                seed=cfg.seed, stage_dir=stages / "teacher", strategy=strategy)
    return model


def ensemble(members, size: int) -> keras.Model:
    """Average the logits of several teachers (each resized to its own input size if needed)."""
    inp = keras.Input((size, size, 1), name="pixels")
    outs = []
    for i, m in enumerate(members):
        m = keras.Model(m.inputs[0], m.outputs[0], name=f"member{i}")  # members may share a name
        s = m.input_shape[1]
        x = inp if s == size else keras.layers.Resizing(s, s, interpolation="bilinear")(inp)
        outs.append(m(x))
    return keras.Model(inp, keras.layers.Average(name="mean_logits")(outs), name="teacher_ensemble")


def image_logits(cfg: Config, teacher, splits, t_splits, out: Path, teacher_files: list[Path]):
    """--views 0: the teacher's logits on the training images themselves, cached in the run folder (keyed by the
    teacher files' contents, so another --teacher never reuses stale logits), as an identity view cache: classic
    image-logit KD through the one distiller. Returns (cache, labels of its images)."""
    from train import views
    from train.views import teacher_digest  # one notion of "the same teacher" for both caches: its contents

    key = f"identity-{teacher_digest(teacher_files)[:10]}"
    cache = out / f"teacher_logits_{key}.npy"
    x_teacher = t_splits.images.x[t_splits.train]
    logits = np.load(cache) if cache.is_file() else None
    if logits is None or len(logits) != len(x_teacher):
        logits = fit.predict_logits(teacher, x_teacher)
        with atomic_path(cache) as tmp:
            np.save(tmp, logits)
    return views.identity(splits.images.x[splits.train], logits, key), splits.images.labels[splits.train]


def view_cache(cfg: Config, model, splits, teacher_files: list[Path]):
    """The teacher's logits on --views K views of every training image and unlabeled scan (train/views.py),
    built once and reused by every run with the same teacher, views and images. Returns (cache, labels of its
    images: -1 for unlabeled scans)."""
    from train import views
    from train.data import load_unlabeled, nearest_distance

    tsize = int(model.input_shape[1])
    sizes = (cfg.image_size, tsize)
    src = splits.at_size(cfg, views.source_size(*sizes))
    sources, labels = src.images.x[splits.train], src.images.labels[splits.train]
    if cfg.unlabeled:
        u = load_unlabeled([p for p in cfg.unlabeled.split(",") if p], sources.shape[1], cfg.cache_dir)
        # Scans that (nearly) duplicate a validation or test image would leak it into training: left out.
        held_out = np.concatenate([splits.images.thumbs[splits.val], splits.test_images.thumbs[splits.test]])
        dist, _ = nearest_distance(u.thumbs, held_out)
        keep = dist >= cfg.near_dup_threshold
        _log(f"unlabeled: {len(u.paths)} scans, {int((~keep).sum())} left out as near-duplicates of evaluation "
             f"images, {len(u.skipped)} unreadable")
        sources = np.concatenate([sources, u.x[keep]])
        labels = np.concatenate([labels, np.full(int(keep.sum()), -1, np.int32)])
    recipe = views.ViewRecipe.parse(cfg.views, cfg.view_recipe)
    key = views.cache_key(views.teacher_digest(teacher_files), recipe, hashlib.sha256(sources.tobytes()).hexdigest(),
                          sizes, cfg.split_seed)
    _log(f"view cache {key}: {recipe.k} views of {len(sources)} images at {sizes[0]} px (student) and {sizes[1]} px "
         f"(teacher)")
    cache = views.build(sources, lambda x: fit.predict_logits(model, x), recipe, sizes, Path(cfg.cache_dir), key,
                        seed=cfg.split_seed, log=_log)
    return cache, labels
