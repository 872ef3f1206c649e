"""Device tests run in .venv-device: tflite-runtime (or LiteRT), numpy, pillow - no TensorFlow."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_int8.tflite"


@pytest.fixture
def model(tmp_path):
    """A private copy of the fixture model + sidecar (tests may tamper with it)."""
    dst = tmp_path / "model.tflite"
    shutil.copy(FIXTURE, dst)
    shutil.copy(FIXTURE.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def classify(*args, cwd=ROOT):
    """Run the real CLI in a fresh process; return (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "device.classify", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=120)
    return p.returncode, p.stdout, p.stderr
