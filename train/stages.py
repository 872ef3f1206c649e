"""Keras plumbing shared by the teacher and student stages: datasets, augmentation, fit, save."""
from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from device.metadata import atomic_write_bytes
from train.config import AUGMENT_LEVELS
from train.distill import Distiller

# Progress bars on a terminal, one line per epoch in logs (nohup, CI).
VERBOSE = 1 if sys.stdout.isatty() else 2


def make_strategy(name: str):
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name not in ("none", "", None):
        raise ValueError(f"unknown strategy '{name}' (none | mirrored)")
    return tf.distribute.get_strategy()


def augmenter(level: str, seed: int) -> keras.Sequential | None:
    """MRI-appropriate, label-preserving: left/right flip; "geo" adds small pose changes (rotation, zoom,
    shift; the uncovered border stays black like the scan's background); "full" adds scanner gain too.

    "flip" is the only view change that flip-TTA cached teacher logits are exactly valid for, so it is
    the level where cached distillation targets match what the student sees (docs/teacher.md).
    """
    if level not in AUGMENT_LEVELS:
        raise ValueError(f"unknown augment level '{level}' ({' | '.join(AUGMENT_LEVELS)})")
    if level == "none":
        return None
    if level == "flip":
        return keras.Sequential([keras.layers.RandomFlip("horizontal", seed=seed)], name="augment")
    layers = [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.04, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
        keras.layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 3),
    ]
    if level == "full":
        layers += [keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 4),
                   keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 5)]
    return keras.Sequential(layers, name="augment")


def _pixels(x):
    return tf.cast(x, tf.float32)[..., None]


def make_dataset(x, target, weights=None, batch=64, shuffle=False, augment="none", seed=0, mixup=0.0, cutmix=0.0):
    """x: (N, s, s) uint8 in memory; target: labels, one-hot or a dict of arrays.

    mixup > 0 (one-hot targets only): each image, after augmentation, is blended with another of its batch,
    weight lam ~ Beta(mixup, mixup), and so are the targets and sample weights (Zhang et al. 2018).
    cutmix > 0 (one-hot targets only, instead of mixup): a box of another image of the batch, area ~ 1 - lam with
    lam ~ Beta(cutmix, cutmix), is pasted in; targets and weights mix by the pasted area (Yun et al. 2019).
    """
    items = (x, target) if weights is None else (x, target, weights)
    ds = tf.data.Dataset.from_tensor_slices(items)
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch, drop_remainder=shuffle)
    aug = augmenter(augment, seed)

    def prep(*t):
        xb = _pixels(t[0])
        if aug is not None:
            xb = tf.clip_by_value(aug(xb, training=True), 0.0, 255.0)
        if mixup > 0:
            return _mixed(xb, *t[1:])
        if cutmix > 0:
            return _cutmixed(xb, *t[1:])
        return (xb,) + tuple(t[1:])

    def _beta(n, a):
        g1 = tf.random.gamma([n], a, seed=seed + 7)
        return g1 / (g1 + tf.random.gamma([n], a, seed=seed + 8))

    def _blend(a, keep, other):
        w = tf.reshape(keep, [-1] + [1] * (len(a.shape) - 1))
        return w * a + (1.0 - w) * tf.gather(a, other)

    def _mixed(xb, *rest):
        n = tf.shape(xb)[0]
        lam, other = _beta(n, mixup), tf.random.shuffle(tf.range(n), seed=seed + 9)
        return (_blend(xb, lam, other),) + tuple(_blend(tf.cast(r, tf.float32), lam, other) for r in rest)

    def _cutmixed(xb, *rest):
        n, h, w = tf.shape(xb)[0], tf.shape(xb)[1], tf.shape(xb)[2]
        side = tf.sqrt(1.0 - _beta(n, cutmix))  # box side / image side, so its area is ~ 1 - lam
        bh = tf.cast(side * tf.cast(h, tf.float32), tf.int32)
        bw = tf.cast(side * tf.cast(w, tf.float32), tf.int32)
        cy = tf.random.uniform([n], 0, h, tf.int32, seed=seed + 10)
        cx = tf.random.uniform([n], 0, w, tf.int32, seed=seed + 11)
        rows, cols = tf.range(h)[None], tf.range(w)[None]
        in_r = (rows >= (cy - bh // 2)[:, None]) & (rows < (cy + bh - bh // 2)[:, None])
        in_c = (cols >= (cx - bw // 2)[:, None]) & (cols < (cx + bw - bw // 2)[:, None])
        box = tf.cast(in_r[:, :, None] & in_c[:, None, :], tf.float32)[..., None]  # clipped at the border
        other = tf.random.shuffle(tf.range(n), seed=seed + 9)
        keep = 1.0 - tf.reduce_mean(box, axis=[1, 2, 3])  # the share of this image left after clipping
        return ((1.0 - box) * xb + box * tf.gather(xb, other),) + tuple(
            _blend(tf.cast(r, tf.float32), keep, other) for r in rest)

    return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._t, 2))


def _schedule(lr, epochs, steps):
    total = max(epochs * steps, 2)
    warm = min(steps, total // 2)
    return keras.optimizers.schedules.CosineDecay(lr * 0.1, total - warm, alpha=0.01,
                                                  warmup_target=lr, warmup_steps=warm)


def _callbacks(stage_dir: Path, patience: int, ema: bool = False):
    stage_dir.mkdir(parents=True, exist_ok=True)
    timer = EpochTimer()
    # With weight averaging, validation scores the averaged weights, and from the end of each epoch they sit in the
    # model, so early stopping keeps the best average. After the backup: a resumed run restarts from the raw weights.
    swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema else []
    return timer, [
        # Killed runs resume from the last finished epoch (weights, optimizer, epoch counter).
        keras.callbacks.BackupAndRestore(str(stage_dir / "backup")),
        *swap,
        *([keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience,
                                         restore_best_weights=True, verbose=1)] if patience > 0 else []),
        keras.callbacks.CSVLogger(str(stage_dir / "history.csv"), append=True),
        timer,
    ]


def fit_classifier(model, x, y, sw, xv, yv, cfg, *, epochs, lr, stage_dir, strategy, label_smoothing=0.0,
                   seed=None, augment=None, mixup=0.0, cutmix=0.0, ema=0.0, patience=None, extra_callbacks=()):
    """Plain supervised training (the teacher); ema > 0 keeps a moving average of the weights, with that momentum.
    patience: early stopping's (0 = none, keep the last weights); None = cfg.patience."""
    n = model.output_shape[-1]
    steps = max(len(x) // cfg.batch_size, 1)
    with strategy.scope():
        opt = keras.optimizers.AdamW(_schedule(lr, epochs, steps), weight_decay=cfg.weight_decay, use_ema=ema > 0,
                                     ema_momentum=ema)
        model.compile(optimizer=opt,
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing),
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=False)
    onehot = np.eye(n, dtype=np.float32)
    seed = cfg.seed if seed is None else seed
    train_ds = make_dataset(x, onehot[y], sw, cfg.batch_size, shuffle=True, augment=augment or cfg.augment, seed=seed,
                            mixup=mixup, cutmix=cutmix)
    val_ds = make_dataset(xv, onehot[yv], batch=cfg.batch_size)
    timer, cbs = _callbacks(Path(stage_dir), cfg.patience if patience is None else patience, ema=ema > 0)
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=cbs + list(extra_callbacks), verbose=VERBOSE)
    return timer.seconds


def fit_student(student, teacher, x, y, sw, teacher_logits, xv, yv, cfg, *, alpha, stage_dir, strategy,
                teacher_size=None, extra_callbacks=()):
    """Distillation (teacher given) or the no-KD baseline (teacher None, alpha 1)."""
    steps = max(len(x) // cfg.batch_size, 1)
    epochs = cfg.student_epochs
    with strategy.scope():
        use_teacher = teacher if (teacher is not None and teacher_logits is None) else None
        if use_teacher is not None and teacher_size and teacher_size != student.input_shape[1]:
            use_teacher = _resized(use_teacher, student.input_shape[1], teacher_size)
        beta = cfg.dkd_beta if cfg.kd_loss == "dkd" else None
        distiller = Distiller(student, use_teacher, cfg.temperature, alpha, beta, cfg.dkd_tckd)
        distiller.compile(optimizer=keras.optimizers.AdamW(_schedule(cfg.student_lr, epochs, steps),
                                                           weight_decay=cfg.weight_decay), jit_compile=False)
        size = student.input_shape[1]
        distiller(np.zeros((1, size, size, 1), np.float32))  # BackupAndRestore needs a built model
    target = y if teacher_logits is None else {"label": y, "teacher_logits": teacher_logits.astype(np.float32)}
    if teacher is None:  # the label-only student
        mixup = cfg.baseline_mixup
    else:  # cached logits belong to unblended images: blends only when the teacher runs on them
        mixup = cfg.kd_mixup if use_teacher is not None and alpha < 1.0 else 0.0
    if mixup:  # blended one-hot labels; a teacher scores the blended images themselves
        target = np.eye(int(student.output_shape[-1]), dtype=np.float32)[y]
    train_ds = make_dataset(x, target, sw, cfg.batch_size, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                            mixup=mixup)
    val_ds = make_dataset(xv, yv, batch=cfg.batch_size)
    timer, cbs = _callbacks(Path(stage_dir), cfg.patience)
    distiller.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=cbs + list(extra_callbacks), verbose=VERBOSE)
    return timer.seconds


def _resized(teacher, size, tsize):
    """Consistent teaching with a larger teacher: upsample the student's augmented batch."""
    inp = keras.Input((size, size, 1))
    x = keras.layers.Resizing(tsize, tsize, interpolation="bilinear")(inp)
    return keras.Model(inp, teacher(x), name="teacher_resized")


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


def predict_logits(model, x: np.ndarray, tta: bool = False, batch: int = 128) -> np.ndarray:
    xf = x.astype(np.float32)[..., None]
    logits = model.predict(xf, batch_size=batch, verbose=0)
    if tta:  # horizontal flip is label-preserving for axial/coronal MRI: average both views
        logits = (logits + model.predict(xf[:, :, ::-1], batch_size=batch, verbose=0)) / 2.0
    return np.asarray(logits, np.float32)


def save_model(model, path):
    """Atomic .keras save (Keras needs the suffix, so the temp file keeps it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save_npy(path, arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def read_history(stage_dir) -> dict:
    f = Path(stage_dir) / "history.csv"
    if not f.is_file():
        return {}
    with open(f) as fh:
        rows = list(csv.DictReader(fh))
    hist: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            if k != "epoch" and v not in ("", None):
                hist.setdefault(k, []).append(float(v))
    return hist
