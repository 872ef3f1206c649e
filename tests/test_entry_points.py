"""Every `python -m` entry point answers a missing run, a missing data folder or a bad flag with one line and exit 2,
never a traceback (issue 42, item 5). The processes run side by side: each imports TensorFlow."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT

MISSING = "/nonexistent-run-folder"
CASES = {
    "train": ["--data", MISSING],
    "train.data": ["--data", MISSING],
    "train.groups": ["--data", MISSING],
    "convert": ["--run", MISSING],
    "convert.parity": ["--run", MISSING],
    "convert.ship": ["--run", MISSING],
    "bench": ["--run", MISSING],
    "bench.external": ["--run", MISSING, "--data", str(ROOT / "tests")],
    "bench.explain": ["--run", MISSING],
    "bench.groups": ["--data", MISSING, "--models", str(ROOT / "tests/fixtures/tiny_int8.tflite")],
    "experiments.split_unlabeled": ["--data", MISSING, "--out", MISSING + "/out"],
    "experiments.teacher_bn_phase": ["--data", MISSING, "--teacher", MISSING + "/t.keras"],
    "experiments.pooled_gain": ["--bogus-flag"],
    "experiments.ablation": ["--bogus-flag"],
    "experiments.screen_threshold": ["--run", MISSING, "--model", "x.tflite"],
    "experiments.ood_auroc": ["--run", MISSING, "--data", MISSING],
    "experiments.prior_shift": ["--data", MISSING],
    "experiments.bn_adapt": ["--model", MISSING + "/student.keras", "--data", MISSING],
    "device.classify": ["--model", MISSING + "/m.tflite", "x.png"],
    "device.serve": ["--model", MISSING + "/m.tflite", "--port", "0"],
}


@pytest.fixture(scope="module")
def answers():
    procs = {m: subprocess.Popen([sys.executable, "-m", m, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m, args in CASES.items()}
    return {m: (p.wait(300), *p.communicate()) for m, p in procs.items()}


@pytest.mark.parametrize("module", sorted(CASES))
def test_a_missing_run_data_folder_or_bad_flag_is_one_line_and_exit_2(answers, module):
    code, out, err = answers[module]
    lines = [ln for ln in err.splitlines() if ln.strip() and not _library_noise(ln)]
    assert code == 2 and "Traceback" not in err + out, (module, code, err[-800:])
    assert lines and (lines[-1].startswith("error:") or ": error:" in lines[-1]), (module, lines[-3:])


def _library_noise(line: str) -> bool:
    """TensorFlow's start-up banners (oneDNN, CPU features) go to stderr before any of our code runs."""
    return any(w in line for w in ("oneDNN", "cpu_feature_guard", "rebuild TensorFlow", "WARNING: All log",
                                   "E0000", "W0000", "I0000", "absl::InitializeLog"))
