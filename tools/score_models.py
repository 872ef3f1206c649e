"""Score trained models (students or teachers) on the real data's leakage-checked val / test split.

    PYTHONPATH=. python tools/score_models.py artifacts/ablation-cgeo/seed42/student.keras artifacts/hetero/teacher.keras

Each model reads the images at its own input size (no TTA). A model whose input is larger than the
student's (--image-size) is also scored on the student's image upsampled to its size, which is what a
teacher sees in consistent teaching (`--teacher-mode consistent`).
"""
import argparse

import keras
import numpy as np

from train import stages
from train.config import Config
from train.data import load_folder, prepare

p = argparse.ArgumentParser()
p.add_argument("models", nargs="+")
p.add_argument("--data", default="../shared/data/brain-tumor-mri/Training")
p.add_argument("--image-size", type=int, default=Config.image_size)
args = p.parse_args()
cfg = Config(data=args.data, image_size=args.image_size)
s = prepare(cfg, log=lambda *a, **k: None)
splits = (("val", s.val), ("test", s.test))


def score(model, x):
    return "  ".join(f"{name} {100 * np.mean(stages.predict_logits(model, x[idx]).argmax(1) == s.images.labels[idx]):.2f}"
                     for name, idx in splits)


for path in args.models:
    m = keras.models.load_model(path)
    size = m.input_shape[1]
    x = s.images.x if size == args.image_size else load_folder(cfg.data, size, cfg.cache_dir).x
    print(f"{score(m, x)}  {path} ({size} px)")
    if size != args.image_size:
        print(f"{score(stages._resized(m, args.image_size, size), s.images.x)}  {path} "
              f"({args.image_size} px upsampled to {size})")
