import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
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
        assert set(r) == {"path", "label", "probability", "probabilities", "in_distribution", "ood_score", "latency_ms"}
        assert r["in_distribution"] is None and r["ood_score"] is None  # this (v1) model has no OOD statistics
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
    meta["size_bytes"] = garbage.stat().st_size
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


def test_numpy_abi_mismatch_is_detected_on_the_real_exception_chain():
    from device.runtime import _numpy_abi_error

    # what tflite-runtime 2.14 raises inside Interpreter(...) under numpy 2 (import itself succeeds)
    try:
        try:
            raise AttributeError("_ARRAY_API not found")
        except AttributeError:  # implicit chaining (__context__), as the C extension does it
            message = "<built-in method CreateWrapperFromFile> returned a result with an exception set"
            raise SystemError(message)  # noqa: B904
    except SystemError as e:
        assert _numpy_abi_error(e)
    assert not _numpy_abi_error(SystemError("something else"))
    assert _numpy_abi_error(ImportError("numpy.core.multiarray failed to import"))


def test_interpreter_is_created_once_and_reused(model, tmp_path):
    from device.runtime import Classifier

    clf = Classifier(model)
    it = clf.interpreter
    d = _images(tmp_path)
    for f in sorted(d.rglob("*.jpg")):
        clf.classify(f)
    assert clf.interpreter is it


def test_bench_prints_figures(model):
    p = subprocess.run([sys.executable, "-m", "device.bench", "--model", str(model), "--runs", "20", "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    r = json.loads(p.stdout)
    assert p.returncode == 0 and r["runs"] == 20 and r["runtime"] in ("tflite-runtime", "litert")
    # the figures are of one set of timings: ordered percentiles, and a rate that is 1000 / the mean latency
    assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    assert 1000 / r["p99_ms"] <= r["images_per_s"] * 1.01 and r["peak_rss_mb"] > 10


def test_shipped_model_is_the_default_and_verifies(tmp_path):
    from device.metadata import read_metadata
    from device.runtime import PACKAGE_MODEL, Classifier

    assert Classifier().model_path == PACKAGE_MODEL
    meta = read_metadata(PACKAGE_MODEL)
    assert meta["labels"] == ["glioma", "meningioma", "notumor", "pituitary"]
    img = _images(tmp_path) / "s0.jpg"
    code, out, err = classify(img)  # no --model
    assert code == 0 and any(c in out for c in meta["labels"]), err


@pytest.mark.skipif(not os.environ.get("MRI_EDGE_TEST_NUMPY2"), reason="builds a throwaway venv: set MRI_EDGE_TEST_NUMPY2=1")
def test_tflite_runtime_under_numpy_2_prints_the_fix_or_falls_back(model, tmp_path):
    """The real failure, in a real venv: tflite-runtime 2.14 with numpy 2 (and then with LiteRT beside it)."""
    venv = tmp_path / "np2"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "tflite-runtime==2.14.0", "numpy>=2", "pillow"], check=True, timeout=600)
    img = _images(tmp_path) / "s0.jpg"
    run = [str(venv / "bin" / "python"), "-m", "device.classify", "--model", str(model), str(img)]
    p = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert 'pip install "numpy<2"' in p.stderr and "Traceback" not in p.stderr
    subprocess.run([*pip, "ai-edge-litert"], check=True, timeout=600)
    p = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0 and any(c in p.stdout for c in ("glioma", "meningioma", "notumor", "pituitary")), p.stderr
    assert p.stderr.strip().startswith("note: tflite-runtime was built against numpy 1.x") and "using litert" in p.stderr


def test_the_clis_runtime_names_are_the_runtimes_it_can_load():
    """classify imports nothing heavy at start (a Ctrl-C there is quiet), so it names the runtimes itself."""
    from device.classify import RUNTIME_NAMES
    from device.runtime import RUNTIMES

    assert RUNTIME_NAMES == tuple(RUNTIMES)
