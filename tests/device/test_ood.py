"""The out-of-distribution flag: the statistics, the sidecar that carries them, and the CLI that reports them."""
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from device import ood
from device.runtime import Classifier, ClassifierOptions
from tests.device.conftest import classify


def _features(rng, n, shift=0.0):
    """4 Gaussian classes in 32 dimensions, correlated, all non-negative like pooled ReLU6 features."""
    means = np.abs(rng.normal(2, 1, (4, 32)))
    mix = rng.normal(0, 0.3, (32, 32))
    y = rng.integers(0, 4, n)
    return np.clip(means[y] + rng.normal(0, 1, (n, 32)) @ mix + shift, 0, 6), y


def test_the_threshold_keeps_its_share_of_validation_and_far_features_score_above_1():
    rng = np.random.default_rng(0)
    train, y = _features(rng, 3000)
    draws, _ = _features(np.random.default_rng(0), 5000)   # same classes (same seed), fresh draws
    val, fresh = draws[1000:3000], draws[3000:]
    entry = ood.fit(train, y, val, 4)
    json.dumps(entry)                                    # travels in the JSON sidecar
    scorer = ood.Scorer(entry, 4)
    # on features the threshold never saw, it keeps its share (2,000 draws: +-1 point)
    assert abs((scorer.score(fresh) <= 1).mean() - ood.KEEP) < 0.015
    shifted, _ = _features(np.random.default_rng(0), 1000, shift=1.5)
    assert (scorer.score(shifted) > 1).mean() > 0.5              # another source: most are flagged
    assert (scorer.score(np.full((5, 32), 6.0)) > 1).all()       # saturated features
    assert (scorer.score(np.zeros((5, 32))) > 1).all()           # dead features
    assert np.allclose(scorer.score(val[:3]), [scorer.score(v)[0] for v in val[:3]])


def test_cli_reports_the_flag_in_every_format_and_rejects_on_request(ood_model, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / f"s{i}.png")
    Image.new("L", (1, 1), 128).save(tmp_path / "grey.png")
    code, out, err = classify("--model", ood_model, "--json", tmp_path)
    rows = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and len(rows) == 7, err
    assert all(isinstance(r["in_distribution"], bool) and 0 < r["ood_score"] < 1e6 for r in rows)
    assert all(r["in_distribution"] == (r["ood_score"] <= 1) for r in rows)
    code, out, _ = classify("--model", ood_model, "--csv", tmp_path)
    table = list(csv.DictReader(io.StringIO(out)))
    assert [t["in_distribution"] for t in table] == [str(r["in_distribution"]).lower() for r in rows]
    code, out, _ = classify("--model", ood_model, "--json", "--reject-ood", tmp_path)
    rejected = [json.loads(x) for x in out.splitlines()]
    for r, x in zip(rows, rejected):
        assert x["label"] == (r["label"] if r["in_distribution"] else "uncertain")
    clf = Classifier(ood_model, ClassifierOptions(reject_ood=True))
    for r in rows:
        a = clf.assess(r["path"])
        assert a.in_distribution == r["in_distribution"] and abs(a.ood_score - r["ood_score"]) < 1e-3
        assert (clf.classify(r["path"]) == []) == (not r["in_distribution"])


def test_reject_ood_with_a_model_without_statistics_is_one_line(model, tmp_path):
    Image.new("L", (20, 20), 100).save(tmp_path / "x.png")
    code, out, err = classify("--model", model, "--reject-ood", tmp_path / "x.png")
    assert code == 2 and "no out-of-distribution statistics" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("change, says", [
    ({"threshold": 0}, "'ood.threshold' must be a finite number from 1e-20 to 1e20"),
    ({"threshold": 1e-300}, "'ood.threshold' must be a finite number"),   # would make every score Infinity
    ({"features": 2}, "'ood.features' must be an integer larger than the number of labels"),
    ({"whiten": 5}, "'ood.whiten' must be a base64 string"),
    ({"whiten": "AAAA"}, "out-of-distribution statistics are unreadable"),
    ({"features": 65}, "model tensors do not match its metadata"),
])
def test_a_broken_ood_entry_is_one_line(ood_model, tmp_path, change, says):
    side = ood_model.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["ood"].update(change)
    side.write_text(json.dumps(meta))
    Image.new("L", (20, 20), 100).save(tmp_path / "x.png")
    code, _, err = classify("--model", ood_model, tmp_path / "x.png")
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
