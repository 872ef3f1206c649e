"""Keras plumbing shared by the teacher and student stages: datasets, augmentation, schedules, fit, save.

Every fit is resumable: a killed run restarts from its last finished epoch (keras BackupAndRestore in the
stage's folder), and every saved model is written atomically.
"""
from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from device.atomic import atomic_path
from train.config import AUGMENT_LEVELS
from train.distill import Distiller

# Progress bars on a terminal, one line per epoch in logs (nohup, CI).
VERBOSE = 1 if sys.stdout.isatty() else 2


@dataclass
class TrainSet:
    """The arrays one fit needs: training images, labels and sample weights, validation images and labels."""
    x: np.ndarray        # (N, s, s) uint8
    y: np.ndarray
    w: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    no_tumour: int | None = None   # set when some labels are a weak "tumour, type unknown" (= number of classes)


def make_strategy(name: str):
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in (gpus or tf.config.list_logical_devices("CPU"))])
    return tf.distribute.get_strategy()


def augmenter(level: str, seed: int) -> keras.Sequential | None:
    """MRI-appropriate, label-preserving: left/right flip; "geo" adds small pose changes (rotation, zoom, shift;
    the uncovered border stays black like the scan's background).

    "flip" is the only view change that flip-TTA cached teacher logits are exactly valid for.
    """
    if level not in AUGMENT_LEVELS:
        raise ValueError(f"unknown augment level '{level}' ({' | '.join(AUGMENT_LEVELS)})")
    if level == "none":
        return None
    layers = [keras.layers.RandomFlip("horizontal", seed=seed)]
    if level == "geo":
        layers += [keras.layers.RandomRotation(0.04, fill_mode="constant", seed=seed + 1),
                   keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
                   keras.layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 3)]
    return keras.Sequential(layers, name="augment")


def make_dataset(x, target, weights=None, batch=64, shuffle=False, augment="none", seed=0):
    """x: (N, s, s) uint8 in memory; target: labels, one-hot or a dict of arrays."""
    items = (x, target) if weights is None else (x, target, weights)
    ds = tf.data.Dataset.from_tensor_slices(items)
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch, drop_remainder=shuffle)
    aug = augmenter(augment, seed)

    def prep(*t):
        xb = tf.cast(t[0], tf.float32)[..., None]
        if aug is not None:
            xb = tf.clip_by_value(aug(xb, training=True), 0.0, 255.0)
        return (xb,) + tuple(t[1:])

    return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._t, 2))


def schedule(lr, epochs, steps):
    """Linear warm-up over the first epoch, then cosine decay to 1% of lr."""
    total = max(epochs * steps, 2)
    warm = min(steps, total // 2)
    return keras.optimizers.schedules.CosineDecay(lr * 0.1, total - warm, alpha=0.01, warmup_target=lr,
                                                  warmup_steps=warm)


def compile_for_fit(model, cfg, lr, epochs, steps, **kw) -> None:
    """AdamW on the warm-up + cosine schedule, with its slots built now: left to fit, the optimizer creates them
    inside the first traced step and TensorFlow traces that step a second time (~3 s per model on 2 cores)."""
    model.compile(optimizer=keras.optimizers.AdamW(schedule(lr, epochs, steps), weight_decay=cfg.weight_decay),
                  jit_compile=False, **kw)
    model.optimizer.build(model.trainable_variables)


def callbacks(stage_dir: Path, patience: int):
    stage_dir.mkdir(parents=True, exist_ok=True)
    timer = EpochTimer()
    return timer, [
        # Killed runs resume from the last finished epoch (weights, optimizer, epoch counter).
        keras.callbacks.BackupAndRestore(str(stage_dir / "backup")),
        # Validation accuracy is noisy epoch to epoch: stop late and restore the best weights.
        *([keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience,
                                         restore_best_weights=True, verbose=1)] if patience > 0 else []),
        keras.callbacks.CSVLogger(str(stage_dir / "history.csv"), append=True),
        timer,
    ]


def fit_classifier(model, data: TrainSet, cfg, *, epochs, augment, seed, stage_dir, strategy, lr=None) -> list[float]:
    """Plain supervised training (the teacher; lr defaults to --teacher-lr); returns the seconds of each epoch."""
    n = model.output_shape[-1]
    steps = max(len(data.x) // cfg.batch_size, 1)
    with strategy.scope():
        compile_for_fit(model, cfg, lr or cfg.teacher_lr, epochs, steps,
                        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
                        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    onehot = np.eye(n, dtype=np.float32)
    train_ds = make_dataset(data.x, onehot[data.y], data.w, cfg.batch_size, shuffle=True, augment=augment, seed=seed)
    val_ds = make_dataset(data.x_val, onehot[data.y_val], batch=cfg.batch_size)
    timer, cbs = callbacks(Path(stage_dir), cfg.patience)
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=cbs, verbose=VERBOSE)
    return timer.seconds


def predict_logits(model, x: np.ndarray, batch: int = 128) -> np.ndarray:
    return np.asarray(model.predict(x.astype(np.float32)[..., None], batch_size=batch, verbose=0), np.float32)


def save_model(model, path):
    with atomic_path(path) as tmp:  # keeps the .keras suffix Keras insists on
        model.save(tmp)


def read_history(stage_dir) -> dict:
    f = Path(stage_dir) / "history.csv"
    if not f.is_file():
        return {}
    hist: dict[str, list] = {}
    with open(f) as fh:
        for r in csv.DictReader(fh):
            for k, v in r.items():
                if k != "epoch" and v not in ("", None):
                    hist.setdefault(k, []).append(float(v))
    return hist


def view_dataset(views, view_target, view_mask, k: int, n_view_images: int, data: TrainSet, batch: int, seed: int):
    """An endless stream of ((views, images), (view targets, view mask, labels, weights)) batches. Each pass over
    the view images shows one of each image's k cached views, drawn afresh; the original images (labelled training
    images, randomly flipped) come in a stream of their own. All gathers run inside tf.data: no Python per step."""
    views_t = tf.constant(views)
    target_t, mask_t = tf.constant(view_target, tf.float32), tf.constant(view_mask, tf.float32)
    x_t, y_t, w_t = tf.constant(data.x), tf.constant(data.y), tf.constant(data.w, tf.float32)

    def pick_views(idx):
        i = idx * k + tf.random.uniform(tf.shape(idx), 0, k, dtype=tf.int64, seed=seed)
        return tf.cast(tf.gather(views_t, i), tf.float32)[..., None], tf.gather(target_t, i), tf.gather(mask_t, i)

    def pick_images(idx):
        x = tf.cast(tf.gather(x_t, idx), tf.float32)[..., None]
        flip = tf.random.uniform((tf.shape(idx)[0], 1, 1, 1), seed=seed + 1) < 0.5
        return tf.where(flip, x[:, :, ::-1], x), tf.gather(y_t, idx), tf.gather(w_t, idx)

    v = (tf.data.Dataset.range(n_view_images).shuffle(n_view_images, seed=seed, reshuffle_each_iteration=True)
         .repeat().batch(batch, drop_remainder=True).map(pick_views, num_parallel_calls=tf.data.AUTOTUNE))
    o = (tf.data.Dataset.range(len(data.x)).shuffle(len(data.x), seed=seed + 2, reshuffle_each_iteration=True)
         .repeat().batch(batch, drop_remainder=True).map(pick_images, num_parallel_calls=tf.data.AUTOTUNE))
    def pair(view, image):
        return (view[0], image[0]), (view[1], view[2], image[1], image[2])

    return tf.data.Dataset.zip(v, o).map(pair).prefetch(tf.data.AUTOTUNE)


def fit_on_views(student, data: TrainSet, cache, view_target, view_mask, k: int, cfg, *, teacher: bool, stage_dir,
                 strategy) -> list[float]:
    """Patient distillation (teacher=True) or its labels-only twin on the view cache; an epoch is one view of every
    view image. The best epoch on validation is kept."""
    n_view_images = len(cache.x) // k
    steps = max(n_view_images // cfg.batch_size, 1)
    size = student.input_shape[1]
    with strategy.scope():
        distiller = Distiller(student, cfg.temperature, cfg.alpha, teacher=teacher, no_tumour=data.no_tumour)
        distiller(np.zeros((1, size, size, 1), np.float32))
        compile_for_fit(distiller, cfg, cfg.student_lr, cfg.student_epochs, steps)
    train_ds = view_dataset(cache.x, view_target, view_mask, k, n_view_images, data, cfg.batch_size, cfg.seed)
    val_ds = make_dataset(data.x_val, data.y_val, batch=cfg.batch_size)
    timer, cbs = callbacks(Path(stage_dir), cfg.patience or cfg.student_epochs)
    distiller.fit(train_ds, validation_data=val_ds, epochs=cfg.student_epochs, steps_per_epoch=steps, callbacks=cbs,
                  verbose=VERBOSE)
    return timer.seconds
