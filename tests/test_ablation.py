"""The ablation harness pairs a distilled student only with a scratch twin trained exactly like it (issue 42)."""
import pytest

from experiments.ablation import with_baseline_from


def _manifest(**config):
    base = dict(out="artifacts/a", views=8, view_recipe="", alpha=0.3, temperature=1.0, seed=1, teacher="t.keras")
    return {"config": base | config, "results": {"student": {}, "baseline": {"test": {"accuracy": 0.9}}}}


def test_a_twin_is_reused_across_teachers_and_temperatures_only():
    new = _manifest(out="artifacts/b", teacher="other.keras", temperature=4.0)
    assert with_baseline_from(new, _manifest())["baseline_from"] == "artifacts/a"
    for change in ({"alpha": 0.6}, {"views": 16}, {"view_recipe": "area=0.35:1"}, {"seed": 2}):
        with pytest.raises(SystemExit, match=list(change)[0]):
            with_baseline_from(_manifest(out="artifacts/b", **change), _manifest())
