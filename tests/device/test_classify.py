import csv
import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.device.conftest import ROOT, classify


def _images(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).save(d / ("sub" if i else ".") / f"s{i}.jpg")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def test_classifies_files_and_folders_recursively(model, tmp_path):
    d = _images(tmp_path)
    code, out, err = classify("--model", model, d, "--top-k", "2")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all("%" in ln and "ms" in ln for ln in lines)
    assert "notes.txt" not in out


def test_json_and_csv_outputs_parse(model, tmp_path):
    d = _images(tmp_path)
    code, out, _ = classify("--model", model, "--json", d)
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert code == 0 and len(rows) == 3
    for r in rows:
        assert set(r) == {"path", "label", "probability", "probabilities", "latency_ms"}
        assert abs(sum(r["probabilities"].values()) - 1) < 0.02 and r["label"] in r["probabilities"]
    code, out, _ = classify("--model", model, "--csv", d)
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(table) == 3 and table[0]["label"]


def test_bad_files_are_reported_one_line_each_and_the_rest_still_run(model, tmp_path):
    d = _images(tmp_path)
    (d / "zero.jpg").write_bytes(b"")
    (d / "fake.png").write_text("not a png")
    good = (d / "s0.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(good[: len(good) // 2])
    code, out, err = classify("--model", model, d, tmp_path / "missing.jpg")
    assert code == 1
    assert len(out.strip().splitlines()) == 3  # the good images were still classified
    for name in ("zero.jpg", "fake.png", "trunc.jpg", "missing.jpg"):
        assert sum(name in ln for ln in err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_min_confidence_answers_uncertain(model, tmp_path):
    d = _images(tmp_path)
    code, out, _ = classify("--model", model, "--json", "--min-confidence", "0.99", d)
    assert code == 0 and all(json.loads(ln)["label"] == "uncertain" for ln in out.splitlines())


def test_usage_and_model_errors_exit_2_without_traceback(model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    img = _images(tmp_path) / "s0.jpg"
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"this is not a flatbuffer" * 10)
    meta = json.loads(model.with_suffix(".json").read_text())
    import hashlib

    meta["sha256"] = hashlib.sha256(garbage.read_bytes()).hexdigest()
    garbage.with_suffix(".json").write_text(json.dumps(meta))
    tampered = tmp_path / "tampered.tflite"
    tampered.write_bytes(model.read_bytes() + b"\0")
    tampered.with_suffix(".json").write_text(model.with_suffix(".json").read_text())
    nometa = tmp_path / "nometa.tflite"
    nometa.write_bytes(model.read_bytes())
    cases = [
        (("--model", model, empty), "no images"),
        (("--model", garbage, img), "not a valid TFLite model"),
        (("--model", tampered, img), "does not match its metadata"),
        (("--model", nometa, img), "metadata not found"),
        (("--model", tmp_path / "nope.tflite", img), "not found"),
        (("--model", model, "--top-k", "0", img), "--top-k"),
        (("--bogus-flag", "x.jpg"), "unrecognized"),
        ((), "required"),
    ]
    for args, words in cases:
        code, _, err = classify(*args)
        assert code == 2, (args, err)
        assert words in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_directory_without_images_is_an_error_line_but_others_run(model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    img = _images(tmp_path) / "s0.jpg"
    code, out, err = classify("--model", model, empty, img)
    assert code == 1 and len(out.splitlines()) == 1 and "no images" in err


def test_device_never_imports_tensorflow(model, tmp_path):
    img = _images(tmp_path) / "s0.jpg"
    code = (f"import sys; sys.argv=['x','--model',{str(model)!r},{str(img)!r}]; "
            "import device.classify as c; rc=c.main(); "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('tensorflow','keras','train','convert')]; "
            "print('LOADED', bad); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "LOADED []" in p.stdout


def test_numpy_abi_mismatch_gives_the_fix(monkeypatch):
    import importlib

    from device import runtime

    def boom(name):
        raise ImportError("numpy.core.multiarray failed to import")

    monkeypatch.setattr(importlib, "import_module", boom)
    try:
        runtime.load_interpreter_class("tflite-runtime")
    except runtime.RuntimeMissing as e:
        assert 'pip install "numpy<2"' in str(e)
    else:
        raise AssertionError("expected RuntimeMissing")


def test_interpreter_is_created_once_and_reused(model, tmp_path, monkeypatch):
    from device import runtime

    made = []
    name, real = runtime.load_interpreter_class("auto")

    class Counting(real):
        def __init__(self, *a, **k):
            made.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(runtime, "load_interpreter_class", lambda r="auto": (name, Counting))
    from device import classify as cli

    d = _images(tmp_path)
    assert cli.main(["--model", str(model), "--json", str(d)]) == 0
    assert len(made) == 1


def test_bench_prints_figures(model):
    p = subprocess.run([sys.executable, "-m", "device.bench", "--model", str(model), "--runs", "20", "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    r = json.loads(p.stdout)
    assert p.returncode == 0 and r["p50_ms"] > 0 and r["peak_rss_mb"] > 0 and r["images_per_s"] > 0


def test_shipped_model_is_the_default_and_verifies(tmp_path):
    from device.classify import PACKAGE_MODEL, default_model
    from device.metadata import read_metadata

    if not PACKAGE_MODEL.is_file():  # a checkout without a shipped model falls back to artifacts/
        return
    assert default_model() == PACKAGE_MODEL
    meta = read_metadata(PACKAGE_MODEL)
    assert meta["labels"] == ["glioma", "meningioma", "notumor", "pituitary"]
    img = _images(tmp_path) / "s0.jpg"
    code, out, err = classify(img)  # no --model
    assert code == 0 and any(c in out for c in meta["labels"]), err
