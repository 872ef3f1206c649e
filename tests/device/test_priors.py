"""A site's class priors re-estimated by EM (device/priors.py; --adapt)."""
import json

import numpy as np
import pytest

from device.priors import adjust, em_priors
from tests.device.conftest import classify


def test_em_recovers_a_known_shift_in_the_class_priors():
    """Posteriors of a known model (4 Gaussian classes, trained under equal priors) on scans drawn with priors
    0.7 / 0.1 / 0.1 / 0.1: EM finds those priors, and adjusting by them raises accuracy."""
    rng = np.random.default_rng(0)
    means = np.eye(4) * 2.0
    true = np.array([0.7, 0.1, 0.1, 0.1])
    y = rng.choice(4, 6000, p=true)
    x = means[y] + rng.normal(0, 1, (6000, 4))
    logits = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)   # exact posteriors under equal priors
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    prior = em_priors(probs)
    assert np.abs(prior - true).max() < 0.03, prior
    assert (adjust(probs, prior).argmax(1) == y).mean() > (probs.argmax(1) == y).mean()
    assert em_priors(probs[y == 2]).argmax() == 2                      # a site with one class only
    np.testing.assert_allclose(adjust(probs, [0.25] * 4), probs, rtol=1e-6)


def test_the_cli_answers_under_the_sites_priors(ood_model, tmp_path):
    from PIL import Image

    site, scans = tmp_path / "site", tmp_path / "scans"
    site.mkdir()
    scans.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(site / f"s{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(scans / f"x{i}.png")
    code, raw, _ = classify("--model", ood_model, "--json", scans)
    code2, adapted, err = classify("--model", ood_model, "--json", "--adapt", site, scans)
    assert code == code2 == 0 and "class priors re-estimated from 6 scans" in err, err
    line = err.split("class priors re-estimated from 6 scans: ")[1].splitlines()[0]
    prior = np.array([float(part.split()[-1]) for part in line.split(", ")])
    for r, a in zip(map(json.loads, raw.splitlines()), map(json.loads, adapted.splitlines())):
        expect = adjust(np.array(list(r["probabilities"].values())), prior)
        assert np.allclose(list(a["probabilities"].values()), expect, atol=0.02), (r, a)
    code, _, err = classify("--model", ood_model, "--adapt", tmp_path / "nothing", scans)
    assert code == 2 and "--adapt" in err


@pytest.mark.parametrize("bad", [[], [np.zeros((1, 1), np.float32)]])
def test_adapt_with_nothing_readable_is_an_image_error(ood_model, bad):
    from device.preprocess import ImageError
    from device.runtime import Classifier

    with Classifier(ood_model) as clf, pytest.raises(ImageError, match="no readable scan"):
        clf.adapt(bad)
