"""The distillation loss, the Distiller, and teacher logits: checked against hand computations."""
import keras
import numpy as np
import pytest

from train.distill import Distiller, decoupled_kl, distillation_loss
from train.models import build_student


def test_loss_matches_hand_computation_including_t_squared():
    s = np.array([[2.0, 0.5, -1.0]], np.float32)
    t = np.array([[1.0, 3.0, 0.0]], np.float32)
    y = np.array([1])
    T, alpha = 3.0, 0.25

    def sm(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    ce = -np.log(sm(s[0])[1])
    pt, ps = sm(t[0] / T), sm(s[0] / T)
    kl = float((pt * np.log(pt / ps)).sum())
    expected = alpha * ce + (1 - alpha) * T * T * kl
    got = float(distillation_loss(y, s, t, T, alpha)[0])
    assert got == pytest.approx(expected, rel=1e-5)
    # Cross-check the soft term against Keras' own LogitsDistillation, which
    # (given a KLDivergence object, not the "kl_divergence" string) includes T^2.
    from keras.distillation import LogitsDistillation

    ld = LogitsDistillation(temperature=T, loss=keras.losses.KLDivergence())
    assert float(ld.compute_loss(t, s)) == pytest.approx(T * T * kl, rel=1e-4)
    # alpha = 1 is plain cross-entropy (the baseline).
    assert float(distillation_loss(y, s, t, T, 1.0)[0]) == pytest.approx(ce, rel=1e-5)


def test_dkd_splits_the_kl_into_target_and_non_target_terms():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 3, (6, 4)).astype(np.float32)
    t = rng.normal(0, 3, (6, 4)).astype(np.float32)
    t[0] = [30.0, -20.0, 0.0, 5.0]  # a very confident teacher: the masked softmax must not underflow to nan
    y = np.array([0, 1, 2, 3, 0, 1])
    T, alpha = 4.0, 0.3

    def sm(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    pt, ps = sm(t / T), sm(s / T)
    tckd, nckd = (np.asarray(v) for v in decoupled_kl(y, s, t, T))
    kl = (pt * np.log(pt / ps)).sum(-1)
    # Zhao et al. 2022, eq. 5: KL = TCKD + (1 - p_teacher[true]) * NCKD
    p_true = pt[np.arange(6), y]
    assert tckd + (1 - p_true) * nckd == pytest.approx(kl, rel=1e-4, abs=1e-6)
    # NCKD by hand: both distributions renormalised over the wrong classes
    mask = np.eye(4, dtype=bool)[y]
    qt = np.where(mask, 0, pt) / (1 - p_true)[:, None]
    qs = np.where(mask, 0, ps) / (1 - ps[np.arange(6), y])[:, None]
    by_hand = np.where(mask, 0, qt * np.log(np.where(mask, 1, qt) / np.where(mask, 1, qs))).sum(-1)
    assert nckd == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
    # the loss weights NCKD by beta instead, and beta None is plain Hinton KD
    ce = -np.log(sm(s)[np.arange(6), y])
    got = np.asarray(distillation_loss(y, s, t, T, alpha, beta=8.0))
    assert got == pytest.approx(alpha * ce + (1 - alpha) * T * T * (tckd + 8.0 * nckd), rel=1e-4)
    hinton = np.asarray(distillation_loss(y, s, t, T, alpha))
    assert hinton == pytest.approx(alpha * ce + (1 - alpha) * T * T * kl, rel=1e-4)
    assert np.all(np.isfinite(got))


def _teacher(size):
    inp = keras.Input((size, size, 1))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    return keras.Model(inp, keras.layers.Dense(4)(x))


@pytest.mark.parametrize("cached", [False, True])
def test_the_student_learns_from_cached_logits_or_labels(cached):
    keras.utils.set_random_seed(0)
    size = 16
    teacher, student = _teacher(size), build_student(size, 4, width=0.25)
    x = np.random.default_rng(0).integers(0, 255, (8, size, size, 1)).astype(np.float32)
    y = np.arange(8) % 4
    d = Distiller(student, temperature=4.0, alpha=0.5 if cached else 1.0)
    d.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    target = {"label": y, "teacher_logits": teacher.predict(x, verbose=0)} if cached else y
    losses = d.fit(x, target, epochs=30, batch_size=8, verbose=0).history["loss"]
    # On one fixed batch the loss must fall well below where it started. With cached logits it has a floor: this
    # random teacher disagrees with the labels, and dropout stays on (0.46-0.54 of the start at 15 epochs, by CPU).
    assert losses[-1] < 0.6 * losses[0]


def test_teacher_ensemble_averages_logits_and_tta_averages_flips():
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
    flipped = a.predict(xf[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(fit.predict_logits(a, x, tta=True), (a.predict(xf, verbose=0) + flipped) / 2,
                               rtol=1e-5, atol=1e-5)
