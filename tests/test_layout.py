"""The import rules that keep the product small: device/ stands alone on the board, and nothing in the product
depends on the research code under experiments/."""
import ast
from pathlib import Path

from tests.conftest import ROOT

PRODUCT = ("device", "train", "convert", "bench")
OWN = PRODUCT + ("experiments", "tests", "tools")


def imports(path: Path, package: str) -> set[str]:
    """Top-level names of every module a file of `package` imports (a relative import names the package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else node.module.split(".")[0])
    return names


def files(package: str) -> list[Path]:
    found = sorted((ROOT / package).rglob("*.py"))
    assert found, package
    return found


def test_no_product_module_imports_experiments():
    bad = [str(f.relative_to(ROOT)) for p in PRODUCT for f in files(p) if "experiments" in imports(f, p)]
    assert not bad, bad


def test_device_imports_nothing_of_the_project_outside_itself():
    bad = {str(f.relative_to(ROOT)): sorted((imports(f, "device") & set(OWN)) - {"device"}) for f in files("device")}
    assert not any(bad.values()), bad


def test_the_rules_see_a_violation(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("import os.path\nfrom train.config import Config\nfrom . import metadata\n"
                 "def g():\n    import experiments.ablation\n")
    assert imports(f, "device") == {"os", "train", "device", "experiments"}


def _make_lines(*args) -> dict[str, str]:
    """The command `make -n all ...` would run for each stage, keyed by its module."""
    import subprocess

    out = subprocess.run(["make", "-n", "-B", "all", *args], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return {line.split(" -m ")[1].split()[0]: line for line in out.splitlines() if " -m " in line}


def test_make_flags_reach_only_their_own_stage():
    lines = _make_lines("ARGS=--student-epochs 5")
    assert lines["train"].endswith("--student-epochs 5")
    assert "--student-epochs" not in lines["convert"] + lines["convert.parity"]
    lines = _make_lines("TRAIN_ARGS=--student-epochs 4", "CONVERT_ARGS=--calibration-size 50",
                        "PARITY_ARGS=--min-agreement 90")
    assert lines["train"].endswith("--student-epochs 4") and "--calibration-size" not in lines["train"]
    assert lines["convert"].endswith("--calibration-size 50") and lines["convert.parity"].endswith("--min-agreement 90")


def test_train_with_no_flags_trains_the_phantoms_where_every_stage_reads(monkeypatch, capsys):
    import train.run
    from train.config import PRESETS, RUN_DIR

    seen = []
    monkeypatch.setattr(train.run, "run", lambda cfg: seen.append(cfg) or 0)
    assert train.run.main([]) == 0
    assert seen[0].out == RUN_DIR and seen[0].data == "data/synthetic/Training"
    assert seen[0].test_data == PRESETS["synthetic"]["test_data"]
    assert "synthetic phantoms" in capsys.readouterr().out


def test_every_later_stage_reads_that_run_folder_by_default(tmp_path):
    """Run with no --run where no run exists: each stage's one-line error names artifacts/synthetic."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cases = {"convert": [], "convert.parity": [], "convert.ship": ["--dest", str(tmp_path / "models")],
             "bench": [], "bench.external": ["--data", str(ROOT / "tests")], "bench.explain": []}
    procs = {m: subprocess.Popen([sys.executable, "-m", m, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m, args in cases.items()}
    for m, p in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2 and "artifacts/synthetic" in err.strip().splitlines()[-1], (m, err[-300:])
