"""`python -m train`: teacher -> distilled student -> no-KD baseline, into one run folder.

Every stage is resumable: a finished stage's model is reused, an unfinished
one restarts from its last completed epoch (keras BackupAndRestore).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from device.metadata import atomic_write_json
from train.config import add_flags, from_args, member_specs
from train.data import DataError, duplicate_groups, format_report, load_folder, prepare


def _log(msg):
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "cpus": os.cpu_count()}


def class_weights(labels, n) -> np.ndarray:
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    return (len(labels) / (n * np.maximum(counts, 1))).astype(np.float32)


def fold_ids(labels, k: int, seed: int, groups=None) -> np.ndarray:
    """Stratified folds that keep each duplicate group (train.data.duplicate_groups) whole.

    Per class, the groups in a seeded random order, largest first, each go to the fold holding the fewest of that
    class's images so far. With no groups (every image alone) that deals the shuffled images round-robin.
    """
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    sizes = np.bincount(inverse)
    group_fold = np.zeros(len(uniq), np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        gs = np.flatnonzero(labels[first] == c)  # a group counts as the class of its first image
        gs = gs[rng.permutation(len(gs))]
        load = np.zeros(k, np.int64)
        for g in gs[np.argsort(-sizes[gs], kind="stable")]:
            group_fold[g] = load.argmin()
            load[group_fold[g]] += sizes[g]
    return group_fold[inverse]


def check_folds(cfg) -> None:
    k = cfg.teacher_folds
    if not k:
        return
    if cfg.teacher or cfg.teacher_recipe != "ensemble" or cfg.teacher_mode != "cache":
        raise DataError("--teacher-folds needs the run's own ensemble members and cached logits "
                        "(no --teacher, --teacher-recipe ensemble, --teacher-mode cache)")
    if k < 2 or k > len(member_specs(cfg)):
        raise DataError(f"--teacher-folds {k}: want 0 or 2..{len(member_specs(cfg))} (at most one fold per "
                        f"member, so that every training image has a member that never saw it)")


def oof_logits(member_logits: list[np.ndarray], folds: np.ndarray, k: int) -> np.ndarray:
    """Each image's logits averaged over the members that left its fold out (member i leaves out i % k)."""
    out = np.zeros_like(member_logits[0])
    for f in range(k):
        rows = folds == f
        out[rows] = np.mean([z[rows] for i, z in enumerate(member_logits) if i % k == f], axis=0)
    return out


# What a member's record says when it lacks a field: records from before folds, families, mixup, cutmix, EMA and
# stochastic depth existed belong to whole-split "dw" members without any of them. Other missing fields (a member copied in
# without its record) are unknown and not compared. The seed is never compared: a run with another --seed may reuse
# members on purpose.
MEMBER_RECORD_DEFAULTS = {"arch": "dw", "mixup": 0.0, "cutmix": 0.0, "ema": 0.0, "drop_path": 0.0, "folds": 0,
                          "left_out_fold": None, "fold_seed": None, "fold_dups": None}
# record field -> how the error names it (the member spec's parts, or the flag that sets it)
MEMBER_RECORD_FIELDS = {"arch": "family", "augment": "augmentation", "epochs": "epochs", "mixup": "--teacher-mixup",
                        "cutmix": "--teacher-cutmix", "ema": "--teacher-ema",
                        "drop_path": "--teacher-drop-path", "width": "--teacher-width",
                        "lr": "--teacher-lr", "label_smoothing": "--label-smoothing",
                        "dropout": "--student-dropout", "patience": "--teacher-patience", "folds": "--teacher-folds",
                        "left_out_fold": "left-out fold",
                        "fold_seed": "fold seed", "fold_dups": "duplicate-aware folds (near-dup threshold)"}


def member_mismatch(old: dict, want: dict) -> str:
    """'' when a finished member's record fits this run's slot, else the differing fields, old and wanted."""
    old = {**MEMBER_RECORD_DEFAULTS, **old}
    diff = [f for f in MEMBER_RECORD_FIELDS if f in old and old[f] != want[f]]
    return ", ".join(f"{MEMBER_RECORD_FIELDS[f]} {old[f]} (this run wants {want[f]})" for f in diff)


def teacher_patience(cfg) -> int:
    return cfg.patience if cfg.teacher_patience < 0 else cfg.teacher_patience


def train_teacher(cfg, strategy, t_imgs, imgs, splits, y_tr, sw, n, out, epoch_times, folds=None):
    """EfficientNetB0, or an ensemble of CNNs whose logits are averaged (each member resumable on its own).

    folds (with cfg.teacher_folds = K): member i trains on the training images outside fold i % K.
    """
    import keras

    from train import stages
    from train.models import MEMBER_ARCHS, build_teacher

    tsize = int(t_imgs.x.shape[1])
    fit = dict(cfg=cfg, epochs=cfg.teacher_epochs, lr=cfg.teacher_lr, strategy=strategy,
               label_smoothing=cfg.label_smoothing, augment=cfg.teacher_augment or cfg.augment,
               mixup=cfg.teacher_mixup, cutmix=cfg.teacher_cutmix, ema=cfg.teacher_ema, patience=teacher_patience(cfg))
    data = (t_imgs.x[splits.train], y_tr, sw, t_imgs.x[splits.val], imgs.labels[splits.val])
    if cfg.teacher_recipe == "efficientnetb0":
        _log(f"teacher: training EfficientNetB0 at {tsize}px for up to {cfg.teacher_epochs} epochs")
        with strategy.scope():
            teacher = build_teacher(tsize, n, cfg.teacher_weights, cfg.teacher_dropout)
        epoch_times["teacher"] = stages.fit_classifier(teacher, *data, stage_dir=out / "stages" / "teacher", **fit)
        return teacher
    if cfg.teacher_recipe != "ensemble":
        raise DataError(f"unknown teacher recipe '{cfg.teacher_recipe}' (efficientnetb0 | ensemble)")
    members, specs = [], member_specs(cfg)
    for i, (aug, epochs, arch) in enumerate(specs):
        path = out / f"teacher_member{i}.keras"
        # Members with one spec differ by seed (init, data order, augmentation); members with different
        # specs also differ by the views they train on. Numbering seeds per spec keeps each member's seed
        # fixed when members of another spec are added.
        seed = cfg.seed + 1000 * (1 + specs[:i].count((aug, epochs, arch)))
        drop_path = cfg.teacher_drop_path if arch == "res" else 0.0
        k = cfg.teacher_folds
        info = {"arch": arch, "augment": aug, "epochs": epochs, "mixup": cfg.teacher_mixup, "cutmix": cfg.teacher_cutmix,
                "ema": cfg.teacher_ema, "drop_path": drop_path, "seed": seed, "width": cfg.teacher_width,
                "lr": cfg.teacher_lr,
                "label_smoothing": cfg.label_smoothing, "dropout": cfg.student_dropout, "patience": teacher_patience(cfg),
                "folds": k, "left_out_fold": i % k if k else None, "fold_seed": cfg.split_seed if k else None,
                # folds keep near-duplicates together since this field exists; members without it split them
                "fold_dups": cfg.near_dup_threshold if k else None}
        info_path = path.with_suffix(".json")
        if path.is_file():
            m = keras.models.load_model(path)
            if m.input_shape[1] != tsize:
                raise DataError(f"{path} takes {m.input_shape[1]}px, this run's teacher {tsize}px: "
                                f"remove it or pick another --out")
            old = json.loads(info_path.read_text()) if info_path.is_file() else {}
            if why := member_mismatch(old, info):
                raise DataError(f"{path} was trained with {why}: remove it or pick another --out")
            _log(f"teacher member {i}: loading finished {path}")
            members.append(m)
            continue
        _log(f"teacher member {i + 1}/{len(specs)}: '{arch}' CNN width {cfg.teacher_width:g} at {tsize}px, "
             f"'{aug}' augmentation, up to {epochs} epochs")
        keras.utils.set_random_seed(seed)
        with strategy.scope():
            m = MEMBER_ARCHS[arch](tsize, n, cfg.teacher_width, cfg.student_dropout,
                                   **({"drop_path": drop_path} if drop_path else {}))
        mdata = data
        if k:
            keep = folds != i % k
            mdata = (data[0][keep], data[1][keep], data[2][keep], *data[3:])
        epoch_times[f"teacher_member{i}"] = stages.fit_classifier(
            m, *mdata, stage_dir=out / "stages" / f"teacher_member{i}", seed=seed,
            **dict(fit, epochs=epochs, augment=aug))
        stages.save_model(m, path)
        atomic_write_json(info_path, info)
        members.append(m)
    with strategy.scope():
        return stages.ensemble(members, tsize) if len(members) > 1 else members[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    add_flags(p)
    cfg = from_args(p.parse_args(argv))
    try:
        return run(cfg)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(cfg) -> int:
    import keras

    from train import stages
    from train.metrics import softmax, summarize
    from train.models import build_student, count_macs
    from train.plots import confusion_png, curves_png

    if cfg.teacher_recipe == "ensemble" and not cfg.teacher:
        try:
            member_specs(cfg)
        except ValueError as e:
            raise DataError(str(e)) from None
    check_folds(cfg)
    if cfg.kd_loss == "dkd" and not cfg.dkd_beta >= 0:
        raise DataError(f"--dkd-beta {cfg.dkd_beta:g}: want a weight >= 0")
    if cfg.kd_loss == "dkd" and not cfg.dkd_tckd >= 0:
        raise DataError(f"--dkd-tckd {cfg.dkd_tckd:g}: want a weight >= 0")
    if not cfg.teacher_mixup >= 0:
        raise DataError(f"--teacher-mixup {cfg.teacher_mixup:g}: want a Beta parameter > 0, or 0 for no mixup")
    if not cfg.teacher_cutmix >= 0 or (cfg.teacher_cutmix > 0 and cfg.teacher_mixup > 0):
        raise DataError(f"--teacher-cutmix {cfg.teacher_cutmix:g}: want a Beta parameter > 0, or 0 for no cutmix; "
                        f"not together with --teacher-mixup")
    if not 0 <= cfg.teacher_ema < 1:
        raise DataError(f"--teacher-ema {cfg.teacher_ema:g}: want a momentum in (0, 1), e.g. 0.99, or 0 for none")
    if not 0 <= cfg.teacher_drop_path < 1:
        raise DataError(f"--teacher-drop-path {cfg.teacher_drop_path:g}: want a probability in [0, 1)")
    if cfg.teacher_drop_path > 0 and not (cfg.teacher_recipe == "ensemble" and not cfg.teacher
                                          and any(a == "res" for *_, a in member_specs(cfg))):
        raise DataError("--teacher-drop-path needs 'res' members to train (e.g. --teacher-members "
                        "flip:14:res,geo:24:res): the other teachers have no residual branches to drop")
    if not cfg.baseline_mixup >= 0:
        raise DataError(f"--baseline-mixup {cfg.baseline_mixup:g}: want a Beta parameter > 0, or 0 for no mixup")
    if cfg.patience < 0:
        raise DataError(f"--patience {cfg.patience}: want epochs without improvement >= 1, or 0 for no early stopping")
    if cfg.teacher_patience < -1:
        raise DataError(f"--teacher-patience {cfg.teacher_patience}: want epochs without improvement >= 1, 0 for no "
                        f"early stopping, or -1 for --patience")
    if not cfg.kd_mixup >= 0:
        raise DataError(f"--kd-mixup {cfg.kd_mixup:g}: want a Beta parameter > 0, or 0 for no mixup")
    if cfg.kd_mixup > 0 and (cfg.teacher_mode != "consistent" or cfg.kd_loss != "hinton"):
        # cached logits belong to unblended images; DKD needs one true class per image
        raise DataError("--kd-mixup needs --teacher-mode consistent and --kd-loss hinton")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    t_start = time.time()
    splits = prepare(cfg)
    print(format_report(splits.report), flush=True)
    classes, n = splits.classes, len(splits.classes)
    imgs, timgs = splits.images, splits.test_images
    atomic_write_json(out / "data_report.json", splits.report)
    atomic_write_json(out / "split.json", {
        "classes": classes, "image_size": cfg.image_size,
        "train": [imgs.paths[i] for i in splits.train], "val": [imgs.paths[i] for i in splits.val],
        "test": [timgs.paths[i] for i in splits.test],
    })
    strategy = stages.make_strategy(cfg.strategy)
    t0 = time.time()
    teacher_paths = [Path(p) for p in cfg.teacher.split(",") if p] or [out / "teacher.keras"]
    teacher_path = teacher_paths[0]
    missing = [str(p) for p in teacher_paths if not p.is_file()]
    if cfg.teacher and missing:
        raise DataError(f"teacher model not found: {', '.join(missing)}")
    loaded = []
    if not missing:
        _log(f"teacher: loading {', '.join(map(str, teacher_paths))}")
        with strategy.scope():
            loaded = [keras.models.load_model(p) for p in teacher_paths]
        sizes, asked = {int(m.input_shape[1]) for m in loaded}, cfg.teacher_size or cfg.image_size
        if len(sizes) == 1 and sizes != {asked}:
            # A teacher sees its own resolution, resampled from the file as in its training, not a resized image.
            (size,) = sizes
            _log(f"teacher takes {size}px: its images are loaded at that size (not --teacher-size {asked})")
            cfg = dataclasses.replace(cfg, teacher_size=size)
    tsize = cfg.teacher_size or cfg.image_size
    if tsize != cfg.image_size:  # same files, same order: reuse the split's indices
        t_imgs = load_folder(cfg.data, tsize, cfg.cache_dir)
        t_timgs = load_folder(cfg.test_data, tsize, cfg.cache_dir) if cfg.test_data else t_imgs
    else:
        t_imgs, t_timgs = imgs, timgs
    y_tr = imgs.labels[splits.train]
    sw = class_weights(y_tr, n)[y_tr] if cfg.class_balance else np.ones(len(y_tr), np.float32)
    folds = None
    if cfg.teacher_folds:
        # A near-duplicate in another fold would let a member score an image it has effectively seen.
        groups = duplicate_groups(imgs.thumbs[splits.train], [imgs.sha256[i] for i in splits.train],
                                  cfg.near_dup_threshold)
        folds = fold_ids(y_tr, cfg.teacher_folds, cfg.split_seed, groups)
        sizes = np.bincount(folds, minlength=cfg.teacher_folds)
        if sizes.min() == 0 or sizes.max() > 2 * len(folds) / cfg.teacher_folds:
            # one member would train on (almost) nothing: a threshold so loose that most images are "duplicates"
            raise DataError(f"--teacher-folds {cfg.teacher_folds}: the duplicate groups (--near-dup-threshold "
                            f"{cfg.near_dup_threshold:g}) do not split into even folds (sizes "
                            f"{', '.join(map(str, sizes))}); lower the threshold or the fold count")

    results, times, epoch_times = {}, {}, {}

    # ---- teacher -------------------------------------------------------------------------
    if loaded:
        with strategy.scope():
            # Several teachers: one model whose logits are the members' mean.
            teacher = loaded[0] if len(loaded) == 1 else stages.ensemble(loaded, tsize)
    else:
        teacher = train_teacher(cfg, strategy, t_imgs, imgs, splits, y_tr, sw, n, out, epoch_times, folds)
        stages.save_model(teacher, teacher_path)
    times["teacher"] = time.time() - t0
    # This run's own ensemble members (none when the teacher came from --teacher or is EfficientNetB0).
    specs = member_specs(cfg) if cfg.teacher_recipe == "ensemble" and not cfg.teacher else []
    member_files = [out / f"teacher_member{i}.keras" for i in range(len(specs))]

    # ---- teacher logits (cache mode) -------------------------------------------------------
    teacher_logits = None
    if cfg.teacher_mode == "cache" and cfg.alpha < 1.0 and cfg.augment not in ("none", "flip"):
        # Cached logits belong to the clean (and flipped) image; with pose changes they describe another view.
        _log(f"warning: cached teacher logits with '{cfg.augment}' augmentation do not match the views the "
             f"student sees (docs/teacher.md); use --teacher-mode consistent or --augment flip")
    if cfg.teacher_mode == "cache" and cfg.alpha < 1.0:
        t0 = time.time()
        # Keyed by which teacher(s) produced them, so a different --teacher never reuses stale logits.
        tag = hashlib.sha256("|".join(f"{p.resolve()}:{p.stat().st_mtime_ns}" for p in teacher_paths).encode())
        kind = ("tta" if cfg.tta else "plain") + (f"_oof{cfg.teacher_folds}" if folds is not None else "")
        logit_file = out / f"teacher_logits_{kind}_{tag.hexdigest()[:10]}.npy"
        if logit_file.is_file() and len(np.load(logit_file)) == len(splits.train):
            teacher_logits = np.load(logit_file)
        elif folds is not None:
            if not all(f.is_file() for f in member_files):
                raise DataError(f"out-of-fold logits need the member files {member_files[0].name}.. in {out}")
            x_tr = t_imgs.x[splits.train]
            per_member = [stages.predict_logits(keras.models.load_model(f), x_tr, tta=cfg.tta) for f in member_files]
            teacher_logits = oof_logits(per_member, folds, cfg.teacher_folds)
            stages.atomic_save_npy(logit_file, teacher_logits)
        else:
            teacher_logits = stages.predict_logits(teacher, t_imgs.x[splits.train], tta=cfg.tta)
            stages.atomic_save_npy(logit_file, teacher_logits)
        # How well the soft targets themselves classify the training images (~100% when memorised).
        logits_train_accuracy = float(np.mean(teacher_logits.argmax(1) == y_tr))
        times["teacher_logits"] = time.time() - t0
        _log(f"teacher logits cached for {len(teacher_logits)} training images ({times['teacher_logits']:.1f}s)")

    # ---- student, distilled, then the same student without a teacher ---------------------------
    runs = [("student", dict(teacher=teacher, alpha=cfg.alpha))]
    if cfg.baseline:
        runs.append(("baseline", dict(teacher=None, alpha=1.0)))
    models = {"teacher": teacher}
    for name, kw in runs:
        path = out / f"{name}.keras"
        t0 = time.time()
        if path.is_file():
            _log(f"{name}: loading finished {path}")
            models[name] = keras.models.load_model(path)
        else:
            loss = f"DKD beta={cfg.dkd_beta:g} tckd={cfg.dkd_tckd:g}" if cfg.kd_loss == "dkd" else "KD"
            how = (f"{loss} T={cfg.temperature:g} alpha={kw['alpha']:g}, teacher {cfg.teacher_mode}"
                   if kw["teacher"] else "labels only")
            _log(f"{name}: training for up to {cfg.student_epochs} epochs ({how})")
            keras.utils.set_random_seed(cfg.seed)  # same init and data order for KD and baseline
            with strategy.scope():
                student = build_student(cfg.image_size, n, cfg.student_width, cfg.student_dropout)
            epoch_times[name] = stages.fit_student(
                student, kw["teacher"], imgs.x[splits.train], y_tr, sw,
                teacher_logits if kw["teacher"] is not None else None,
                imgs.x[splits.val], imgs.labels[splits.val], cfg, alpha=kw["alpha"],
                stage_dir=out / "stages" / name, strategy=strategy,
                teacher_size=tsize if kw["teacher"] is not None else None)
            stages.save_model(student, path)
            models[name] = student
        times[name] = time.time() - t0

    # ---- evaluation ---------------------------------------------------------------------------
    for name, model in models.items():
        src_val, src_test = (t_imgs, t_timgs) if name == "teacher" else (imgs, timgs)
        entry = {"params": int(model.count_params()), "macs": count_macs(model),
                 "input_size": int(model.input_shape[1])}
        for split, src, idx in (("val", src_val, splits.val), ("test", src_test, splits.test)):
            probs = softmax(stages.predict_logits(model, src.x[idx]))
            entry[split] = summarize((imgs if split == "val" else timgs).labels[idx], probs, classes)
        entry["train_seconds"] = round(times.get(name, 0.0), 1)
        if name in epoch_times:
            entry["epoch_seconds"] = epoch_times[name]
        results[name] = entry
    if teacher_logits is not None:
        results["teacher"]["cached_logits"] = {"out_of_fold": folds is not None, "folds": cfg.teacher_folds,
                                               "train_accuracy": logits_train_accuracy}
    # An ensemble teacher: how much each member scores alone, so the ensemble's gain is visible.
    if len(member_files) > 1:
        results["teacher"]["members"] = []
        for f, (aug, epochs, arch) in zip(member_files, specs):
            probs = softmax(stages.predict_logits(keras.models.load_model(f), t_timgs.x[splits.test]))
            results["teacher"]["members"].append(
                {"file": f.name, "arch": arch, "augment": aug, "epochs": epochs,
                 "test_accuracy": summarize(timgs.labels[splits.test], probs, classes)["accuracy"]})
    confusion_png({k: v["test"]["confusion"] for k, v in results.items()}, classes, out / "confusion.png")
    curves_png({k: stages.read_history(out / "stages" / k) for k in results}, out / "curves.png")
    kd_gain = None
    if "baseline" in results:
        kd_gain = results["student"]["test"]["accuracy"] - results["baseline"]["test"]["accuracy"]
    manifest = {
        "run": out.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv),
        "git_commit": git_commit(), "versions": versions(), "config": dataclasses.asdict(cfg),
        "data_report": splits.report, "results": results, "kd_gain_test_accuracy": kd_gain,
        "seconds": {**{k: round(v, 1) for k, v in times.items()}, "total": round(time.time() - t_start, 1)},
        "epoch_seconds": epoch_times,
        "classes": classes,
    }
    atomic_write_json(out / "manifest.json", manifest)
    print(summary_table(manifest))
    return 0


def summary_table(manifest) -> str:
    rows = ["| model | params | MACs | val acc | test acc | test macro-F1 | train time |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in manifest["results"].items():
        rows.append(f"| {name} | {r['params']:,} | {r['macs'] / 1e6:.1f} M | {r['val']['accuracy']:.2%} | "
                    f"{r['test']['accuracy']:.2%} | {r['test']['macro_f1']:.4f} | {r['train_seconds']:.0f} s |")
    g = manifest.get("kd_gain_test_accuracy")
    if g is not None:
        rows.append(f"\nKD gain (distilled - baseline, test accuracy): {g * 100:+.2f} points")
    rows.append(f"total wall time: {manifest['seconds']['total']:.0f} s")
    return "\n".join(rows)
