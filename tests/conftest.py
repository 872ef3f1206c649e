"""Shared fixtures for the training/convert tests (run in .venv).

Everything is tiny: 32-48 px phantoms, a few epochs. One session-scoped training run (`tiny_run`) serves every
test that needs a trained teacher, students or a run folder; other runs reuse its teacher via --teacher.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(items):
    """Whatever needs the trained tiny run is end to end: `slow` (make test-fast skips it), and `tiny_run` (make test
    runs those tests in one process, beside the others, so that the run is trained once)."""
    for item in items:
        if {"tiny_run", "converted"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.tiny_run)


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory):
    from train.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantoms"), n_train=120, n_test=25, size=64, seed=1)


def tiny_config(data_root: Path, out: Path, **kw):
    from train.config import Config

    base = dict(data=str(data_root / "Training"), test_data=str(data_root / "Testing"), image_size=48, teacher_size=32,
                cache_dir=str(out / "cache"), out=str(out / "run"), teacher_epochs=1, student_epochs=12,
                batch_size=16, patience=20, seed=3, augment="flip", student_lr=0.01, views=2, temperature=1.0,
                teacher_recipe="ensemble", teacher_lr=3e-3, teacher_dropout=0.2, teacher_members="none:1,geo:1",
                # the 1-epoch teacher only exercises the plumbing; the student must learn from labels
                alpha=0.9)
    base.update(kw)
    return dataclasses.replace(Config(), **base)


@pytest.fixture(scope="session")
def converted_weights(tmp_path_factory):
    """The EfficientNet-Lite0 ImageNet weights converted once for the session (their folder is a cache_dir)."""
    from train.pretrained import imagenet_weights

    return imagenet_weights(tmp_path_factory.mktemp("lite0"))


@pytest.fixture(scope="session")
def untrained_teacher(tmp_path_factory) -> Path:
    """A saved teacher whose answers do not matter (cache and plumbing tests): no training, so such tests need not
    wait for the tiny run."""
    from train.models import build_student

    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    build_student(32, 4, 0.25).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_run(phantoms, tmp_path_factory):
    """One full (tiny) training run: a two-member teacher ensemble, the distilled student, the baseline."""
    from train.run import run

    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(phantoms, out)
    assert run(cfg) == 0
    return Path(cfg.out)


@pytest.fixture(scope="session")
def converted(tiny_run):
    """The int8 student of the tiny run (converted in-process; the CLI uses one process per variant)."""
    from convert.tflite import convert_variant

    r = convert_variant(tiny_run, "student_int8", calibration_size=40, seed=0)
    return tiny_run, r
