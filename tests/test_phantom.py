import hashlib

import numpy as np

from train.phantom import CLASSES, phantom, write_dataset


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_generator_is_deterministic(tmp_path):
    a = write_dataset(tmp_path / "a", n_train=3, n_test=1, size=48, seed=7)
    b = write_dataset(tmp_path / "b", n_train=3, n_test=1, size=48, seed=7)
    c = write_dataset(tmp_path / "c", n_train=3, n_test=1, size=48, seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_layout_has_four_classes_in_both_splits(tmp_path):
    root = write_dataset(tmp_path, n_train=2, n_test=1, size=48, seed=0)
    for split, n in (("Training", 2), ("Testing", 1)):
        assert sorted(d.name for d in (root / split).iterdir()) == sorted(CLASSES)
        for c in CLASSES:
            assert len(list((root / split / c).glob("*.jpg"))) == n


def test_brightness_alone_does_not_separate_classes():
    # Mean intensity distributions of the classes must overlap heavily.
    means = {c: [phantom(c, np.random.default_rng([0, i]), 64).mean() for i in range(30)] for c in CLASSES}
    lo = max(np.percentile(v, 25) for v in means.values())
    hi = min(np.percentile(v, 75) for v in means.values())
    assert lo < hi, means
