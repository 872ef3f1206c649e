import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert import calibration
from convert.audit import audit, check_full_int8
from convert.parity import main as parity_main
from convert.tflite import convert_variant
from device.metadata import ModelError, read_metadata
from device.preprocess import load_image
from device.runtime import Classifier
from tests.conftest import ROOT
from train.data import load_folder


def test_int8_model_has_integer_io_and_no_float_ops(converted):
    run, r = converted
    rep = audit(run / "student_int8.tflite")
    assert check_full_int8(rep) == [], rep
    assert rep["input"]["dtype"] == "uint8" and rep["input"]["quantization"] == [1.0, 0]
    assert rep["output"]["dtype"] == "uint8"
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(rep["op_types"])
    meta = read_metadata(run / "student_int8.tflite")
    assert meta["labels"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert meta["input"]["quantization"] == [1.0, 0] and meta["calibration"]["count"] > 0


def test_audit_flags_a_float_model(converted):
    run, _ = converted
    convert_variant(run, "student_fp32")
    problems = check_full_int8(audit(run / "student_fp32.tflite"))
    assert any("float operators" in p for p in problems) and any("input dtype" in p for p in problems)


def test_representative_set_is_stratified_deterministic_and_disjoint_from_eval(converted):
    run, _ = converted
    split = calibration.read_split(run)
    a = calibration.choose(split["train"], split["classes"], 20, seed=1)
    assert a == calibration.choose(split["train"], split["classes"], 20, seed=1)
    assert a != calibration.choose(split["train"], split["classes"], 20, seed=2)
    per_class = [sum(f"/{c}/" in p for p in a) for c in split["classes"]]
    assert max(per_class) - min(per_class) <= 1 and sum(per_class) == 20
    saved = (run / "calibration.txt").read_text().split()
    assert saved and not set(saved) & (set(split["test"]) | set(split["val"]))


def test_training_pixels_and_device_pixels_are_bit_identical(converted):
    """What training saw (cached arrays) == what the device feeds the interpreter, for the same files."""
    run, _ = converted
    split = calibration.read_split(run)
    data_root = Path(split["train"][0]).parents[1]
    cached = load_folder(data_root, split["image_size"], run.parent / "cache")
    assert cached.cache_hit  # the very arrays the training run used
    clf = Classifier(run / "student_int8.tflite")
    inp = clf.interpreter.get_input_details()[0]["index"]
    for path, arr in list(zip(cached.paths, cached.x))[:25]:
        assert np.array_equal(load_image(path, split["image_size"]), arr)
        clf.assess(path)
        fed = clf.interpreter.get_tensor(inp)[0, :, :, 0]
        assert fed.dtype == np.uint8 and np.array_equal(fed, arr), path


def test_parity_gate_passes_good_model_and_fails_blank_calibration(converted, tmp_path, capsys):
    run, _ = converted
    # The tiny test student is barely trained (near-tied probabilities flip easily), so the
    # gate is set looser than the default used on real runs; the broken model must still fail it.
    gate = ["--min-agreement", "90", "--max-drop", "5"]
    # file names as users type them work too; a missing float model is one line, exit 2
    assert parity_main(["--run", str(run), "--model", "student_int8.tflite", "--float-model", "student.keras",
                        *gate]) == 0
    capsys.readouterr()
    assert parity_main(["--run", str(run), "--float-model", "teacher_missing.keras"]) == 2
    assert capsys.readouterr().err == f"error: --float-model: no teacher_missing.keras in {run}\n"
    assert parity_main(["--run", str(run), *gate]) == 0
    rep = json.loads((run / "parity.json").read_text())
    assert rep["passed"] and rep["agreement_percent"] >= 90 and rep["int8_confidence_coverage"][0]["coverage"] == 1
    for f in ("parity.md", "parity.png"):
        assert (run / f).is_file()
    assert read_metadata(run / "student_int8.tflite")["metrics"]["parity"]["passed"]
    # A deliberately broken model: the student with its weights scrambled, converted the real way (the mistake
    # the gate exists for: an int8 model that is not the float model it claims to be).
    import keras

    other = tmp_path / "other"
    shutil.copytree(run, other)
    student = keras.models.load_model(run / "student.keras")
    rng = np.random.default_rng(0)
    student.set_weights([w + rng.normal(0, 0.5 * np.std(w), w.shape) if w.ndim > 1 else w  # kernels only: BN stays
                         for w in student.get_weights()])
    student.save(other / "student.keras")
    convert_variant(other, "student_int8")
    for ext in (".tflite", ".json"):
        shutil.copy(other / f"student_int8{ext}", run / f"student_broken{ext}")
    assert parity_main(["--run", str(run), "--model", "student_broken", *gate]) == 2   # whose float model?
    assert parity_main(["--run", str(run), "--model", "student_broken", "--float-model", "student", *gate]) == 1
    bad = json.loads((run / "parity_student_broken.json").read_text())
    assert not bad["passed"] and bad["failures"]


def test_corrupted_or_mismatched_model_is_refused(converted, tmp_path):
    run, _ = converted
    m = tmp_path / "m.tflite"
    shutil.copy(run / "student_int8.tflite", m)
    shutil.copy(run / "student_int8.json", m.with_suffix(".json"))
    data = bytearray(m.read_bytes())
    data[len(data) // 2] ^= 0xFF
    m.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its metadata"):
        Classifier(m)
    m.write_bytes(b"")
    with pytest.raises(ModelError):
        Classifier(m)


def test_convert_cli_writes_variants_in_separate_processes(converted):
    run, r = converted
    p = subprocess.run([sys.executable, "-m", "convert", "--run", str(run), "--variants", "student_fp16"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((run / "convert_report.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["student_fp16"] and report["failed"] == []
    assert r["bytes"] < report["variants"][0]["bytes"]  # int8 is smaller than fp16
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temp files
    bad = subprocess.run([sys.executable, "-m", "convert", "--run", str(run / "nope")], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_device_cli_on_litert_prints_no_runtime_chatter(tmp_path):
    """LiteRT announces its XNNPACK delegate on stderr; the device keeps stderr for real problems."""
    from PIL import Image

    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "x.png")
    p = subprocess.run([sys.executable, "-m", "device.classify", "--runtime", "litert", "--model",
                        str(ROOT / "tests" / "fixtures" / "tiny_int8.tflite"), str(tmp_path / "x.png")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0 and p.stderr == "" and "x.png" in p.stdout, p.stderr


def test_the_shipped_int8_student_carries_temperature_and_ood_statistics(converted):
    run, _ = converted
    meta = read_metadata(run / "student_int8.tflite")
    manifest = json.loads((run / "manifest.json").read_text())
    assert meta["temperature"]["value"] == manifest["results"]["student"]["calibration"]["temperature"] > 0
    assert meta["ood"]["features"] > len(meta["labels"]) and meta["ood"]["fitted_on"]["val"] > 0
    assert [o["shape"][-1] for o in audit(run / "student_int8.tflite")["outputs"]].count(meta["ood"]["features"]) == 1
    clf = Classifier(run / "student_int8.tflite")
    rng = np.random.default_rng(0)
    for junk in (rng.integers(0, 255, (100, 100), dtype=np.uint8), np.zeros((50, 50), np.uint8),
                 np.full((1, 1), 128, np.uint8)):
        assert not clf.assess(junk).in_distribution      # noise, a blank frame, a 1x1 grey image
    split = calibration.read_split(run)
    answered = np.mean([clf.assess(p).in_distribution for p in split["test"]])
    assert answered > 0.75                                # the threshold keeps 97% of validation


def absolute_paths(text: str) -> list[str]:
    """Absolute file paths in a text (URLs, relative paths and 'a / b' are not)."""
    import re

    return re.findall(r"(?<![\w.~:/])/[\w.-]+/[\w./-]*", text)


def sidecar_paths(text: str) -> list[str]:
    """Absolute paths in a sidecar's strings (its base64 OOD statistics are data, not paths)."""
    found = []

    def walk(v, key=""):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, k)
        elif isinstance(v, list):
            for x in v:
                walk(x, key)
        elif isinstance(v, str) and key not in ("whiten", "means"):
            found.extend(absolute_paths(v) + ([v] if v.startswith("/") else []))
    walk(json.loads(text))
    return found


def test_shipped_cards_and_sidecars_hold_no_absolute_path():
    from tests.conftest import ROOT

    assert absolute_paths("run /work/x/artifacts/r and C: /tmp/a.txt") == ["/work/x/artifacts/r", "/tmp/a.txt"]
    assert absolute_paths("https://arxiv.org/abs/1 ../shared/data tumor/ 1 / 2") == []
    cards, sidecars = sorted((ROOT / "device" / "models").glob("*.md")), sorted((ROOT / "device" / "models").glob("*.json"))
    assert cards and sidecars
    for f in cards:
        assert absolute_paths(f.read_text()) == [], f.name
    for f in sidecars:
        assert sidecar_paths(f.read_text()) == [], f.name


def test_ship_installs_the_verified_pair_and_its_card_and_drops_stale_models(converted, tmp_path):
    from convert.ship import main as ship_main

    run, _ = converted
    assert parity_main(["--run", str(run), "--min-agreement", "90", "--max-drop", "5"]) == 0
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "old_int8.tflite").write_bytes(b"stale")
    (dest / "old_int8.json").write_text("{}")
    # a teacher given by an absolute path, as users give it: the card names what it is, not where it lay
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["teacher"] = str(tmp_path / "elsewhere" / "myrun" / "teacher.keras")
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert ship_main(["--run", str(run), "--dest", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["MODEL_CARD.md", "student_int8.json", "student_int8.tflite"]
    card = (dest / "MODEL_CARD.md").read_text()
    assert absolute_paths(card) == [] and sidecar_paths((dest / "student_int8.json").read_text()) == []
    assert "ensemble of CNNs" in card and "`myrun/teacher.keras`" in card
    assert "Not a medical device" in card and "Scans unlike the training images" in card and "temperature" in card
    read_metadata(dest / "student_int8.tflite")
    assert ship_main(["--run", str(run), "--dest", str(dest), "--also", "teacher_int8"]) == 2  # not converted


def test_external_evaluation_reports_each_source_tumour_calls_and_the_ood_flag(converted, phantoms, tmp_path):
    from bench.external import main as external_main

    run, _ = converted
    ext = tmp_path / "elsewhere"
    for cls in ("glioma", "notumor"):
        (ext / cls).mkdir(parents=True)
        for i, f in enumerate(sorted((phantoms / "Testing" / cls).glob("*.jpg"))[:6]):
            shutil.copy(f, ext / cls / f"{'siteA' if i % 2 else 'siteB'}__{f.name}")
    (ext / "notumor" / "broken.jpg").write_bytes(b"not an image")   # unreadable: left out, not fatal
    assert external_main(["--run", str(run), "--data", str(ext), "--models", "student_int8"]) == 0
    r = json.loads((run / "bench" / "external.json").read_text())["models"]["student_int8"]
    assert set(r) == {"in-distribution test split", "siteA", "siteB", "all"}
    assert r["all"] == {"n": 0, "unreadable": 1}                     # the broken file, with no source prefix
    clf = Classifier(run / "student_int8.tflite")
    for src in ("siteA", "siteB"):
        s = r[src]
        assert s["n"] == 6 and s["tumour"] == 3 and s["no_tumour"] == 3
        # the same figures from the device's own answers on that source's files
        files = sorted(ext.glob(f"*/{src}__*.jpg"))
        seen = {f: clf.assess(f) for f in files}
        called = {f: clf.labels[int(a.probabilities.argmax())] != "notumor" for f, a in seen.items()}
        assert s["sensitivity"] == pytest.approx(np.mean([called[f] for f in files if f.parent.name == "glioma"]))
        assert s["specificity"] == pytest.approx(np.mean([not called[f] for f in files if f.parent.name == "notumor"]))
        assert s["ood_rate"] == pytest.approx(np.mean([not a.in_distribution for a in seen.values()]))
        assert sum(sum(v.values()) for v in s["labels_given"].values()) == 6
    assert "siteA" in (run / "bench" / "external.md").read_text()
    assert external_main(["--run", str(run), "--data", str(tmp_path / "nowhere")]) == 2


def test_bench_times_a_ladder_of_students_on_one_test_split(converted, tmp_path, capsys):
    from bench.__main__ import main as bench_main

    run, _ = converted
    small = tmp_path / "small"          # a second student trained on the same split (here: the same files)
    small.mkdir()
    for f in ("manifest.json", "split.json", "student_int8.tflite", "student_int8.json"):
        shutil.copy(run / f, small / f)
    out = tmp_path / "bench"
    assert bench_main(["--run", str(run), "--student-run", str(small), "--runs", "3", "--repeats", "1",
                       "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert {"student_int8", "student_int8 (small)"} <= set(rows)   # and the float variants other tests converted
    assert not [v for v in rows if "(small)" in v and v != "student_int8 (small)"]  # only the int8 of a rung
    assert rows["student_int8 (small)"]["eval"]["accuracy"] == rows["student_int8"]["eval"]["accuracy"]
    assert rows["student_int8"]["eval"]["n"] == len(json.loads((run / "split.json").read_text())["test"])
    assert "student_int8 (small)" in (out / "results.md").read_text()
    # a student scored on other test images would not be comparable: refused, one line
    split = json.loads((small / "split.json").read_text())
    (small / "split.json").write_text(json.dumps({**split, "test": split["test"][1:]}))
    with pytest.raises(SystemExit) as e:
        bench_main(["--run", str(run), "--student-run", str(small), "--out", str(out)])
    assert e.value.code == 2 and "its test split is not --run's" in capsys.readouterr().err
