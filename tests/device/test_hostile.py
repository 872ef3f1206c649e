"""Hostile and broken inputs: each gets one line and a documented exit code; memory stays bounded."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.device.conftest import FIXTURE, ROOT, classify
from tests.device.hostile import classify_peak, jpeg_claiming, png_claiming, png_full

MB_LIMIT = 300  # peak RSS of one classify process, whatever the file


def _scan(path):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("name, make", [
    ("tall.jpg", lambda: jpeg_claiming(224, 62298)),      # 6 KB file, a 62,298 px tall header
    ("wide.jpg", lambda: jpeg_claiming(64927, 2)),
    ("strip.png", lambda: png_claiming(4_000_000, 10, rows=10)),
    ("bomb.png", lambda: png_claiming(15000, 12000)),     # over Pillow's own limit: our message, not Pillow's
])
def test_files_whose_headers_lie_stay_in_bounded_memory(model, tmp_path, name, make):
    f = tmp_path / name
    f.write_bytes(make())
    r = classify_peak("--model", model, "--json", f)
    rows = [json.loads(ln) for ln in r["out"].splitlines()]
    assert len(rows) == 1 and r["rc"] in (0, 1) and "Traceback" not in r["err"], r
    assert r["rss_mb"] < MB_LIMIT, r["rss_mb"]
    if name == "bomb.png":
        assert rows[0]["error"] == "image too large (15000x12000 = 180,000,000 pixels > 40,000,000 limit)"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_a_40_megapixel_16_bit_or_transparent_image_stays_under_300_mb(model, tmp_path, mode):
    f = tmp_path / "big.png"
    f.write_bytes(png_full(7000, 5670, mode))  # 39.7 MP
    r = classify_peak("--model", model, "--json", f)
    assert r["rc"] == 0 and json.loads(r["out"])["label"], r
    assert r["rss_mb"] < MB_LIMIT, r["rss_mb"]


def test_pixel_limit_message_is_exact_at_the_boundary(tmp_path):
    from device.preprocess import ImageError, load_image

    (tmp_path / "x.png").write_bytes(png_claiming(6325, 6325))
    with pytest.raises(ImageError, match=r"6325x6325 = 40,005,625 pixels > 40,000,000 limit"):
        load_image(tmp_path / "x.png", 32)


def _resigned(model, tmp_path, name, blob):
    """A model file with its sidecar's hash regenerated: the hash check passes, the bytes are broken."""
    m = tmp_path / f"{name}.tflite"
    m.write_bytes(blob)
    meta = json.loads(model.with_suffix(".json").read_text())
    m.with_suffix(".json").write_text(json.dumps(dict(meta, sha256=hashlib.sha256(blob).hexdigest())))
    return m


@pytest.mark.parametrize("runtime", ["tflite-runtime", "litert"])
def test_a_corrupt_model_with_a_matching_hash_is_one_line_not_a_crash(model, tmp_path, runtime):
    pytest.importorskip({"tflite-runtime": "tflite_runtime", "litert": "ai_edge_litert"}[runtime])
    data = model.read_bytes()
    cases = {"t1000": data[:1000], "t50": data[: len(data) // 2], "t1": data[:-1]}
    for off in (0, 20, 40, 16832):  # 16832: an operator's options (a division by zero in tflite-runtime)
        b = bytearray(data)
        b[off] ^= 0xFF
        cases[f"flip{off}"] = bytes(b)
    img = _scan(tmp_path / "x.png")
    for name, blob in cases.items():
        code, _, err = classify("--runtime", runtime, "--model", _resigned(model, tmp_path, name, blob), img)
        assert code == 2 and len(err.strip().splitlines()) == 1, (name, code, err)
        assert "model" in err and "Traceback" not in err, (name, err)


@pytest.mark.parametrize("field, value, says", [
    ("preprocess", 1, "'preprocess' must be an object"),
    ("input", {}, "'input.size' must be an integer"),
    ("input", "96", "'input' must be an object"),
    ("labels", None, "'labels' must be a list"),
    ("labels", "abcd", "'labels' must be a list"),
    ("sha256", 123, "'sha256' must be 64"),
    ("preprocess", {"contract_version": "1"}, "'preprocess.contract_version' must be an integer"),
    ("preprocess", {}, "'preprocess.contract_version' must be an integer"),
    ("preprocess", {"contract_version": 4}, "built for preprocessing contract v4, this device code implements v1, v2, v3"),
])
def test_a_sidecar_with_wrong_types_is_one_line_naming_the_field(model, tmp_path, field, value, says):
    meta = json.loads(model.with_suffix(".json").read_text())
    meta[field] = value
    model.with_suffix(".json").write_text(json.dumps(meta))
    code, _, err = classify("--model", model, _scan(tmp_path / "x.png"))
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_folder_mode_reports_everything_it_skips(model, tmp_path):
    d = tmp_path / "scans"
    (d / "real").mkdir(parents=True)
    _scan(d / "real" / "a.png")
    os.symlink(d / "missing.png", d / "dangling.png")
    os.symlink("loop2.png", d / "loop1.png")
    os.symlink("loop1.png", d / "loop2.png")
    os.symlink(d / "real", d / "linked")          # a second way into a folder: searched once, not twice
    os.symlink(d, d / "real" / "back")            # a loop back to the top
    os.mkfifo(d / "pipe.png")
    code, out, err = classify("--model", model, "--json", d)
    rows = [json.loads(ln) for ln in out.splitlines()]
    errors = {os.path.basename(r["path"]): r["error"] for r in rows if "error" in r}
    assert code == 1
    assert errors["dangling.png"] == "broken symbolic link"
    assert "loop" in errors["loop1.png"] and "loop" in errors["loop2.png"]
    assert "loop" in errors["back"] and errors["pipe.png"] == "a FIFO, not an image file"
    assert len(errors) == 5 and "real" not in errors  # the real folder itself is no loop
    classified = sorted(r["path"] for r in rows if "label" in r)
    assert classified == [str(d / "linked" / "a.png")]  # real/ was searched through the link, once


def test_a_fifo_given_directly_does_not_block(model, tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    code, _, err = classify("--model", model, tmp_path / "pipe.jpg")
    assert code == 2 and "a FIFO, not an image file" in err


def test_an_unreadable_folder_is_reported_as_such(tmp_path, monkeypatch):
    from device import classify as cli

    locked = tmp_path / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path):  # the tests run as root, which can read anything: refuse like an ordinary user's folder
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(cli.os, "scandir", scandir)
    assert list(cli.expand([locked])) == [(locked, "permission denied (folder cannot be read)")]


def test_file_names_that_are_not_utf8_never_crash_the_output(model, tmp_path):
    d = tmp_path / "names"
    d.mkdir()
    shutil.copy(_scan(tmp_path / "x.png"), os.path.join(os.fsencode(d), b"scan-\xff.png"))
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    for fmt in ([], ["--csv"], ["--json"]):
        p = subprocess.run([sys.executable, "-m", "device.classify", "--model", str(model), *fmt, str(d)],
                           capture_output=True, cwd=ROOT, env=env, timeout=120)
        out = p.stdout.decode("utf-8")  # strict: the output itself is valid UTF-8
        assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
        if fmt == ["--json"]:  # readable text, and the exact bytes: the very file can be found again
            r = json.loads(out)
            assert r["path"].endswith("scan-\\xff.png") and "\\ud" not in out  # no lone surrogates for jq to mangle
            assert os.path.isfile(base64.b64decode(r["path_bytes_b64"]))
        else:
            assert "scan-\\xff.png" in out


@pytest.mark.parametrize("args, says", [
    (["--threads", "0"], "threads must be an integer from 1 to 256"),
    (["--threads", "-1"], "threads must be an integer from 1 to 256"),
    (["--threads", "2147483648"], "threads must be an integer from 1 to 256"),
    (["--min-confidence", "2"], "--min-confidence"),
])
def test_bad_options_are_usage_errors(model, tmp_path, args, says):
    code, _, err = classify("--model", model, *args, _scan(tmp_path / "x.png"))
    assert code == 2 and says in err and "model" not in err.replace("--model", ""), err


@pytest.mark.parametrize("args, says", [(["--runs", "0"], "--runs 0"), (["--eval", "missing.json"], "missing.json"),
                                        (["--threads", "0"], "--threads 0")])
def test_bench_arguments_are_checked_up_front(args, says):
    p = subprocess.run([sys.executable, "-m", "device.bench", "--model", str(FIXTURE), *args], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_ties_go_to_the_first_class_in_the_cli_and_in_the_metrics():
    from device.metrics import ranked, summarize

    probs = np.array([[0.1, 0.4, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]])
    assert [int(ranked(p)[0]) for p in probs] == [1, 0]
    assert summarize(np.array([1, 0]), probs, list("abcd"))["accuracy"] == 1.0


def test_an_internal_error_exits_3_and_the_batch_goes_on(model, tmp_path, monkeypatch, capsys):
    from device import classify as cli
    from device.runtime import Classifier

    real = Classifier.model_inputs

    def broken(self, path, models=None):
        if path.name == "bad.png":
            raise KeyError("bug")
        return real(self, path, models)

    monkeypatch.setattr(Classifier, "model_inputs", broken)
    _scan(tmp_path / "bad.png")
    _scan(tmp_path / "good.png")
    assert cli.main(["--model", str(model), "--json", str(tmp_path)]) == 3
    out, err = capsys.readouterr()
    rows = {os.path.basename(r["path"]): r for r in map(json.loads, out.splitlines())}
    assert rows["bad.png"]["error"] == "internal error: KeyError: 'bug'" and "label" in rows["good.png"]
    assert err.splitlines()[-1].startswith("internal error on 1 input(s): exit 3") and "Traceback" not in err


def test_library_warnings_do_not_flood_stderr(model, tmp_path):
    d = tmp_path / "pal"
    d.mkdir()
    for i in range(3):  # palette images with byte transparency: Pillow warns about each
        img = Image.fromarray(np.full((20, 20), i, np.uint8)).convert("P")
        img.info["transparency"] = b"\x00" * 256
        img.save(d / f"p{i}.png", transparency=b"\x00" * 256)
    code, out, err = classify("--model", model, d)
    assert code == 0 and len(out.splitlines()) == 3 and err.strip() == "", err
