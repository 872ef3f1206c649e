"""A second opinion: a second model (the shipped int8 teacher) on every scan, and where the two top answers differ
(docs/research.md, Q21: it catches the student's wrong answers, the OOD score does not)."""
import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from device import classify as cli
from device.metadata import ModelError
from device.preprocess import load_image
from device.runtime import Assessment, Classifier, ClassifierOptions
from tests.device.conftest import classify


def _scan(tmp_path, seed=5):
    a = np.zeros((90, 70), np.uint8)
    a[10:80, 8:62] = np.random.default_rng(seed).integers(40, 250, (70, 54), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "scan.png")
    return tmp_path / "scan.png", a


def test_the_second_opinion_is_the_second_models_own_answer_on_its_own_framing(ood_model, model, tmp_path):
    path, array = _scan(tmp_path)
    clf = Classifier(ood_model, ClassifierOptions(second_opinion=model))
    alone = Classifier(model)
    assert clf.second.contract != clf.contract   # (v1 beside v2: each model is fed its own contract's pixels)
    for src in (path, array):
        r = clf.assess(src)
        assert np.array_equal(r.second_probabilities, alone.probabilities(src))
        assert np.array_equal(r.probabilities, Classifier(ood_model).probabilities(src))
        assert r.agrees == (int(np.argmax(r.probabilities)) == int(np.argmax(r.second_probabilities)))
    # one decoding worker for both models: the second never starts its own
    assert clf._worker is not None and clf.second._worker is None
    assert np.array_equal(clf.model_input(path, clf.second)[0], load_image(path, alone.size, alone.contract))
    assert Classifier(ood_model).assess(path).agrees is None   # not asked for: no opinion, no field


def test_agreement_is_the_top_answers_being_equal():
    p = np.array([0.6, 0.3, 0.05, 0.05], np.float32)
    assert Assessment(p, second_probabilities=p[[0, 1, 3, 2]]).agrees is True
    assert Assessment(p, second_probabilities=p[[1, 0, 2, 3]]).agrees is False


def test_a_second_model_with_other_labels_or_no_file_is_refused(ood_model, model, tmp_path):
    meta = json.loads(model.with_suffix(".json").read_text())
    meta["labels"] = meta["labels"][::-1]
    model.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="second opinion model.tflite: its labels"):
        Classifier(ood_model, ClassifierOptions(second_opinion=model))
    with pytest.raises(ValueError, match="second_opinion must be a model path"):
        Classifier(ood_model, ClassifierOptions(second_opinion=3))
    code, out, err = classify(_scan(tmp_path)[0], "--model", ood_model, "--second-opinion")  # no teacher beside it
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "teacher_int8.tflite" in err and "Traceback" not in err


def test_the_cli_defaults_to_the_teacher_beside_the_model_and_reports_it(ood_model, model, tmp_path):
    for suffix in (".tflite", ".json"):
        shutil.copy(model.with_suffix(suffix), ood_model.with_name("teacher_int8" + suffix))
    path = _scan(tmp_path)[0]
    code, out, _ = classify(path, "--model", ood_model, "--second-opinion", "--json")
    rec = json.loads(out)
    second = Classifier(model).probabilities(path)
    assert code == 0 and rec["second_opinion"] == Classifier(model).labels[int(np.argmax(second))]
    assert rec["agrees"] == (rec["second_opinion"] == rec["label"])
    code, out, _ = classify(path, "--model", ood_model, "--second-opinion", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows[0]["second_opinion"] == rec["second_opinion"] and rows[0]["agrees"] in ("true", "false")
    code, out, _ = classify(path, "--model", ood_model, "--json")
    assert "agrees" not in json.loads(out)


def test_a_disagreement_is_said_on_the_answers_line(ood_model, model, tmp_path, monkeypatch, capsys):
    path = _scan(tmp_path)[0]
    real = Classifier.assess_pixels

    def contrary(self, pixels, notes=(), second_pixels=None):  # a second model sure of another class than the first's
        r = real(self, pixels, notes, second_pixels)
        other = (int(np.argmax(r.probabilities)) + 1) % len(r.probabilities)
        return Assessment(r.probabilities, r.ood_score, r.notes, np.eye(len(r.probabilities), dtype=np.float32)[other])

    for suffix in (".tflite", ".json"):
        shutil.copy(model.with_suffix(suffix), ood_model.with_name("teacher_int8" + suffix))
    monkeypatch.setattr(Classifier, "assess_pixels", contrary)
    assert cli.main(["--second-opinion", str(path), "--model", str(ood_model)]) == 0  # a flag: the path stays a path
    line = capsys.readouterr().out.strip()
    assert "the models disagree: check this scan" in line and line.count("\n") == 0
    assert cli.main([str(path), "--model", str(ood_model), "--second-opinion", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["agrees"] is False and rec["second_opinion"] != rec["label"]
