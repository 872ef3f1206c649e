"""`python -m train` end to end on tiny phantoms: what a run writes, that it learns, resume, teacher reuse, and one
clear line for every bad flag."""
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT, tiny_config
from train.models import build_student, count_macs


def test_run_writes_models_reports_and_learns_well_above_chance(tiny_run):
    m = json.loads((tiny_run / "manifest.json").read_text())
    assert set(m["results"]) == {"teacher", "student", "baseline"}
    # four balanced classes: chance is 25%; the 12-epoch phantom students must be far above it
    for name in ("student", "baseline"):
        assert m["results"][name]["test"]["accuracy"] >= 0.6, (name, m["results"][name]["test"]["accuracy"])
        assert m["results"][name]["input_size"] == 48 and len(m["results"][name]["epoch_seconds"]) == 12
    assert m["kd_gain_test_accuracy"] == pytest.approx(
        m["results"]["student"]["test"]["accuracy"] - m["results"]["baseline"]["test"]["accuracy"])
    assert {"config", "data_report", "git_commit", "versions", "seconds"} <= set(m)
    assert m["seconds"]["total"] >= m["seconds"]["student"] > 0
    for f in ("confusion.png", "curves.png", "split.json", "data_report.json", "teacher.keras", "student.keras"):
        assert (tiny_run / f).is_file(), f
    # The ensemble teacher: each member saved with its record and scored alone, the average saved as teacher.keras.
    assert [(e["augment"], e["epochs"]) for e in m["results"]["teacher"]["members"]] == [("none", 1), ("geo", 1)]
    assert json.loads((tiny_run / "teacher_member1.json").read_text())["augment"] == "geo"
    # the default recipe: the teacher teaches through the view cache (2 views per image here), the twin too
    vc = m["results"]["teacher"]["view_cache"]
    assert m["results"]["teacher"]["input_size"] == 32 and vc["recipe"]["k"] == 2
    assert vc["views"] == 2 * sum(m["data_report"]["split"]["train"].values()) and 0 < vc["label_agreement_plain"] <= 1
    assert keras.models.load_model(tiny_run / "teacher.keras").get_layer("mean_logits") is not None
    # the best epoch on validation is what is kept: the saved student scores its best epoch's validation accuracy
    from train.fit import read_history

    for name in ("student", "baseline"):
        best = max(read_history(tiny_run / "stages" / name)["val_accuracy"])
        assert m["results"][name]["val"]["accuracy"] == pytest.approx(best, abs=1e-6), name
    assert keras.models.load_model(tiny_run / "student.keras").output_shape == (None, 4)  # no custom objects
    assert not list(tiny_run.rglob(".*.tmp")) and not list(tiny_run.glob(".*.keras"))  # atomic writes left nothing


def test_given_teacher_at_its_own_resolution_on_the_images_themselves(tiny_run, phantoms, tmp_path):
    """--views 0 (classic image-logit KD, one identity view per image) from a --teacher of another input size: its
    logits come from its own resolution's pixels, cached in the run folder."""
    from train.run import main

    out = tmp_path / "run"
    args = ["--data", str(phantoms / "Training"), "--test-data", str(phantoms / "Testing"), "--image-size", "48",
            "--cache-dir", str(tmp_path / "cache"), "--teacher", str(tiny_run / "teacher.keras"),
            "--views", "0", "--student-epochs", "1", "--batch-size", "16",
            "--no-baseline", "--out", str(out)]
    assert main(args) == 0
    m = json.loads((out / "manifest.json").read_text())
    vc = m["results"]["teacher"]["view_cache"]
    assert m["config"]["views"] == 0 and len(list(out.glob("teacher_logits_identity-*.npy"))) == 1
    assert vc["views"] == sum(m["data_report"]["split"]["train"].values()) and vc["recipe"].startswith("identity")
    assert set(m["results"]) == {"teacher", "student"} and len(m["epoch_seconds"]["student"]) == 1
    # the 32 px teacher scored on 32 px pixels (as in its own run), not on resized 48 px ones
    ref = json.loads((tiny_run / "manifest.json").read_text())["results"]["teacher"]
    assert m["results"]["teacher"]["input_size"] == 32
    assert m["results"]["teacher"]["test"]["accuracy"] == ref["test"]["accuracy"]


def test_finished_members_are_reused_only_when_trained_as_asked(tiny_run, tmp_path, capsys):
    from train.run import main

    cfg = json.loads((tiny_run / "manifest.json").read_text())["config"]
    common = ["--preset", "ensemble", "--data", cfg["data"], "--test-data", cfg["test_data"], "--image-size", "48",
              "--teacher-size", "32",
              "--cache-dir", cfg["cache_dir"], "--student-epochs", "1", "--no-baseline", "--batch-size", "16",
              "--patience", str(cfg["patience"])]
    other = tmp_path / "other"
    other.mkdir()
    for ext in ("keras", "json"):
        shutil.copy(tiny_run / f"teacher_member1.{ext}", other / f"teacher_member0.{ext}")
    # the geo member in a slot that wants another augmentation and length: refused, one line
    assert main([*common, "--teacher-members", "flip:2", "--out", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "augmentation geo (this run wants flip), epochs 1 (this run wants 2)" in err
    # a member an earlier version trained with an option that no longer exists is not reused either
    record = other / "teacher_member0.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "arch": "res"}))
    assert main([*common, "--teacher-members", "geo:1", "--out", str(other)]) == 2
    assert "arch res (an option this version no longer has)" in capsys.readouterr().err
    # the right slot reuses it: no member trains again
    record.write_text(json.dumps({**json.loads(record.read_text()), "arch": "dw"}))
    assert main([*common, "--teacher-members", "geo:1", "--out", str(other)]) == 0
    assert "member 0: loading finished" in capsys.readouterr().out
    assert not (other / "stages" / "teacher_member0").exists()


@pytest.mark.parametrize("argv, says", [
    (["--teacher-members", "flip:14,rotate:3"], "bad teacher member 'rotate:3'"),
    (["--teacher-members", "flip:0"], "AUGMENT:EPOCHS"),
    (["--alpha", "1.5"], "--alpha 1.5"),
    (["--patience", "-1"], "--patience -1"),
    (["--views", "0", "--unlabeled", "somewhere"], "--unlabeled: unlabeled scans teach through the view cache"),
    (["--temperature", "0"], "--temperature 0"),
    (["--teacher", "missing.keras"], "--teacher: model not found: missing.keras"),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"], "--val-fraction 0.6"),
    # flags that would do nothing under the chosen recipe (issue 42)
    (["--teacher-weights", "imagenet"], "--teacher-weights is for --teacher-recipe efficientnetb0 only"),
    (["--teacher-members", "flip:3"], "--teacher-members shapes the ensemble teacher only"),
    (["--preset", "ensemble", "--teacher-head-epochs", "2"], "--teacher-head-epochs is the EfficientNet-Lite"),
    (["--test-data", "t", "--test-fraction", "0.2"], "--test-fraction holds out a test split"),
])
def test_a_bad_flag_is_one_line_exit_2_before_any_work(argv, says, tmp_path, capsys):
    from train.run import main

    assert main([*argv, "--data", str(tmp_path / "unused"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says in err and err.startswith("error: ")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_killed_run_resumes_from_last_epoch(phantoms, tmp_path, monkeypatch):
    """A student stage killed after epoch 2 restarts at epoch 3, not from scratch."""
    from train import fit
    from train.data import prepare
    from train.student import train_set

    cfg = tiny_config(phantoms, tmp_path, student_epochs=4)
    data = train_set(prepare(cfg), cfg)
    data.x, data.y, data.w = data.x[:64], data.y[:64], data.w[:64]  # the epochs only need to exist

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated kill")

    class Seen(keras.callbacks.Callback):
        epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            Seen.epochs.append(epoch)

    def with_callback(cb):
        real = fit.callbacks
        monkeypatch.setattr(fit, "callbacks", lambda d, p: (lambda timer, cbs: (timer, cbs + [cb]))(*real(d, p)))
        return real

    from train.views import identity

    strategy = tf.distribute.get_strategy()
    cache = identity(data.x, np.zeros((len(data.x), 4), np.float32), "test")
    ones = np.ones(len(data.x), np.float32)

    def train():
        fit.fit_on_views(build_student(48, 4, 0.25), data, cache, cache.logits, ones, 1, cfg, teacher=True,
                         stage_dir=tmp_path / "stage", strategy=strategy)

    real = with_callback(Kill())
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(fit, "callbacks", real)
    with_callback(Seen())
    train()
    assert Seen.epochs == [2, 3]


def test_teacher_member_specs_parse_once_into_typed_members():
    from train.config import Config, ConfigError, Member

    assert Config().members == (Member("flip", 14), Member("flip", 14), Member("geo", 24))
    with pytest.raises(ConfigError, match="'2'"):   # one meaning for --teacher-epochs: no member count form
        Config(teacher_members="2").members  # noqa: B018
    assert Config(teacher_members=" flip:3, geo:2").members == (Member("flip", 3), Member("geo", 2))
    with pytest.raises(ConfigError, match="'flip:14:res'"):
        Config(teacher_members="flip:14:res").members  # noqa: B018 (the other CNN family was removed)


def test_presets_change_only_what_differs_from_the_defaults():
    from train.config import PRESETS, Config

    same = [(name, k) for name, values in PRESETS.items() for k, v in values.items() if getattr(Config(), k) == v]
    assert not same, same


def test_presets_combine_in_order_and_flags_win():
    import argparse

    from train.config import Config, add_flags, from_args

    p = argparse.ArgumentParser()
    add_flags(p)
    cfg = from_args(p.parse_args(["--preset", "synthetic", "--preset", "tiny"]))
    # tiny's schedule overrides synthetic's; synthetic's data, image size and patience (tiny leaves it) stay.
    assert (cfg.student_width, cfg.student_epochs, cfg.patience) == (0.25, 60, 6)
    assert (cfg.data, cfg.image_size) == ("data/synthetic/Training", 64)
    cfg = from_args(p.parse_args(["--preset", "tiny", "--student-epochs", "5"]))
    assert (cfg.student_width, cfg.student_epochs) == (0.25, 5)
    # The parameter count the docs quote for the tiny student, at the real-data image size.
    assert build_student(96, 4, width=cfg.student_width).count_params() == 16_708
    # px64 changes only the student's input: the teacher keeps the default 128 px.
    cfg = from_args(p.parse_args(["--preset", "px64"]))
    assert (cfg.image_size, cfg.teacher_size, cfg.student_epochs, cfg.patience) == (64, 128, 40, 0)
    # the recipe before the view cache, by name
    cfg = from_args(p.parse_args(["--preset", "cached-logits"]))
    assert (cfg.views, cfg.student_epochs, cfg.temperature, cfg.alpha) == (0, 18, 4.0, 0.6)
    assert (cfg.data, cfg.student_width) == (Config().data, 1.0)
    assert count_macs(build_student(64, 4)) == 7_212_032 and count_macs(build_student(96, 4)) == 16_225_792


def test_student_is_small_and_int8_friendly():
    s = build_student(96, 4)
    assert s.count_params() == 215_620
    allowed = (keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
               keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.GlobalAveragePooling2D,
               keras.layers.Dropout, keras.layers.Dense)
    assert all(isinstance(layer, allowed) for layer in s.layers), [type(la).__name__ for la in s.layers]


def test_augment_levels():
    from train import fit

    x = np.random.default_rng(0).integers(0, 255, (64, 12, 12)).astype(np.uint8)
    (xb, _), = fit.make_dataset(x, np.zeros(64, np.int32), batch=64, augment="flip", seed=1).take(1)
    xb, xf = xb.numpy()[..., 0], x.astype(np.float32)
    same = [np.array_equal(a, b) for a, b in zip(xb, xf)]
    mirrored = [np.array_equal(a, b[:, ::-1]) for a, b in zip(xb, xf)]
    # "flip" only mirrors left/right (so flip-TTA teacher logits stay valid), and does so for some images only.
    assert all(s or f for s, f in zip(same, mirrored)) and any(same) and any(mirrored)
    (xn, _), = fit.make_dataset(x, np.zeros(64, np.int32), batch=64, augment="none").take(1)
    np.testing.assert_array_equal(xn.numpy()[..., 0], xf)
    # "geo" moves the anatomy but never re-exposes it: a black scan stays black, the border it uncovers is black
    black = np.zeros((64, 12, 12), np.uint8)
    (xg, _), = fit.make_dataset(black, np.zeros(64, np.int32), batch=64, augment="geo", seed=1).take(1)
    assert float(np.abs(xg.numpy()).max()) == 0.0
    (xg, _), = fit.make_dataset(x, np.zeros(64, np.int32), batch=64, augment="geo", seed=1).take(1)
    assert not np.array_equal(xg.numpy()[..., 0], xf) and float(xg.numpy().min()) == 0.0
    with pytest.raises(ValueError, match="augment level"):
        fit.augmenter("full", 0)


@pytest.mark.slow
def test_pretrained_lite0_teacher_recipe_runs_end_to_end(converted_weights, tmp_path):
    """The default real-data teacher: ImageNet EfficientNet-Lite0, head warm-up then fine-tuning with BatchNorm
    frozen (one epoch each on 32 images: plumbing only), distilled into the student."""
    from train.phantom import write_dataset
    from train.run import run

    data = write_dataset(tmp_path / "few", n_train=8, n_test=4, size=48, seed=2)
    cfg = tiny_config(data, tmp_path, teacher_recipe="lite0", teacher_size=32, teacher_epochs=1, student_epochs=1,
                      baseline=False, batch_size=8, cache_dir=str(converted_weights.parent))
    assert run(cfg) == 0
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["results"]["teacher"]["params"] == 3_418_148 and "members" not in m["results"]["teacher"]
    assert len(m["epoch_seconds"]["teacher_head"]) == 1 and len(m["epoch_seconds"]["teacher"]) == 1
    teacher = keras.models.load_model(tmp_path / "run" / "teacher.keras")
    frozen = [la for la in teacher.get_layer("lite0_backbone").layers if isinstance(la, keras.layers.BatchNormalization)]
    assert frozen and not any(la.trainable for la in frozen)  # BatchNorm kept its ImageNet statistics
    assert (tmp_path / "run" / "stages" / "teacher_head" / "head.weights.h5").is_file()  # a re-run skips the warm-up


def test_efficientnetb0_recipe_builds_a_grayscale_teacher():
    """The recipe for users with their own ImageNet weights (none here): the network and its input contract."""
    from train.models import build_efficientnetb0

    m = build_efficientnetb0(32, 4)
    assert m.input_shape == (None, 32, 32, 1) and m.output_shape == (None, 4) and m.count_params() > 4_000_000


VIEW_STEP = r"""
import sys, numpy as np, tensorflow as tf
mirrored = sys.argv[1] == "mirrored"
if mirrored:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from train import fit
from train.distill import Distiller
strategy = fit.make_strategy("mirrored" if mirrored else "none")
assert strategy.num_replicas_in_sync == (2 if mirrored else 1)
rng = np.random.default_rng(0)
views, images = rng.uniform(0, 255, (8, 12, 12, 1)).astype("f4"), rng.uniform(0, 255, (8, 12, 12, 1)).astype("f4")
target, mask = rng.normal(0, 2, (8, 4)).astype("f4"), np.ones(8, "f4")
labels, weights = (np.arange(8) % 4).astype("i4"), np.ones(8, "f4")
ds = tf.data.Dataset.from_tensors(((views, images), (target, mask, labels, weights)))
with strategy.scope():
    keras.utils.set_random_seed(1)   # no BatchNorm, no dropout: one device and two must agree exactly
    student = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Rescaling(1 / 255.0),
                                keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    d = Distiller(student, temperature=2.0, alpha=0.3)
    d.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
h = d.fit(ds, epochs=1, verbose=0)
np.save(sys.argv[2], np.concatenate([w.numpy().ravel() for w in student.weights]))
print("LOSS", h.history["loss"][0])
"""


@pytest.mark.slow
def test_the_view_distiller_takes_the_same_step_on_two_devices_as_on_one(tmp_path):
    """Issue 42: the shipped recipe's distiller summed gradients over replicas (n devices, n times the step).
    Also the multi-device smoke test: the one distiller trains a step under MirroredStrategy."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = {}
    procs = {m: subprocess.Popen([sys.executable, "-c", VIEW_STEP, m, str(tmp_path / f"{m}.npy")], cwd=tmp_path,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in ("one", "mirrored")}
    for m, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert "LOSS" in stdout, stderr[-2000:]
        out[m] = (float(stdout.split("LOSS")[1].split()[0]), np.load(tmp_path / f"{m}.npy"))
    init_free = out["one"][1] - out["mirrored"][1]
    assert abs(out["one"][0] - out["mirrored"][0]) < 1e-4, (out["one"][0], out["mirrored"][0])
    assert np.abs(init_free).max() < 1e-5, np.abs(init_free).max()
