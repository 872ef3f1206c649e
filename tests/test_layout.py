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
