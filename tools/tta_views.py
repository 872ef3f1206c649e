"""Does averaging a teacher's logits over more views than a flip make it stronger? (real data, leakage-checked split)

    PYTHONPATH=. python tools/tta_views.py artifacts/hetero/teacher_member{0,1,2}.keras \
        artifacts/tres/teacher_member{0,1,2}.keras --group 0,1,2 --group 3,4,5 --group 0,1,2,3,4,5 --geo 2,5

Every view is scored with and without a left/right flip. Views: 4 px shifts, zoom 0.9 / 1.1, rotation +-8 degrees
(the uncovered border black, as the "geo" augmentation leaves it). Prints each member under each view set, then
each --group's ensemble (mean logits) twice: every member under the view set, and only the --geo members (those
trained on pose changes) under it while the others keep flip-TTA.
"""
import argparse

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from train import stages
from train.config import Config
from train.data import load_folder, prepare


def shift(x, dx, dy):
    return np.roll(np.pad(x, ((0, 0), (abs(dy),) * 2, (abs(dx),) * 2)), (dy, dx), axis=(1, 2))[
        :, abs(dy):abs(dy) + x.shape[1], abs(dx):abs(dx) + x.shape[2]]


def zoom(x, f):
    h = x.shape[1]
    c = int(round(h * f))
    z = tf.image.resize(x[..., None].astype(np.float32), (c, c)).numpy()[..., 0]
    if c >= h:
        o = (c - h) // 2
        return z[:, o:o + h, o:o + h]
    out, o = np.zeros(x.shape, np.float32), (h - c) // 2
    out[:, o:o + c, o:o + c] = z
    return out


def rotate(x, deg):
    return np.stack([np.asarray(Image.fromarray(a).rotate(deg, resample=Image.BILINEAR)) for a in x])


VIEWS = {"id": lambda x: x, "s+4x": lambda x: shift(x, 4, 0), "s-4x": lambda x: shift(x, -4, 0),
         "s+4y": lambda x: shift(x, 0, 4), "s-4y": lambda x: shift(x, 0, -4), "z1.1": lambda x: zoom(x, 1.1),
         "z0.9": lambda x: zoom(x, 0.9), "r+8": lambda x: rotate(x, 8), "r-8": lambda x: rotate(x, -8)}
VIEW_SETS = {"flip": ["id"], "flip+shift": ["id", "s+4x", "s-4x", "s+4y", "s-4y"], "flip+zoom": ["id", "z1.1", "z0.9"],
             "flip+rot": ["id", "r+8", "r-8"], "all 9": list(VIEWS)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("members", nargs="+")
    p.add_argument("--group", action="append", default=[], help="member indices whose ensemble to score")
    p.add_argument("--geo", default="", help="indices of members trained on pose changes")
    a = p.parse_args()
    cfg = Config(data="../shared/data/brain-tumor-mri/Training", image_size=96)
    s = prepare(cfg, log=lambda *a, **k: None)
    splits = {"val": s.val, "test": s.test}
    y = {k: s.images.labels[idx] for k, idx in splits.items()}
    logits, by_size = {}, {}  # (member, split, view) -> logits averaged with the view's mirror image
    for i, path in enumerate(a.members):
        m = keras.models.load_model(path)
        size = m.input_shape[1]
        if size not in by_size:
            by_size[size] = load_folder(cfg.data, size, cfg.cache_dir).x
        for split, idx in splits.items():
            for v, f in VIEWS.items():
                logits[i, split, v] = stages.predict_logits(m, f(by_size[size][idx]), tta=True)

    def acc(members, views_of):
        out = []
        for split in ("val", "test"):
            z = np.mean([np.mean([logits[i, split, v] for v in views_of(i)], axis=0) for i in members], axis=0)
            out.append(100 * float(np.mean(z.argmax(1) == y[split])))
        return "val {:6.2f}  test {:6.2f}".format(*out)

    geo = {int(i) for i in a.geo.split(",") if i}
    for i, path in enumerate(a.members):
        print(f"member {i}: {path}")
        for name, views in VIEW_SETS.items():
            print(f"    {name:11s} {acc([i], lambda _, v=views: v)}")
    for g in a.group:
        members = [int(i) for i in g.split(",")]
        print(f"ensemble {g}   (every member / only --geo members {sorted(geo & set(members))} under the views)")
        for name, views in VIEW_SETS.items():
            print(f"    {name:11s} {acc(members, lambda _, v=views: v)}   |   "
                  f"{acc(members, lambda i, v=views: v if i in geo else ['id'])}")


if __name__ == "__main__":
    main()
