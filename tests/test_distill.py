"""The one Distiller (train/distill.py) and the teacher's logits: checked against hand computations."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from train.distill import Distiller
from train.models import build_student


def _sm(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_the_loss_matches_hand_computation_including_t_squared():
    """alpha * CE(labels, images) + (1 - alpha) * T^2 * KL(teacher(view) || student(view)), on a linear student whose
    logits are known, so the loss Keras reports must equal the formula."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (16, 3)).astype("f4")
    student = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3, use_bias=False)])
    student.layers[-1].set_weights([w])
    views, images = rng.uniform(0, 2, (4, 4, 4, 1)).astype("f4"), rng.uniform(0, 2, (4, 4, 4, 1)).astype("f4")
    teacher, labels = rng.normal(0, 2, (4, 3)).astype("f4"), np.array([0, 1, 2, 1])
    T, alpha = 3.0, 0.25
    d = Distiller(student, temperature=T, alpha=alpha)
    d.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=False)
    ds = tf.data.Dataset.from_tensors(((views, images), (teacher, np.ones(4, "f4"), labels, np.ones(4, "f4"))))
    loss = d.fit(ds, epochs=1, verbose=0).history["loss"][0]
    zs, zi = views.reshape(4, -1) @ w, images.reshape(4, -1) @ w
    ce = -np.log(_sm(zi)[np.arange(4), labels]).mean()
    pt, ps = _sm(teacher / T), _sm(zs / T)
    kl = (pt * np.log(pt / ps)).sum(-1).mean()
    assert loss == pytest.approx(alpha * ce + (1 - alpha) * T * T * kl, rel=1e-4)
    # The soft term against Keras' own LogitsDistillation (with a KLDivergence object it includes T^2).
    from keras.distillation import LogitsDistillation

    ld = LogitsDistillation(temperature=T, loss=keras.losses.KLDivergence())
    assert float(ld.compute_loss(teacher, zs)) == pytest.approx(T * T * kl, rel=1e-4)


@pytest.mark.parametrize("teacher", [False, True])
def test_the_student_learns_from_the_teachers_logits_or_the_labels(teacher):
    """One identity view per image (--views 0): with a teacher, classic image-logit KD; without, the twin."""
    from train import fit, views

    keras.utils.set_random_seed(0)
    size = 16
    x = np.random.default_rng(0).integers(0, 255, (64, size, size)).astype(np.uint8)
    y = np.arange(64) % 4
    logits = np.eye(4, dtype=np.float32)[y] * 4.0          # a teacher that agrees with the labels
    cache = views.identity(x, logits, "test")
    data = fit.TrainSet(x, y, np.ones(64, np.float32), x, y)
    target, known = cache.soft_labels(y, 4)

    class Cfg:
        temperature, alpha, batch_size, seed, student_lr, student_epochs, weight_decay, patience = (
            1.0, 0.3, 16, 0, 3e-3, 30, 1e-4, 0)

    student = build_student(size, 4, width=0.25)
    fit.fit_on_views(student, data, cache, logits if teacher else target, known.astype(np.float32), 1, Cfg,
                     teacher=teacher, stage_dir=__import__("tempfile").mkdtemp(), strategy=tf.distribute.get_strategy())
    acc = (fit.predict_logits(student, x).argmax(1) == y).mean()
    assert acc >= 0.9, acc


def _teacher(size):
    inp = keras.Input((size, size, 1))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    return keras.Model(inp, keras.layers.Dense(4)(x))


def test_teacher_ensemble_averages_logits():
    from train import fit, teacher

    keras.utils.set_random_seed(1)
    a, b = _teacher(16), _teacher(8)  # members of different input sizes
    b.name = a.name  # and the same name (e.g. two seeds of one architecture)
    x = np.random.default_rng(2).integers(0, 255, (5, 16, 16)).astype(np.uint8)
    ens = teacher.ensemble([a, b], 16)
    xf = x.astype(np.float32)[..., None]
    xb = np.asarray(keras.layers.Resizing(8, 8)(xf))
    expected = (a.predict(xf, verbose=0) + b.predict(xb, verbose=0)) / 2
    np.testing.assert_allclose(fit.predict_logits(ens, x), expected, rtol=1e-5, atol=1e-5)
