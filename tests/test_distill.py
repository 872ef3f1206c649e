import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT, tiny_config
from train.distill import Distiller, decoupled_kl, distillation_loss
from train.models import build_student, count_macs


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
    # tckd 0: only the teacher's ranking of the wrong classes; its target-class logit no longer matters
    only_nckd = np.asarray(distillation_loss(y, s, t, T, alpha, beta=2.0, tckd=0.0))
    assert only_nckd == pytest.approx(alpha * ce + (1 - alpha) * T * T * 2.0 * nckd, rel=1e-4)
    t2 = t.copy()
    t2[np.arange(6), y] += 7.0
    assert np.asarray(distillation_loss(y, s, t2, T, alpha, beta=2.0, tckd=0.0)) == pytest.approx(only_nckd, rel=1e-4)
    hinton = np.asarray(distillation_loss(y, s, t, T, alpha))
    assert hinton == pytest.approx(alpha * ce + (1 - alpha) * T * T * kl, rel=1e-4)
    assert np.all(np.isfinite(got))


def _teacher(size):
    inp = keras.Input((size, size, 1))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    return keras.Model(inp, keras.layers.Dense(4)(x))


@pytest.mark.parametrize("cached", [False, True])
def test_teacher_stays_frozen_and_student_learns(cached):
    keras.utils.set_random_seed(0)
    size = 16
    teacher, student = _teacher(size), build_student(size, 4, width=0.25)
    before_t = [w.copy() for w in teacher.get_weights()]
    before_s = [w.copy() for w in student.get_weights()]
    x = np.random.default_rng(0).integers(0, 255, (8, size, size, 1)).astype(np.float32)
    y = np.arange(8) % 4
    d = Distiller(student, teacher, temperature=4.0, alpha=0.5)
    d.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    target = {"label": y, "teacher_logits": teacher.predict(x, verbose=0)} if cached else y
    d.fit(x, target, epochs=1, batch_size=8, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before_t, teacher.get_weights()))
    assert any(not np.array_equal(a, b) for a, b in zip(before_s, student.get_weights()))


def test_consistent_teacher_scores_the_very_batch_the_student_sees():
    """Consistent teaching: the KD term uses the teacher's logits on the (augmented) batch given to the
    student, resized to the teacher's input size, not logits of some other view."""
    from train import stages

    keras.utils.set_random_seed(0)
    teacher, student = _teacher(8), build_student(16, 4, width=0.25)
    x = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 1)).astype(np.float32)
    y = np.arange(6) % 4
    resized = stages._resized(teacher, 16, 8)
    d = Distiller(student, resized, temperature=2.0, alpha=0.3)
    s_logits = student(x, training=False)
    t_logits = teacher(keras.layers.Resizing(8, 8, interpolation="bilinear")(x))
    expected = np.mean(distillation_loss(y, s_logits, t_logits, 2.0, 0.3))
    got = float(d.compute_loss(x, y, s_logits, training=True))
    assert got == pytest.approx(float(expected), rel=1e-5)
    # a mirrored batch gets the mirrored batch's teacher logits (the teacher is not symmetric)
    xm = x[:, :, ::-1]
    s_m = student(xm, training=False)
    t_m = teacher(keras.layers.Resizing(8, 8, interpolation="bilinear")(xm))
    assert float(d.compute_loss(xm, y, s_m, training=True)) == pytest.approx(
        float(np.mean(distillation_loss(y, s_m, t_m, 2.0, 0.3))), rel=1e-5)
    assert float(d.compute_loss(xm, y, s_m, training=True)) != pytest.approx(
        float(np.mean(distillation_loss(y, s_m, t_logits, 2.0, 0.3))), rel=1e-3)


def test_consistent_mode_runs_end_to_end_without_cached_logits(tiny_run, phantoms, tmp_path):
    """The default real-data recipe's student stage: geo views, teacher (another input size) on every batch."""
    from train.run import run

    cfg = tiny_config(phantoms, tmp_path, teacher=str(tiny_run / "teacher.keras"), teacher_mode="consistent",
                      augment="geo", student_epochs=2, baseline=False, alpha=0.5)
    assert run(cfg) == 0
    out = tmp_path / "run"
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["teacher_mode"] == "consistent" and "teacher_logits" not in m["seconds"]
    assert not list(out.glob("teacher_logits_*.npy"))
    assert len(m["epoch_seconds"]["student"]) == 2
    assert keras.models.load_model(out / "student.keras").input_shape[1] == cfg.image_size


def test_kd_mixup_teacher_scores_the_blends_and_only_the_distilled_student_sees_them(tiny_run, phantoms, tmp_path,
                                                                                     monkeypatch, capsys):
    from train import stages
    from train.run import main, run

    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 2, (5, 4)).astype(np.float32), rng.normal(0, 2, (5, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 1])
    onehot = np.eye(4, dtype=np.float32)[y]
    # one-hot rows are the class ids; a blend's hard-label term is the blend of the two terms
    np.testing.assert_allclose(distillation_loss(onehot, s, t, 4.0, 0.3), distillation_loss(y, s, t, 4.0, 0.3),
                               rtol=1e-5)
    lam, other = 0.7, np.eye(4, dtype=np.float32)[[3, 3, 0, 1, 2]]
    ce = lambda lab: np.asarray(distillation_loss(lab, s, t, 4.0, 1.0))  # noqa: E731 (alpha 1: CE only)
    np.testing.assert_allclose(ce(lam * onehot + (1 - lam) * other), lam * ce(onehot) + (1 - lam) * ce(other),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="one true class"):
        distillation_loss(onehot, s, t, 4.0, 0.3, beta=2.0)

    seen = []  # (stage, mixup asked of the training dataset, rank of the labels the distiller got)
    make = stages.make_dataset

    class Recording(Distiller):
        def compute_loss(self, x=None, y=None, *a, **kw):
            seen.append(("loss", len(y.shape)))
            return super().compute_loss(x, y, *a, **kw)

    monkeypatch.setattr(stages, "Distiller", Recording)
    monkeypatch.setattr(stages, "make_dataset", lambda *a, **k: seen.append(("data", k.get("mixup", 0.0))) or make(*a, **k))
    cfg = tiny_config(phantoms, tmp_path, teacher=str(tiny_run / "teacher.keras"), teacher_mode="consistent",
                      kd_mixup=0.4, student_epochs=1)
    assert run(cfg) == 0
    data = [v for k, v in seen if k == "data"]
    assert data[0] == 0.4 and 0.4 not in data[1:]  # the distilled student's training set only
    ranks = [v for k, v in seen if k == "loss"]
    assert 2 in ranks and 1 in ranks  # blended one-hot labels for KD, class ids for validation and the baseline
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["config"]["kd_mixup"] == 0.4 and "baseline" in m["results"]
    # cached logits belong to unblended images: refused before any work, one line
    for bad in (["--kd-mixup", "0.4"], ["--kd-mixup", "-1", "--teacher-mode", "consistent"]):
        assert main(["--data", str(phantoms / "Training"), *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--kd-mixup" in err and not (tmp_path / "bad").exists()


def test_baseline_mixup_reaches_only_the_label_only_student_and_patience_0_keeps_every_epoch(tiny_run, phantoms,
                                                                                            tmp_path, monkeypatch,
                                                                                            capsys):
    from train import stages
    from train.run import main, run

    seen = []  # (mixup asked of a training dataset, whether a teacher was given) per student run
    fit, make = stages.fit_student, stages.make_dataset
    monkeypatch.setattr(stages, "make_dataset", lambda *a, **k: seen.append(k.get("mixup", 0.0)) or make(*a, **k))
    monkeypatch.setattr(stages, "fit_student", lambda s, t, *a, **k: seen.append(t is not None) or fit(s, t, *a, **k))
    cfg = tiny_config(phantoms, tmp_path, teacher=str(tiny_run / "teacher.keras"), baseline_mixup=0.4, patience=0,
                      student_epochs=3)
    assert run(cfg) == 0
    # per student: the teacher flag, its training set's mixup, then validation's (0)
    assert seen == [True, 0.0, 0.0, False, 0.4, 0.0]
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["config"]["baseline_mixup"] == 0.4
    assert len(m["results"]["baseline"]["epoch_seconds"]) == 3  # no early stopping: every epoch ran
    # early stopping only when patience > 0; it keeps the best epoch's weights, 0 keeps the last
    kinds = lambda p: [type(c).__name__ for c in stages._callbacks(tmp_path / f"cb{p}", p)[1]]  # noqa: E731
    assert "EarlyStopping" in kinds(3) and "EarlyStopping" not in kinds(0)
    for bad in (["--baseline-mixup", "-1"], ["--patience", "-1"]):
        assert main(["--data", str(phantoms / "Training"), *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and bad[0] in err and not (tmp_path / "bad").exists()


def test_a_given_teacher_sees_its_own_resolution(tiny_run, phantoms, tmp_path):
    from train.run import run

    # the tiny run's teacher takes 32px; this run would otherwise feed it the student's 48px images
    cfg = tiny_config(phantoms, tmp_path, teacher=str(tiny_run / "teacher.keras"), teacher_size=0, student_epochs=1,
                      baseline=False)
    assert run(cfg) == 0
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["config"]["teacher_size"] == 32 and m["config"]["image_size"] == 48
    assert m["results"]["teacher"]["test"]["accuracy"] == json.loads(
        (tiny_run / "manifest.json").read_text())["results"]["teacher"]["test"]["accuracy"]


def test_dkd_flag_reaches_the_distiller_and_only_the_distilled_student(tiny_run, phantoms, tmp_path, monkeypatch,
                                                                      capsys):
    from train import stages
    from train.run import main, run

    betas = []

    class Recording(Distiller):
        def compute_loss(self, *a, **kw):
            betas.append((self.beta, self.tckd))
            return super().compute_loss(*a, **kw)

    monkeypatch.setattr(stages, "Distiller", Recording)
    cfg = tiny_config(phantoms, tmp_path, teacher=str(tiny_run / "teacher.keras"), kd_loss="dkd", dkd_beta=2.5,
                      dkd_tckd=0.5, student_epochs=1)
    assert run(cfg) == 0
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["config"]["kd_loss"] == "dkd" and m["config"]["dkd_beta"] == 2.5 and m["config"]["dkd_tckd"] == 0.5
    # the run's distillers get beta 2.5 and tckd 0.5 (the baseline's alpha 1 leaves it no KD term to weigh)
    assert set(betas) == {(2.5, 0.5)}
    assert "baseline" in m["results"]
    # the same loss, fed by hand, is what the recording distiller computes
    d = Recording(keras.models.load_model(tmp_path / "run" / "student.keras"), None, 4.0, 0.3, beta=2.5, tckd=0.5)
    s, t = np.array([[1.0, 0.0, -1.0, 2.0]], np.float32), np.array([[4.0, 0.0, 1.0, -2.0]], np.float32)
    got = float(d.compute_loss(None, {"label": np.array([0]), "teacher_logits": t}, s, training=True))
    want = float(distillation_loss(np.array([0]), s, t, 4.0, 0.3, beta=2.5, tckd=0.5)[0])
    assert got == pytest.approx(want, rel=1e-5)
    assert want != pytest.approx(float(distillation_loss(np.array([0]), s, t, 4.0, 0.3, beta=2.5)[0]), rel=1e-3)
    # a negative weight is refused before any work, with the one-line error of every bad flag
    assert main(["--data", str(phantoms / "Training"), "--kd-loss", "dkd", "--dkd-beta", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--dkd-beta -1: want a weight >= 0" in capsys.readouterr().err
    assert main(["--data", str(phantoms / "Training"), "--kd-loss", "dkd", "--dkd-tckd", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--dkd-tckd -1: want a weight >= 0" in capsys.readouterr().err


def test_student_is_small_int8_friendly_and_far_cheaper_than_teacher():
    from train.models import build_teacher

    s, t = build_student(128, 4), build_teacher(128, 4)
    assert s.count_params() <= 300_000
    assert count_macs(t) > 3 * count_macs(s)
    allowed = (keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
               keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.GlobalAveragePooling2D,
               keras.layers.Dropout, keras.layers.Dense)
    assert all(isinstance(layer, allowed) for layer in s.layers), [type(la).__name__ for la in s.layers]


def test_run_writes_models_reports_and_a_reloadable_student(tiny_run):
    m = json.loads((tiny_run / "manifest.json").read_text())
    assert set(m["results"]) == {"teacher", "student", "baseline"}
    assert m["kd_gain_test_accuracy"] == pytest.approx(
        m["results"]["student"]["test"]["accuracy"] - m["results"]["baseline"]["test"]["accuracy"])
    for k in ("config", "data_report", "git_commit", "versions"):
        assert k in m
    for f in ("confusion.png", "curves.png", "split.json", "data_report.json"):
        assert (tiny_run / f).is_file()
    # The default teacher is an ensemble: each member saved and scored alone, the average saved as teacher.keras.
    assert [(e["arch"], e["augment"], e["epochs"]) for e in m["results"]["teacher"]["members"]] == [
        ("dw", "none", 1), ("res", "geo", 1)]
    assert all((tiny_run / f"teacher_member{i}.keras").is_file() for i in range(2))
    assert keras.models.load_model(tiny_run / "teacher_member1.keras").get_layer("s1_add") is not None  # residual
    teacher = keras.models.load_model(tiny_run / "teacher.keras")
    assert teacher.get_layer("mean_logits") is not None
    # The saved student is a plain Keras model: no custom objects needed.
    student = keras.models.load_model(tiny_run / "student.keras")
    assert student.output_shape == (None, 4)


def test_killed_run_resumes_from_last_epoch(phantoms, tmp_path):
    """A run interrupted after epoch 2 restarts at epoch 3, not from scratch."""
    from train import stages
    from train.data import prepare

    cfg = tiny_config(phantoms, tmp_path, student_epochs=4)
    s = prepare(cfg)
    x, y = s.images.x[s.train], s.images.labels[s.train]
    w = np.ones(len(y), np.float32)
    xv, yv = s.images.x[s.val], s.images.labels[s.val]

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated kill")

    class Seen(keras.callbacks.Callback):
        epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            Seen.epochs.append(epoch)

    strategy = tf.distribute.get_strategy()
    with pytest.raises(KeyboardInterrupt):
        stages.fit_student(build_student(cfg.image_size, 4, 0.25), None, x, y, w, None, xv, yv, cfg, alpha=1.0,
                           stage_dir=tmp_path / "stage", strategy=strategy, extra_callbacks=[Kill()])
    Seen.epochs = []
    stages.fit_student(build_student(cfg.image_size, 4, 0.25), None, x, y, w, None, xv, yv, cfg, alpha=1.0,
                       stage_dir=tmp_path / "stage", strategy=strategy, extra_callbacks=[Seen()])
    assert Seen.epochs == [2, 3]


MIRRORED = r"""
import sys, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
import keras
from train import stages
from train.distill import Distiller
from train.models import build_student
s = stages.make_strategy("mirrored")
assert s.num_replicas_in_sync == 2, s.num_replicas_in_sync
with s.scope():
    d = Distiller(build_student(16, 4, 0.25), None, alpha=1.0)
    d.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=False)
x = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 1)).astype(np.float32)
h = d.fit(x, np.arange(16) % 4, batch_size=8, epochs=1, verbose=0)
assert np.isfinite(h.history["loss"][0])
print("MIRRORED_OK", s.num_replicas_in_sync)
"""


def test_mirrored_strategy_over_two_logical_cpus_trains_a_step():
    p = subprocess.run([sys.executable, "-c", MIRRORED, str(ROOT)], capture_output=True, text=True, timeout=300)
    assert "MIRRORED_OK 2" in p.stdout, p.stderr[-2000:]


def test_teacher_ensemble_averages_logits_and_tta_averages_flips():
    from train import stages

    keras.utils.set_random_seed(1)
    a, b = _teacher(16), _teacher(8)  # members of different input sizes
    b.name = a.name  # and the same name (e.g. two seeds of one architecture)
    x = np.random.default_rng(2).integers(0, 255, (5, 16, 16)).astype(np.uint8)
    ens = stages.ensemble([a, b], 16)
    xf = x.astype(np.float32)[..., None]
    xb = np.asarray(keras.layers.Resizing(8, 8)(xf))
    expected = (a.predict(xf, verbose=0) + b.predict(xb, verbose=0)) / 2
    np.testing.assert_allclose(stages.predict_logits(ens, x), expected, rtol=1e-5, atol=1e-5)
    flipped = a.predict(xf[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(stages.predict_logits(a, x, tta=True), (a.predict(xf, verbose=0) + flipped) / 2,
                               rtol=1e-5, atol=1e-5)


def test_efficientnet_teacher_recipe_runs_end_to_end(phantoms, tmp_path):
    """The recipe for users with ImageNet weights (here random init, one tiny epoch: plumbing only)."""
    from train.run import run

    cfg = tiny_config(phantoms, tmp_path, teacher_recipe="efficientnetb0", teacher_size=32, student_epochs=1,
                      baseline=False, alpha=0.5)
    assert run(cfg) == 0
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["results"]["teacher"]["params"] > 3_000_000  # EfficientNetB0, not a student-sized net
    assert "members" not in m["results"]["teacher"]


def test_augment_levels():
    from train import stages

    x = np.random.default_rng(0).integers(0, 255, (64, 12, 12)).astype(np.uint8)
    (xb, _), = stages.make_dataset(x, np.zeros(64, np.int32), batch=64, augment="flip", seed=1).take(1)
    xb, xf = xb.numpy()[..., 0], x.astype(np.float32)
    same = [np.array_equal(a, b) for a, b in zip(xb, xf)]
    mirrored = [np.array_equal(a, b[:, ::-1]) for a, b in zip(xb, xf)]
    # "flip" only mirrors left/right (so flip-TTA teacher logits stay valid), and does so for some images only.
    assert all(s or f for s, f in zip(same, mirrored)) and any(same) and any(mirrored)
    (xn, _), = stages.make_dataset(x, np.zeros(64, np.int32), batch=64, augment="none").take(1)
    np.testing.assert_array_equal(xn.numpy()[..., 0], xf)
    # "geo" moves the anatomy but never re-exposes it: a black scan stays black, the border it uncovers is black
    black = np.zeros((64, 12, 12), np.uint8)
    (xg, _), = stages.make_dataset(black, np.zeros(64, np.int32), batch=64, augment="geo", seed=1).take(1)
    assert float(np.abs(xg.numpy()).max()) == 0.0
    (xg, _), = stages.make_dataset(x, np.zeros(64, np.int32), batch=64, augment="geo", seed=1).take(1)
    assert not np.array_equal(xg.numpy()[..., 0], xf) and float(xg.numpy().min()) == 0.0
    with pytest.raises(ValueError, match="augment level"):
        stages.augmenter("strong", 0)


def _class_constant_batch(side, **blend):
    """One shuffled batch of 64 images, class c a constant 60c with sample weight 1 + c, through make_dataset."""
    from train import stages

    y = np.arange(64) % 4
    x = np.repeat((60 * y).astype(np.uint8)[:, None, None], side * side).reshape(64, side, side)
    sw = (1.0 + y).astype(np.float32)
    (xb, tb, wb), = stages.make_dataset(x, np.eye(4, dtype=np.float32)[y], sw, batch=64, shuffle=True, seed=1,
                                        **blend).take(1)
    return xb.numpy(), tb.numpy(), wb.numpy()


def test_mixup_blends_images_targets_and_weights_alike(capsys, tmp_path):
    from train import stages

    xb, tb, wb = _class_constant_batch(8, mixup=0.4)
    np.testing.assert_allclose(tb.sum(1), 1.0, rtol=1e-5)
    # each blend is the same convex combination of two images, of their one-hot labels and of their weights
    np.testing.assert_allclose(xb[:, 0, 0, 0], tb @ (60.0 * np.arange(4)), atol=1e-3)
    np.testing.assert_allclose(wb, tb @ (1.0 + np.arange(4)), rtol=1e-5)
    assert np.ptp(xb.reshape(64, -1), axis=1).max() == 0  # blended whole images, not patches
    assert (tb.max(1) < 0.9).sum() >= 8  # Beta(0.4, 0.4) often blends a lot
    y = np.arange(64) % 4
    (xn, tn, _), = stages.make_dataset(np.zeros((64, 8, 8), np.uint8), np.eye(4, dtype=np.float32)[y],
                                       np.ones(64, np.float32), batch=64).take(1)
    assert set(np.unique(tn.numpy())) == {0.0, 1.0}  # mixup 0: untouched
    from train.run import main

    assert main(["--teacher-mixup", "-1", "--out", str(tmp_path / "o")]) == 2  # refused before any work
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--teacher-mixup -1" in err and not (tmp_path / "o").exists()


def test_cutmix_pastes_boxes_and_mixes_targets_and_weights_by_area(capsys, tmp_path):
    from train.run import main

    xb, tb, wb = _class_constant_batch(16, cutmix=1.0)
    np.testing.assert_allclose(tb.sum(1), 1.0, rtol=1e-5)
    # pixels are copied, never blended: every pixel is one of the class constants
    assert set(np.unique(xb)) <= {0.0, 60.0, 120.0, 180.0}
    # a label's share is its image's share of the pixels, and the sample weights mix alike
    for c in range(4):
        np.testing.assert_allclose((xb[..., 0] == 60.0 * c).mean((1, 2)), tb[:, c], atol=1e-6)
    np.testing.assert_allclose(wb, tb @ (1.0 + np.arange(4)), rtol=1e-5)

    def is_box(m):
        r, c = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        return m.sum() == len(r) * len(c) == (np.ptp(r) + 1) * (np.ptp(c) + 1)

    # what was pasted is one rectangle
    two = [i for i in range(64) if (tb[i] > 0).sum() == 2]
    assert len(two) >= 30
    assert all(any(is_box(xb[i, :, :, 0] == 60.0 * c) for c in np.flatnonzero(tb[i] > 0)) for i in two)
    assert (tb.max(1) < 0.9).sum() >= 8  # Beta(1, 1) areas: often a large box
    for bad in (["--teacher-cutmix", "-1"], ["--teacher-cutmix", "1", "--teacher-mixup", "0.4"]):
        assert main([*bad, "--out", str(tmp_path / "o")]) == 2  # refused before any work
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--teacher-cutmix" in err and not (tmp_path / "o").exists()


def test_weight_averaging_changes_what_validation_scores_not_how_members_train(capsys, tmp_path):
    from train import stages
    from train.config import Config
    from train.run import MEMBER_RECORD_FIELDS, main, member_mismatch

    rng = np.random.default_rng(0)
    y = np.arange(128) % 4
    x = (rng.integers(0, 60, (128, 32, 32)) + 40 * y[:, None, None]).astype(np.uint8)
    cfg = Config(batch_size=16, patience=20, augment="none")
    hist, kept = {}, {}
    for ema in (0.0, 0.9):
        keras.utils.set_random_seed(1)
        m = build_student(32, 4, 0.25, 0.2)
        stages.fit_classifier(m, x[:96], y[:96], np.ones(96, np.float32), x[96:], y[96:], cfg, epochs=3, lr=3e-3,
                              stage_dir=tmp_path / str(ema), strategy=stages.make_strategy("none"), ema=ema)
        assert m.optimizer.use_ema == (ema > 0)
        hist[ema] = stages.read_history(tmp_path / str(ema))
        kept[ema] = m.evaluate(stages.make_dataset(x[96:], np.eye(4, dtype=np.float32)[y[96:]], batch=16),
                               verbose=0, return_dict=True)["loss"]
    # the average only watches: same seed, same training steps and losses
    np.testing.assert_allclose(hist[0.9]["loss"], hist[0.0]["loss"], rtol=1e-4)
    # but validation scores the averaged weights, not the trained ones
    assert abs(hist[0.9]["val_loss"][0] - hist[0.0]["val_loss"][0]) > 1e-3
    for ema, h in hist.items():  # and the member kept is the one validation picked (first best epoch)
        best = int(np.argmax(h["val_accuracy"]))
        assert kept[ema] == pytest.approx(h["val_loss"][best], rel=1e-5)
    # a member trained without averaging is not reused by a run that asks for it; a bad momentum is refused
    want = {f: 0 for f in MEMBER_RECORD_FIELDS} | {"ema": 0.99}
    assert member_mismatch({k: v for k, v in want.items() if k != "ema"}, want) == \
        "--teacher-ema 0.0 (this run wants 0.99)"
    assert main(["--teacher-ema", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--teacher-ema 1" in err and not (tmp_path / "o").exists()


def test_stochastic_depth_drops_whole_residual_branches_per_example_in_training_only(capsys, tmp_path):
    from train.models import build_resnet
    from train.run import MEMBER_RECORD_FIELDS, main, member_mismatch

    assert not [la for la in build_resnet(32, 4, 0.25).layers if "drop_path" in la.name]
    m = build_resnet(32, 4, 0.25, drop_path=0.4)
    drops = [la for la in m.layers if "drop_path" in la.name]
    assert [round(d.rate, 2) for d in drops] == [0.1, 0.2, 0.3, 0.4]  # deeper blocks are skipped more often
    branch = np.random.default_rng(0).normal(size=(400, 2, 2, 8)).astype(np.float32)
    out = np.asarray(drops[-1](branch, training=True))
    kept = out != 0
    # one decision per example, not per value: a dropped branch is zero everywhere, a kept one nowhere
    assert set(kept.reshape(400, -1).mean(axis=1)) == {0.0, 1.0}
    assert 0.5 < kept.reshape(400, -1)[:, 0].mean() < 0.7  # kept with probability 0.6
    np.testing.assert_allclose(out[kept], branch[kept] / 0.6, rtol=1e-5)
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 1)).astype(np.float32)
    np.testing.assert_array_equal(m(x, training=False), m(x, training=False))  # inference is deterministic
    assert not np.allclose(m(x, training=True), m(x, training=True))
    # a member trained without it is not reused by a run that asks for it; bad values are refused before any work
    want = {f: 0 for f in MEMBER_RECORD_FIELDS} | {"drop_path": 0.1}
    assert member_mismatch({k: v for k, v in want.items() if k != "drop_path"}, want) == \
        "--teacher-drop-path 0.0 (this run wants 0.1)"
    for argv, msg in ((["--teacher-drop-path", "1"], "want a probability in [0, 1)"),
                      (["--teacher-drop-path", "0.1"], "needs 'res' members")):
        assert main([*argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and msg in err and not (tmp_path / "o").exists()


def test_teacher_member_specs(capsys, tmp_path, tiny_run):
    from train.config import Config, member_specs
    from train.run import main

    assert member_specs(Config()) == [("flip", 14, "dw"), ("flip", 14, "dw"), ("geo", 24, "dw")]
    assert member_specs(Config(teacher_members="2", teacher_epochs=5, augment="none")) == [("none", 5, "dw")] * 2
    assert member_specs(Config(teacher_members="2", teacher_augment="geo")) == [("geo", 14, "dw")] * 2
    assert member_specs(Config(teacher_members="flip:3:res, geo:2:dw")) == [("flip", 3, "res"), ("geo", 2, "dw")]
    # a bad spec stops the run before any data is read, with one line saying what is wrong
    for bad in ("flip:14,rotate:3", "flip:14:vit"):
        assert main(["--teacher-members", bad, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and bad.split(",")[-1] in err and "AUGMENT:EPOCHS[:ARCH]" in err
    # a finished member of another family is not silently reused in a slot that wants the other one
    other = tmp_path / "other"
    other.mkdir()
    for ext in ("keras", "json"):
        shutil.copy(tiny_run / f"teacher_member1.{ext}", other / f"teacher_member0.{ext}")
    cfg = json.loads((tiny_run / "manifest.json").read_text())["config"]
    assert main(["--data", cfg["data"], "--test-data", cfg["test_data"], "--image-size", "48", "--teacher-size",
                 "32", "--teacher-members", "geo:1", "--cache-dir", cfg["cache_dir"], "--out", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "family res (this run wants dw)" in err
    # nor one trained without mixup in a run that asks for mixup
    assert main(["--data", cfg["data"], "--test-data", cfg["test_data"], "--image-size", "48", "--teacher-size",
                 "32", "--teacher-members", "geo:1:res", "--teacher-mixup", "0.2", "--cache-dir", cfg["cache_dir"],
                 "--out", str(other)]) == 2
    assert "--teacher-mixup 0.0 (this run wants 0.2)" in capsys.readouterr().err
    assert main(["--data", cfg["data"], "--test-data", cfg["test_data"], "--image-size", "48", "--teacher-size",
                 "32", "--teacher-members", "geo:1:res", "--teacher-cutmix", "1", "--cache-dir", cfg["cache_dir"],
                 "--out", str(other)]) == 2
    assert "--teacher-cutmix 0.0 (this run wants 1.0)" in capsys.readouterr().err
    # nor one trained on other views or for other epochs (a changed --teacher-members over a finished run)
    assert main(["--data", cfg["data"], "--test-data", cfg["test_data"], "--image-size", "48", "--teacher-size",
                 "32", "--teacher-members", "flip:2:res", "--cache-dir", cfg["cache_dir"], "--out", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "augmentation geo (this run wants flip), epochs 1 (this run wants 2)" in err
    # nor one that early stopping could have cut short, in a run that wants every epoch
    assert main(["--data", cfg["data"], "--test-data", cfg["test_data"], "--image-size", "48", "--teacher-size",
                 "32", "--teacher-members", "geo:1:res", "--patience", "20", "--teacher-patience", "0",
                 "--cache-dir", cfg["cache_dir"], "--out", str(other)]) == 2
    assert "--teacher-patience 20 (this run wants 0)" in capsys.readouterr().err
    from train import config, models

    assert set(config.MEMBER_ARCHS) == set(models.MEMBER_ARCHS)  # the flag's choices are the families built


def test_teacher_patience_reaches_only_the_members(phantoms, tmp_path, monkeypatch, capsys):
    from train import stages
    from train.run import main, run

    seen = []  # (stage folder, early stopping's patience) per fit
    cbs = stages._callbacks
    monkeypatch.setattr(stages, "_callbacks", lambda d, p, **k: seen.append((Path(d).name, p)) or cbs(d, p, **k))
    cfg = tiny_config(phantoms, tmp_path, teacher_members="none:2", teacher_patience=0, patience=1, student_epochs=2,
                      baseline=False)
    assert run(cfg) == 0
    assert seen == [("teacher_member0", 0), ("student", 1)]
    member = json.loads((tmp_path / "run" / "teacher_member0.json").read_text())
    assert member["patience"] == 0 and member["epochs"] == 2
    assert len(stages.read_history(tmp_path / "run" / "stages" / "teacher_member0")["accuracy"]) == 2
    # -1 (the default) means --patience
    seen.clear()
    assert run(dataclasses.replace(cfg, teacher_patience=-1, out=str(tmp_path / "run2"), student_epochs=1)) == 0
    assert seen == [("teacher_member0", 1), ("student", 1)]
    assert main(["--data", str(phantoms / "Training"), "--teacher-patience", "-2", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--teacher-patience" in err and not (tmp_path / "bad").exists()


def test_out_of_fold_logits_come_only_from_members_that_never_saw_the_image():
    from train.run import fold_ids, oof_logits

    y = np.repeat(np.arange(4), [10, 7, 5, 9])
    folds = fold_ids(y, 3, seed=0)
    assert np.array_equal(folds, fold_ids(y, 3, seed=0)) and not np.array_equal(folds, fold_ids(y, 3, seed=1))
    for c in range(4):  # stratified: each class spread evenly over the folds
        counts = np.bincount(folds[y == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    # member i left out fold i % 3; give each member constant logits equal to its index
    members = [np.full((len(y), 4), float(i), np.float32) for i in range(5)]
    z = oof_logits(members, folds, 3)
    expected = {0: (0 + 3) / 2, 1: (1 + 4) / 2, 2: 2.0}
    for f, v in expected.items():
        assert np.all(z[folds == f] == v)


def test_folds_keep_duplicate_groups_whole_and_stay_stratified():
    from train.data import duplicate_groups
    from train.run import fold_ids

    rng = np.random.default_rng(0)
    thumbs = rng.uniform(0, 255, (40, 256)).astype(np.float32)
    thumbs[1] = thumbs[0] + 2.0      # near copy of 0
    thumbs[2] = thumbs[1] + 2.0      # near copy of 1, so of 0's group too (a chain), though 4 from 0
    thumbs[5] = thumbs[4] + 30.0     # far: not a duplicate
    sha = [f"h{i}" for i in range(40)]
    sha[7] = sha[6]                  # exact copy, whatever the thumbnails say
    g = duplicate_groups(thumbs, sha, threshold=3.0, chunk=16)
    assert g[0] == g[1] == g[2] and g[6] == g[7] and g[4] != g[5]
    assert len(set(g.tolist())) == 40 - 3
    labels = np.repeat(np.arange(4), 10)
    for i in (1, 2):
        labels[i] = labels[0]
    labels[7] = labels[6]
    folds = fold_ids(labels, 3, seed=1, groups=g)
    assert folds[0] == folds[1] == folds[2] and folds[6] == folds[7]
    for c in range(4):
        counts = np.bincount(folds[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 2  # one group of 3 cannot always be balanced to within 1
    # without groups it is the round-robin deal of the shuffled images, as before groups existed
    y = np.repeat(np.arange(4), [10, 7, 5, 9])
    rr = np.zeros(len(y), np.int64)
    r = np.random.default_rng(0)
    for c in range(4):
        idx = np.flatnonzero(y == c)
        rr[r.permutation(idx)] = np.arange(len(idx)) % 3
    assert np.array_equal(fold_ids(y, 3, seed=0), rr)


def test_fold_teacher_run_trains_members_on_the_other_folds(phantoms, tmp_path, capsys, monkeypatch):
    from train import stages
    from train.run import main, run

    seen = []
    fit = stages.fit_classifier
    monkeypatch.setattr(stages, "fit_classifier", lambda m, x, *a, **k: seen.append(len(x)) or fit(m, x, *a, **k))
    cfg = tiny_config(phantoms, tmp_path, teacher_folds=2, student_epochs=1, baseline=False)
    assert run(cfg) == 0
    out = tmp_path / "run"
    m = json.loads((out / "manifest.json").read_text())
    n_train = len(json.loads((out / "split.json").read_text())["train"])
    infos = [json.loads((out / f"teacher_member{i}.json").read_text()) for i in range(2)]
    assert [(i["folds"], i["left_out_fold"], i["fold_dups"]) for i in infos] == [(2, 0, 6.0), (2, 1, 6.0)]
    # with 2 folds the members trained on complementary halves of the training split
    assert len(seen) == 2 and sum(seen) == n_train and min(seen) >= n_train // 2 - 4
    logits = list(out.glob("teacher_logits_tta_oof2_*.npy"))
    assert len(logits) == 1 and np.load(logits[0]).shape == (n_train, 4)
    cl = m["results"]["teacher"]["cached_logits"]
    assert cl["out_of_fold"] and cl["folds"] == 2 and 0.0 <= cl["train_accuracy"] <= 1.0
    # members trained on folds, copied into another run, are not silently reused as whole-split members
    other = tmp_path / "other"
    other.mkdir()
    for f in ("teacher_member0.keras", "teacher_member0.json"):
        shutil.copy(out / f, other / f)
    argv = ["--data", cfg.data, "--test-data", cfg.test_data, "--image-size", "48", "--teacher-size", "32",
            "--teacher-members", "none:1,geo:1", "--cache-dir", cfg.cache_dir, "--out", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--teacher-folds 2" in err
    # and a fold count the members cannot cover is refused before any work
    assert main(argv[:-1] + [str(tmp_path / "o2"), "--teacher-folds", "3"]) == 2
    assert "--teacher-folds 3" in capsys.readouterr().err
    # so is a threshold so loose that every image is a duplicate of every other: one group, one fold
    assert main(argv[:-1] + [str(tmp_path / "o3"), "--teacher-folds", "2", "--near-dup-threshold", "1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "do not split into even folds" in err
    assert not list((tmp_path / "o3").glob("teacher_member*.keras"))


def test_presets_combine_in_order_and_flags_win():
    import argparse

    from train.config import Config, add_flags, from_args

    p = argparse.ArgumentParser()
    add_flags(p)
    cfg = from_args(p.parse_args(["--preset", "synthetic", "--preset", "tiny"]))
    # tiny's schedule overrides synthetic's; synthetic's data and image size stay.
    assert (cfg.student_width, cfg.student_epochs, cfg.patience) == (0.25, 60, 0)
    assert (cfg.data, cfg.image_size) == ("data/synthetic/Training", 64)
    cfg = from_args(p.parse_args(["--preset", "tiny", "--student-epochs", "5"]))
    assert (cfg.student_width, cfg.student_epochs) == (0.25, 5)
    # The parameter count the docs quote for the tiny student, at the real-data image size.
    assert build_student(96, 4, width=cfg.student_width).count_params() == 16_708
    # px64 changes only the student's input and schedule: the teacher keeps the default 128 px.
    cfg = from_args(p.parse_args(["--preset", "px64"]))
    assert (cfg.image_size, cfg.teacher_size, cfg.student_epochs, cfg.patience) == (64, 128, 36, 0)
    assert (cfg.data, cfg.student_width) == (Config().data, 1.0)
    # The MACs the docs quote for it (16.2 M at the default 96 px).
    assert count_macs(build_student(64, 4)) == 7_212_032
