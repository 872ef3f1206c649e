"""How much the cached soft targets of a run say beyond the labels (real data, leakage-checked split).

    PYTHONPATH=. python tools/soft_target_stats.py artifacts/hetero artifacts/fold4

Per run: accuracy of its cached teacher logits on the training images and the mean probability of the true
class at T 1 and T 4 (a memorised teacher: ~100% and ~1.0), the same for the run's teacher on the validation
images (flip-TTA, as cached), and for a fold run how many training images have a near or exact duplicate in
another fold (their "out-of-fold" targets are not quite out of fold) and how many duplicate groups its folds
split. A run that holds a distilled student also gets
how closely that student matches the cached targets on the same images (top-1 agreement, KL at T 4): near-zero KL
means it copied all the targets offered, so a better teacher can only help through different targets. A run made
with --teacher has no teacher.keras of its own; its validation line is left out.
"""
import json
import sys
from pathlib import Path

import keras
import numpy as np

from train import stages
from train.config import Config
from train.data import duplicate_groups, load_folder, nearest_distance, prepare
from train.metrics import softmax
from train.run import fold_ids


def p_true(z, y, t):
    return float(softmax(z / t)[np.arange(len(y)), y].mean())


def line(name, z, y):
    return (f"{name}: accuracy {100 * np.mean(z.argmax(1) == y):.2f}%, p(true) {p_true(z, y, 1):.3f} at T 1, "
            f"{p_true(z, y, 4):.3f} at T 4")


def fit_line(z, t, y):
    """How the student's logits z match the teacher's cached logits t on the training images."""
    ps, pt = softmax(z / 4), softmax(t / 4)
    kl = float(np.mean(np.sum(pt * (np.log(pt + 1e-9) - np.log(ps + 1e-9)), axis=1)))
    return (f"distilled student on training images: accuracy {100 * np.mean(z.argmax(1) == y):.2f}%, top-1 agreement "
            f"with the targets {100 * np.mean(z.argmax(1) == t.argmax(1)):.2f}%, KL(targets || student) {kl:.4f} at T 4, "
            f"p(true) {p_true(z, y, 4):.3f} at T 4")


for run in map(Path, sys.argv[1:]):
    cfg = json.loads((run / "manifest.json").read_text())["config"]
    c = Config(data=cfg["data"], image_size=cfg["image_size"], split_seed=cfg["split_seed"],
               near_dup_threshold=cfg.get("near_dup_threshold", Config.near_dup_threshold))
    s = prepare(c, log=lambda *a, **k: None)
    y_tr = s.images.labels[s.train]
    print(run)
    student = keras.models.load_model(run / "student.keras") if (run / "student.keras").is_file() else None
    z = stages.predict_logits(student, s.images.x[s.train], tta=True) if student is not None else None
    for f in sorted(run.glob("teacher_logits_*.npy")):
        t = np.load(f)
        print("  " + line(f"cached {f.name} on training images", t, y_tr))
        if z is not None:
            print("    " + fit_line(z, t, y_tr))
    if (run / "teacher.keras").is_file():
        teacher = keras.models.load_model(run / "teacher.keras")
        x = load_folder(c.data, teacher.input_shape[1], c.cache_dir).x
        print("  " + line("teacher on validation images", stages.predict_logits(teacher, x[s.val], tta=True),
                          s.images.labels[s.val]))
    k = cfg.get("teacher_folds") or 0
    if k:
        th = s.images.thumbs[s.train]
        # members trained on duplicate-aware folds say so in their record (train/run.py); older ones split groups
        member = json.loads((run / "teacher_member0.json").read_text()) if (run / "teacher_member0.json").is_file() else {}
        groups = duplicate_groups(th, [s.images.sha256[i] for i in s.train], c.near_dup_threshold)
        folds = fold_ids(y_tr, k, cfg["split_seed"], groups if member.get("fold_dups") is not None else None)
        n = sum(int((nearest_distance(th[folds == f], th[folds != f])[0] < c.near_dup_threshold).sum())
                for f in range(k))
        ids, sizes = np.unique(groups, return_counts=True)
        multi = ids[sizes > 1]
        per_image = fold_ids(y_tr, k, cfg["split_seed"])
        split = [sum(len(set(f[groups == g])) > 1 for g in multi) for f in (folds, per_image)]
        print(f"  duplicate groups: {len(ids)} for {len(y_tr)} training images, {len(multi)} with more than one image "
              f"(the largest {sizes.max()}); "
              f"split across folds: {split[0]} by this run's folds, {split[1]} by per-image folds (before "
              f"duplicate-aware folds)")
        print(f"  training images with a near or exact duplicate in another fold: {n} of {len(y_tr)}")
