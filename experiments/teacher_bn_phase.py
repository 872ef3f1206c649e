"""Probe (issue 34, item 2): does a last fine-tuning phase with BatchNorm trained lift a finished Lite teacher?

    python -m experiments.teacher_bn_phase --data ../shared/data/brain-tumor-mri/Training \\
        --teacher artifacts/e2e-s42/teacher.keras --epochs 2 --lr 1e-4 --out artifacts/teacher-bn

The default recipe fine-tunes with BatchNorm frozen at its ImageNet statistics (train/teacher.py). This loads a
finished teacher, makes every layer trainable (BatchNorm in training mode: its statistics adapt to MRI), trains
--epochs more at --lr on the same split and augmentation, and prints validation and test accuracy before and after.
The teacher is saved to OUT/teacher.keras; nothing is shipped.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def accuracy(model, splits) -> dict:
    from train import fit

    out = {}
    for split, images, idx in (("val", splits.images, splits.val), ("test", splits.test_images, splits.test)):
        out[split] = float((fit.predict_logits(model, images.x[idx]).argmax(1) == images.labels[idx]).mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import keras

    from train import fit, student
    from train.config import Config
    from train.data import prepare

    cfg = Config(data=a.data, out=a.out)
    keras.utils.set_random_seed(cfg.seed)
    model = keras.models.load_model(a.teacher)
    splits = prepare(cfg).at_size(cfg, int(model.input_shape[1]))
    before = accuracy(model, splits)
    print(f"before: val {before['val']:.2%}, test {before['test']:.2%}", flush=True)
    for layer in model._flatten_layers():   # each layer: `model.trainable = True` leaves the frozen BatchNorm frozen
        layer.trainable = True
    seconds = fit.fit_classifier(model, student.train_set(splits, cfg, full_labels_only=True), cfg, epochs=a.epochs,
                                 augment=cfg.augment, seed=cfg.seed, stage_dir=Path(a.out) / "stages",
                                 strategy=fit.make_strategy("none"), lr=a.lr)
    after = accuracy(model, splits)
    print(f"after {a.epochs} epoch(s) with BatchNorm trained at lr {a.lr}: val {after['val']:.2%}, "
          f"test {after['test']:.2%} ({sum(seconds):.0f} s)", flush=True)
    fit.save_model(model, Path(a.out) / "teacher.keras")
    (Path(a.out) / "bn_phase.json").write_text(json.dumps(
        {"teacher": Path(a.teacher).name, "epochs": a.epochs, "lr": a.lr, "before": before, "after": after,
         "seconds": float(np.sum(seconds))}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
