import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny_config
from train.data import DataError, load_folder, prepare, scan_folder, stratified_split


def _folder(tmp_path, counts=(6, 6, 6)):
    root = tmp_path / "ds"
    for ci, n in enumerate(counts):
        d = root / f"class{ci}"
        d.mkdir(parents=True)
        for i in range(n):
            a = (np.random.default_rng([ci, i]).random((40, 40)) * 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"img{i}.{'png' if i % 2 else 'JPG'}")
    return root


def test_corrupt_and_empty_files_are_skipped_and_listed(tmp_path):
    root = _folder(tmp_path)
    (root / "class0" / "zero.jpg").write_bytes(b"")
    good = (root / "class1" / "img0.JPG").read_bytes()
    (root / "class1" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "class2" / "text.png").write_text("not an image")
    imgs = load_folder(root, 32, tmp_path / "cache")
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in imgs.skipped}
    assert set(reasons) == {"zero.jpg", "truncated.jpg", "text.png"}
    assert "empty" in reasons["zero.jpg"] and "truncated" in reasons["truncated.jpg"]
    assert len(imgs.labels) == 18 and imgs.x.shape == (18, 32, 32) and imgs.x.dtype == np.uint8


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    root = _folder(tmp_path)
    a = load_folder(root, 32, tmp_path / "cache")
    b = load_folder(root, 32, tmp_path / "cache")
    assert not a.cache_hit and b.cache_hit and np.array_equal(a.x, b.x)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "class0" / "img0.JPG")
    c = load_folder(root, 32, tmp_path / "cache")
    assert not c.cache_hit
    assert not load_folder(root, 24, tmp_path / "cache").cache_hit  # size is part of the key


def test_empty_class_folder_is_an_error(tmp_path):
    root = _folder(tmp_path)
    (root / "class3").mkdir()
    with pytest.raises(DataError, match="class3"):
        scan_folder(root)


def test_test_split_with_other_classes_is_an_error(tmp_path):
    train = _folder(tmp_path)
    test = tmp_path / "test"
    shutil.copytree(train, test)
    shutil.rmtree(test / "class2")
    shutil.copytree(test / "class1", test / "other")
    cfg = tiny_config(tmp_path, tmp_path, data=str(train), test_data=str(test))
    with pytest.raises(DataError, match="differ"):
        prepare(cfg)


def test_split_is_stratified_and_reproducible():
    labels = np.repeat(np.arange(4), [100, 60, 40, 200])
    a = stratified_split(labels, [0.1, 0.2], seed=5)
    b = stratified_split(labels, [0.1, 0.2], seed=5)
    c = stratified_split(labels, [0.1, 0.2], seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])
    assert sorted(np.concatenate(a).tolist()) == list(range(len(labels)))  # a partition
    for part, f in ((a[1], 0.1), (a[2], 0.2)):
        counts = np.bincount(labels[part], minlength=4)
        assert np.allclose(counts, f * np.array([100, 60, 40, 200]), atol=1)


def test_leaking_duplicates_are_found_and_kept_out_of_evaluation(phantoms, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantoms, data)
    # Copy three training-split images into the test split: one byte-identical, two re-encoded.
    first = prepare(tiny_config(data, tmp_path))
    src = [first.images.paths[i] for i in first.train if "/glioma/" in first.images.paths[i]][:3]
    shutil.copy(src[0], data / "Testing" / "glioma" / "copy.jpg")
    for i, s in enumerate(src[1:]):
        Image.open(s).save(data / "Testing" / "glioma" / f"reencoded{i}.jpg", quality=80)
    cfg = tiny_config(data, tmp_path)
    s = prepare(cfg)
    leak = s.report["leakage"]["test"]
    assert leak["exact"] == 1 and leak["near_or_exact"] >= 3 and leak["excluded"] == leak["near_or_exact"]
    kept = {s.test_images.paths[i].split("/")[-1] for i in s.test}
    assert not kept & {"copy.jpg", "reencoded0.jpg", "reencoded1.jpg"}
    s2 = prepare(tiny_config(data, tmp_path, keep_leaks=True))
    assert len(s2.test) == len(s.test) + leak["near_or_exact"]


def test_data_cli_prints_report(phantoms, capsys, tmp_path):
    from train.data import main

    assert main(["--data", str(phantoms / "Training"), "--cache-dir", str(tmp_path), "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "per class: glioma 120" in out and "exact duplicates" in out and "near-duplicate" in out
    assert main(["--data", str(tmp_path / "missing")]) == 2
