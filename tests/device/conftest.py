"""Device tests run in .venv-device: tflite-runtime (or LiteRT), numpy, pillow - no TensorFlow."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_int8.tflite"


def _copy(src, tmp_path, name):
    dst = tmp_path / name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


@pytest.fixture
def model(tmp_path):
    """A private copy of the v1 fixture model + sidecar (tests may tamper with it): no OOD statistics."""
    return _copy(FIXTURE, tmp_path, "model.tflite")


@pytest.fixture
def ood_model(tmp_path):
    """Today's device model shape: contract v2, probabilities + features, OOD statistics in the sidecar."""
    return _copy(FIXTURE.with_name("tiny_ood_int8.tflite"), tmp_path, "ood_model.tflite")


def classify(*args, cwd=ROOT):
    """Run the real CLI in a fresh process; return (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "device.classify", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=120)
    return p.returncode, p.stdout, p.stderr
