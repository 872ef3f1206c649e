"""The Python API for apps on the board (after the TensorFlow Lite Raspberry Pi example's ImageClassifier)."""
import numpy as np
import pytest
from PIL import Image

from device.preprocess import ImageError
from device.runtime import Classifier, ClassifierOptions, Prediction


def test_classify_a_file_or_an_array_the_same_way(model, tmp_path):
    frame = np.random.default_rng(3).integers(0, 255, (70, 100), dtype=np.uint8)  # a camera frame, not square
    Image.fromarray(frame).save(tmp_path / "f.png")
    clf = Classifier(model, ClassifierOptions(top_k=2))
    from_file, from_array = clf.classify(tmp_path / "f.png"), clf.classify(frame)
    assert from_file == from_array and len(from_file) == 2 and all(isinstance(p, Prediction) for p in from_file)
    assert from_file[0].probability >= from_file[1].probability and from_file[0].label in clf.labels


def test_min_confidence_leaves_uncertain_images_unanswered(model):
    clf = Classifier(model, ClassifierOptions(top_k=4, min_confidence=0.99))
    assert clf.classify(np.zeros((32, 32), np.uint8)) == []


@pytest.mark.parametrize("options, says", [
    (ClassifierOptions(threads=0), "threads"), (ClassifierOptions(top_k=0), "top_k"),
    (ClassifierOptions(min_confidence=1.5), "min_confidence"), (ClassifierOptions(runtime="tf"), "runtime")])
def test_bad_options_are_refused_before_loading(model, options, says):
    with pytest.raises(ValueError, match=says):
        Classifier(model, options)


def test_a_bad_array_is_an_image_error(model):
    with pytest.raises(ImageError, match="2-D uint8"):
        Classifier(model).classify(np.zeros((8, 8, 3), np.float32))


@pytest.mark.parametrize("contract", [1, 2, 3])
def test_the_device_frames_a_scan_by_the_contract_its_sidecar_names(model, tmp_path, contract):
    import json

    from device.preprocess import load_image

    meta = json.loads(model.with_suffix(".json").read_text())
    meta["preprocess"]["contract_version"] = contract
    model.with_suffix(".json").write_text(json.dumps(meta))
    canvas = np.zeros((90, 160), np.uint8)
    canvas[20:80, 10:60] = np.random.default_rng(1).integers(60, 255, (60, 50), dtype=np.uint8)  # an off-centre head
    Image.fromarray(canvas).save(tmp_path / "scan.png")
    clf = Classifier(model)
    size = clf.size
    own, other = load_image(tmp_path / "scan.png", size, contract), load_image(tmp_path / "scan.png", size, 2 if contract != 2 else 1)
    assert not np.array_equal(own, other)
    assert np.array_equal(clf.probabilities(tmp_path / "scan.png"), clf.predict_pixels(own))
    assert np.array_equal(clf.probabilities(canvas), clf.predict_pixels(own))
