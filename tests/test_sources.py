"""Training on more than one source: per-source splits and figures, and weakly labelled (tumour / no tumour)
folders that learn the tumour type from the teacher."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny_config


def second_style(phantoms, dst, n=40):
    """The same phantoms rendered in another 'style' (darker, gamma, non-square frame, black border), labelled
    only tumor/ or notumor/ like a hospital's own archive."""
    for cls in ("glioma", "meningioma", "notumor", "pituitary"):
        out = dst / ("notumor" if cls == "notumor" else "tumor")
        out.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(sorted((phantoms / "Training" / cls).glob("*.jpg"))[: n if cls == "notumor" else n // 3]):
            a = np.asarray(Image.open(f).convert("L"), np.float64) / 255
            canvas = np.zeros((80, 100), np.uint8)
            canvas[8:72, 18:82] = (180 * a ** 1.6).astype(np.uint8)
            Image.fromarray(canvas).save(out / f"{cls}_{i}.png")
    return dst


def test_hard_loss_of_a_weak_label_is_minus_log_p_tumour():
    from keras import ops

    from train.distill import hard_loss

    logits = np.array([[1.0, 2.0, 0.5, -1.0], [0.3, 0.1, 2.0, 0.0]], np.float32)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = ops.convert_to_numpy(hard_loss(np.array([4, 1]), logits, no_tumour=2))
    assert np.allclose(got, [-np.log(1 - p[0, 2]), -np.log(p[1, 1])], atol=1e-5)


def test_sources_are_split_apart_and_weak_tumours_get_their_own_label(phantoms, tmp_path):
    from train.data import prepare

    weak = second_style(phantoms, tmp_path / "hospital")
    cfg = tiny_config(phantoms, tmp_path, data=f"{phantoms / 'Training'},{weak}", test_data="",
                      val_fraction=0.2, test_fraction=0.2)
    s = prepare(cfg)
    imgs = s.images
    assert imgs.classes == ["glioma", "meningioma", "notumor", "pituitary"] and imgs.weak_sources == [str(weak)]
    hospital = imgs.source == 1
    assert set(imgs.labels[hospital]) == {2, 4}                       # notumor, tumour of unknown type
    for idx in (s.train, s.val, s.test):                              # every split has both sources
        assert set(imgs.source[idx]) == {0, 1}
    assert s.report["sources"][1] == {"folder": str(weak), "weak": True, "images": int(hospital.sum())}
    assert s.report["count_per_class"]["tumor (type unknown)"] == int((imgs.labels == 4).sum())


def test_a_run_on_two_sources_reports_each_and_keeps_weak_files_out_of_parity_lists(phantoms, tiny_run, tmp_path):
    from train.run import run

    weak = second_style(phantoms, tmp_path / "hospital")
    cfg = tiny_config(phantoms, tmp_path, data=f"{phantoms / 'Training'},{weak}", test_data="",
                      teacher=str(tiny_run / "teacher.keras"), student_epochs=2, val_fraction=0.2, test_fraction=0.2,
                      baseline=False)
    assert run(cfg) == 0
    out = tmp_path / "run"
    m = json.loads((out / "manifest.json").read_text())
    per = m["results"]["student"]["by_source"]["test"]
    assert set(per) == {str(phantoms / "Training"), str(weak)}
    calls = per[str(weak)]["tumour_calls"]
    # the same figures, recomputed from the saved student on the hospital's test files
    import keras

    from device.preprocess import load_image
    split = json.loads((out / "split.json").read_text())
    files = [p for p in split["test"] if p.startswith(str(weak))] + split["weak_tumour"]["test"]
    x = np.stack([load_image(p, cfg.image_size) for p in files]).astype(np.float32)[..., None]
    called = keras.models.load_model(out / "student.keras").predict(x, verbose=0).argmax(1) != 2  # 2: notumor
    tumour = np.array(["/tumor/" in p for p in files])
    assert calls["n"] == len(files) and calls["tumour"] == int(tumour.sum())
    assert calls["sensitivity"] == pytest.approx(called[tumour].mean())
    assert calls["specificity"] == pytest.approx((~called[~tumour]).mean())
    assert per[str(weak)]["accuracy"] is not None                     # its notumor images have full labels
    split = json.loads((out / "split.json").read_text())
    assert all("/tumor/" not in p for k in ("train", "val", "test") for p in split[k])
    assert split["weak_tumour"]["train"] and all("/tumor/" in p for p in split["weak_tumour"]["train"])


@pytest.mark.parametrize("extra, says", [({"test_data": "x"}, "no --test-data")])
def test_several_sources_refuse_what_they_cannot_do(phantoms, tmp_path, extra, says):
    from train.config import ConfigError

    cfg = tiny_config(phantoms, tmp_path, data="a,b", **({"test_data": ""} | extra))
    with pytest.raises(ConfigError, match=says):
        cfg.validate()


def test_weak_folders_alone_are_refused(phantoms, tmp_path):
    from train.data import DataError, load_sources

    weak = second_style(phantoms, tmp_path / "w")
    shutil.copytree(weak, tmp_path / "w2")
    with pytest.raises(DataError, match="full class labels"):
        load_sources([str(weak), str(tmp_path / "w2")], 32, tmp_path / "cache")


def test_split_unlabeled_keeps_each_class_share_and_hides_labels_in_names(phantoms, tmp_path, capsys):
    from experiments.split_unlabeled import main, split
    from train.data import load_unlabeled, scan_folder

    n_lab, n_unl = split(str(phantoms / "Training"), 0.25, tmp_path / "s", seed=3)
    classes, items = scan_folder(phantoms / "Training")
    lab_classes, lab_items = scan_folder(tmp_path / "s" / "labelled")
    assert lab_classes == classes and n_lab + n_unl == len(items) and n_lab == len(lab_items)
    for ci in range(len(classes)):  # stratified: each class keeps its quarter
        assert sum(c == ci for _, c in lab_items) == round(sum(c == ci for _, c in items) * 0.25)
    names = [p.name for p in (tmp_path / "s" / "unlabeled").iterdir()]
    assert len(names) == n_unl and not any(c in n for n in names for c in classes)
    assert len(load_unlabeled([str(tmp_path / "s" / "unlabeled")], 32, tmp_path / "cache").paths) == n_unl
    assert main(["--data", str(phantoms / "Training"), "--out", str(tmp_path / "s")]) == 2   # never merged into
    assert "exists" in capsys.readouterr().err
