"""Style groups and the shortcut probe (train/groups.py, bench/groups.py): numpy parts, on made-up features."""
import numpy as np

from bench.groups import score
from train.groups import assign, kmeans, shortcut_probe, table


def test_kmeans_finds_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float64)
    f = np.concatenate([c + rng.normal(0, 0.5, (50, 2)) for c in centres])
    a = assign(f, kmeans(f, 3, seed=1))
    # every true cluster lands in one group, and the three groups differ
    assert all(len(set(a[i * 50:(i + 1) * 50])) == 1 for i in range(3)) and len(set(a)) == 3
    assert np.array_equal(kmeans(f, 3, seed=1), kmeans(f, 3, seed=1))


def test_the_probe_reads_a_look_that_gives_the_class_away_and_not_one_that_does_not():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    fit, ev = np.arange(200), np.arange(200, 400)
    confounded = shortcut_probe(y, y.copy(), fit, ev, 4, 4)          # the group is the class
    assert confounded["accuracy"] == 1.0 and confounded["balanced_accuracy"] == 1.0
    unrelated = shortcut_probe(y, rng.integers(0, 4, 400), fit, ev, 4, 4)
    assert unrelated["balanced_accuracy"] < 0.4                       # about chance (0.25)
    t = table(y, y, 4, 4)
    assert t.sum() == 400 and np.count_nonzero(t - np.diag(np.diag(t))) == 0


def test_bench_groups_scores_the_tumours_in_the_no_tumour_look_and_the_worst_cell():
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    y = np.array([0] * 10 + [2] * 10 + [1] * 12)
    g = np.array([1] * 10 + [1] * 10 + [0] * 12)
    pred = y.copy()
    pred[:4] = 2                    # 4 of the 10 gliomas in group 1 called "no tumour"
    look = np.array([False, True])  # group 1 looks like the no-tumour collection
    r = score(pred, y, g, look, classes)
    assert r["tumours_in_no_tumour_look"] == {"n": 10, "found": 0.6}
    assert r["worst_cell"]["cell"] == "glioma:g1" and r["worst_cell"]["recall"] == 0.6


def test_style_groups_see_the_files_looks_not_the_models_standardised_pixels(phantoms, tmp_path, monkeypatch):
    """The groups describe the data (Q19), so they are taken from contract-v2 pixels, whatever contract training
    writes: under v3 the brightness that sets the collections apart is standardised away."""
    import train.groups as groups
    from device.preprocess import CONTRACT_VERSION, load_image
    from tests.conftest import tiny_config
    from train.data import prepare

    cfg = tiny_config(phantoms, tmp_path)
    splits = prepare(cfg)
    seen = []
    monkeypatch.setattr(groups, "style_features", lambda x, cache_dir: seen.append(x) or np.eye(len(x), 8))
    groups.style_groups(splits, cfg, k=2)
    first = splits.images.paths[0]
    assert groups.STYLE_CONTRACT == 2 and CONTRACT_VERSION != groups.STYLE_CONTRACT
    assert np.array_equal(seen[0][0], load_image(first, groups.FEATURE_SIZE, contract=2))
