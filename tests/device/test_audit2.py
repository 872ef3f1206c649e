"""The second hostile-input audit (issue 33): each input is built here at run time, bounded to seconds, and gets
one line and a documented exit code."""
import base64
import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.device.conftest import ROOT, classify
from tests.device.hostile import classify_peak


def _png(path, value=100, size=(40, 40)):
    Image.new("L", size, value).save(path)
    return path


def _resign(model, blob: bytes, tmp_path, name):
    m = tmp_path / f"{name}.tflite"
    m.write_bytes(blob)
    meta = json.loads(model.with_suffix(".json").read_text())
    m.with_suffix(".json").write_text(json.dumps(dict(meta, sha256=hashlib.sha256(blob).hexdigest())))
    return m


def _dicom_bytes():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    return pydicom, open(get_testdata_file("MR_small.dcm", download=False), "rb").read()


def test_a_deflated_dicom_bomb_is_refused_before_it_is_inflated(model, tmp_path):
    pydicom, data = _dicom_bytes()
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.add_new(0x00091010, "OB", bytes(48 << 20))   # a private element of 48 MB of zeros before the pixels
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    f = tmp_path / "bomb.dcm"
    ds.save_as(f, enforce_file_format=True)
    assert f.stat().st_size < 1 << 20                  # the zeros deflate to almost nothing
    r = classify_peak("--model", model, "--json", f)
    row = json.loads(r["out"])
    assert r["rc"] == 1 and "deflated DICOM" in row["error"] and "export it uncompressed" in row["error"], r
    assert r["rss_mb"] < 150, r["rss_mb"]


def _progressive_bomb(repeats: int) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512), dtype=np.uint8))
    img.save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last_scan, eoi = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:eoi] + data[last_scan:eoi] * repeats + data[eoi:]


def test_a_jpeg_with_thousands_of_scans_is_refused_in_moments(model, tmp_path):
    f = tmp_path / "cpu_bomb.jpg"
    f.write_bytes(_progressive_bomb(3000))
    ok = tmp_path / "normal.jpg"
    ok.write_bytes(_progressive_bomb(0))                   # an ordinary progressive JPEG still classifies
    t0 = time.perf_counter()
    code, out, err = classify("--model", model, "--json", f, ok)
    rows = {os.path.basename(r["path"]): r for r in map(json.loads, out.splitlines())}
    assert code == 1 and "more than 64 scans" in rows["cpu_bomb.jpg"]["error"] and "label" in rows["normal.jpg"], err
    assert time.perf_counter() - t0 < 20


def test_a_file_deep_down_a_folder_tree_is_classified_and_so_are_the_others(model, tmp_path):
    deep = path = tmp_path / "top"
    deep.mkdir()
    levels = [deep]
    for _ in range(990):  # (os.makedirs recurses: it cannot build this tree itself)
        path = path / "d"
        path.mkdir()
        levels.append(path)
    _png(path / "deep.png")
    _png(deep / "shallow.png")
    try:
        code, out, err = classify("--model", model, "--json", deep)
    finally:  # pytest's own clean-up of old temporary folders recurses too: take the tree down here
        os.remove(path / "deep.png")
        for level in reversed(levels[1:]):
            level.rmdir()
    names = sorted(os.path.basename(json.loads(ln)["path"]) for ln in out.splitlines())
    assert code == 0 and names == ["deep.png", "shallow.png"], err


def test_pacs_exports_named_by_uid_are_sniffed_and_skipped_files_are_counted(model, tmp_path):
    _, data = _dicom_bytes()
    d = tmp_path / "pacs"
    d.mkdir()
    (d / "1.2.840.113619.2.1").write_bytes(data)          # a UID name: dots, no image extension
    (d / "README.txt").write_text("export notes")
    (d / "DICOMDIR-like").write_bytes(b"\x00" * 300)       # no extension, not DICOM
    code, out, err = classify("--model", model, "--json", d)
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert code == 0 and [os.path.basename(r["path"]) for r in rows] == ["1.2.840.113619.2.1"], err
    assert "label" in rows[0]
    assert "skipped 2 file(s)" in err and "README.txt" in err and len(err.strip().splitlines()) == 1, err


def test_file_names_cannot_forge_output_lines_or_formulas(model, tmp_path):
    d = tmp_path / "names"
    d.mkdir()
    evil = "a\nfake.png: glioma  (glioma 99.0%)  1.0 ms\x1b[31m\u202egnp.png"
    _png(d / evil)
    _png(d / "=HYPERLINK(1).png")
    code, out, err = classify("--model", model, d)
    assert code == 0 and len(out.splitlines()) == 2, out
    _png(d / "-x.png")          # one line per file, no fake third
    assert "\x1b" not in out and "\u202e" not in out and "\\x0a" in out and "\\u202e" in out
    code, out, _ = classify("--model", model.resolve(), "--csv", "--", "=HYPERLINK(1).png", "-x.png", cwd=d)
    cells = [row[0] for row in csv.reader(io.StringIO(out))][1:]
    assert cells == ["'=HYPERLINK(1).png", "'-x.png"]            # text in a spreadsheet, not formulas
    code, out, _ = classify("--model", model, "--json", d)
    got = {base64.b64decode(r["path_bytes_b64"]) if "path_bytes_b64" in r else os.fsencode(r["path"])
           for r in map(json.loads, out.splitlines())}
    assert got == {os.fsencode(d / n) for n in (evil, "=HYPERLINK(1).png", "-x.png")}   # exact, reversible


def test_the_api_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    code = ("from device.runtime import Classifier\nfrom device.preprocess import ImageError\n"
            f"try:\n    Classifier().classify({str(fifo)!r})\nexcept ImageError as e:\n    print('ImageError:', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.stdout.strip() == "ImageError: a FIFO, not an image file", p.stderr


@pytest.mark.parametrize("runtime", ["tflite-runtime", "litert"])
def test_a_model_whose_tensor_name_is_not_utf8_is_one_line(model, tmp_path, runtime):
    pytest.importorskip({"tflite-runtime": "tflite_runtime", "litert": "ai_edge_litert"}[runtime])
    from device.runtime import Classifier, ClassifierOptions

    name = Classifier(model, ClassifierOptions(runtime=runtime)).interpreter.get_input_details()[0]["name"]
    data = bytearray(model.read_bytes())
    pos = bytes(data).index(name.encode())
    data[pos] = 0xFF                                   # same length: the flatbuffer stays well-formed
    m = _resign(model, bytes(data), tmp_path, "badname")
    code, out, err = classify("--runtime", runtime, "--model", m, _png(tmp_path / "x.png"))
    assert code == 2 and "not a valid TFLite model" in err and len(err.strip().splitlines()) == 1, err


def test_a_sidecar_nested_100000_deep_or_of_200_mb_is_one_line(model, tmp_path):
    side = model.with_suffix(".json")
    side.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = classify("--model", model, _png(tmp_path / "x.png"))
    assert code == 2 and "nested too deeply" in err and len(err.strip().splitlines()) == 1, err
    with open(side, "w") as fh:
        fh.write(" " * (9 << 20) + "{}")
    r = classify_peak("--model", model, _png(tmp_path / "x.png"))
    assert r["rc"] == 2 and "a sidecar is at most" in r["err"] and r["rss_mb"] < 100, r


def test_ood_statistics_that_are_not_finite_are_refused(ood_model, tmp_path):
    from device.ood import pack

    side = ood_model.with_suffix(".json")
    meta = json.loads(side.read_text())
    d = meta["ood"]["features"]
    w = np.eye(d, dtype=np.float32)
    w[0, 0] = np.nan
    meta["ood"]["whiten"] = pack(w)
    side.write_text(json.dumps(meta))
    code, out, err = classify("--model", ood_model, "--json", _png(tmp_path / "x.png"))
    assert code == 2 and "not finite" in err and out == "", err


def test_decoder_noise_never_reaches_stderr_beside_the_files_line(model, tmp_path):
    """Whatever a decoder library prints goes into the worker's capture (device/isolate.py), folded into the file's
    own line: a garbled JPEG, a garbled PNG and a cut DICOM give one line each and the summary, nothing else."""
    from pydicom.data import get_testdata_file

    files = []
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)).save(buf, fmt)
        data = bytearray(buf.getvalue())
        for i in range(300, len(data) - 100, 97):  # garble the entropy-coded / deflate data, keep the header
            data[i] ^= 0x5A
        files.append(tmp_path / f"noisy.{fmt.lower()}")
        files[-1].write_bytes(bytes(data))
    files.append(tmp_path / "cut.dcm")
    files[-1].write_bytes(open(get_testdata_file("MR_small.dcm", download=False), "rb").read()[:3000])
    code, out, err = classify("--model", model, *files)
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 4, (code, lines)
    assert all(ln.startswith(tuple(map(str, files))) for ln in lines[:3]) and lines[3] == "3 of 3 inputs failed"


def test_only_picture_decoders_open_files(model, tmp_path):
    f = tmp_path / "scan.jpg"
    f.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    code, out, err = classify("--model", model, "--json", f)
    assert code == 1 and json.loads(out)["error"] == "not an image (unrecognised format)", out


def test_csv_records_are_whole_lines_flushed_as_they_are_done(model, tmp_path):
    """A record is out as soon as its file is done: block buffering would hold it until the batch ends."""
    from tests.device.hostile import png_full

    d = tmp_path / "batch"
    d.mkdir()
    _png(d / "a_small.png")
    for name in ("b_big.png", "c_big.png"):          # about a second each to decode: the batch is still running
        (d / name).write_bytes(png_full(6000, 6000, "L"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as on a board: a pipe is buffered
    p = subprocess.Popen([sys.executable, "-m", "device.classify", "--model", str(model), "--csv", str(d)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    header, first = p.stdout.readline(), p.stdout.readline()
    running = p.poll() is None
    p.send_signal(signal.SIGTERM)
    rest, _ = p.communicate(timeout=60)
    assert first.startswith(str(d / "a_small.png")) and running
    rows = list(csv.reader(io.StringIO(header + first + rest)))
    assert all(len(r) == len(rows[0]) for r in rows)             # no cut record


@pytest.mark.parametrize("kw, says", [
    ({"min_confidence": "0.5"}, "min_confidence must be a number"),
    ({"min_confidence": None}, "min_confidence must be a number"),
    ({"reject_ood": "no"}, "reject_ood must be True or False"),
    ({"threads": 2 ** 31}, "threads must be an integer from 1 to 256"),
])
def test_api_options_of_the_wrong_type_are_value_errors(kw, says):
    from device.runtime import ClassifierOptions

    with pytest.raises(ValueError, match=says):
        ClassifierOptions(**kw).validate()


def test_an_api_array_has_the_pixel_cap():
    from device.preprocess import ImageError
    from device.runtime import Classifier

    big = np.broadcast_to(np.zeros(1, np.uint8), (8000, 6000))   # 48 MP as a view of one byte
    with pytest.raises(ImageError, match="too large"):
        Classifier().classify(big)


def _head(side=6320):
    g = np.zeros((side, side), np.uint8)
    g[side // 6:side * 5 // 6, side // 5:side * 4 // 5] = 90
    return Image.fromarray(g)


def _dicom16(path, window: bool):
    pydicom, data = _dicom_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    a = np.asarray(_head(), np.uint16) * 16
    ds.Rows, ds.Columns = a.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = a.tobytes()
    for k in ("WindowCenter", "WindowWidth"):
        if k in ds:
            del ds[k]
    if window:
        ds.WindowCenter, ds.WindowWidth = 1500, 3000
    ds.save_as(path)


def _rotated_png(path, mode):
    exif = Image.Exif()
    exif[0x0112] = 6 if mode == "RGB" else 8
    Image.new(mode, (8000, 5000), (40,) * len(mode)).save(path, "PNG", exif=exif, compress_level=1)


@pytest.mark.slow
@pytest.mark.parametrize("name, make, answered", [
    ("wide.webp", lambda p: Image.new("RGBA", (16383, 2441), (40, 40, 40, 255)).save(p, "WEBP", lossless=True), False),
    ("dicom16_window.dcm", lambda p: _dicom16(p, True), True),
    ("dicom16.dcm", lambda p: _dicom16(p, False), True),
    ("cmyk_progressive.jpg", lambda p: _head().convert("CMYK").save(p, "JPEG", progressive=True, quality=80), False),
    ("cmyk_baseline.jpg", lambda p: _head().convert("CMYK").save(p, "JPEG", quality=80), True),
    ("progressive444.jpg", lambda p: _head().convert("RGB").save(p, "JPEG", progressive=True, subsampling=0), False),
    ("rgb_rotated.png", lambda p: _rotated_png(p, "RGB"), True),
    ("rgba_rotated.png", lambda p: _rotated_png(p, "RGBA"), True),
])
def test_valid_images_inside_the_pixel_limit_stay_under_300_mb(model, tmp_path, name, make, answered):
    """Answered, or refused in one line before decoding (formats that only decode whole, progressive JPEGs whose
    coefficients alone exceed the budget); under 300 MB either way."""
    f = tmp_path / name
    make(f)
    r = classify_peak("--model", model, "--json", f)
    row = json.loads(r["out"])
    assert ("label" in row) == answered and r["rc"] == (0 if answered else 1), row
    assert r["rss_mb"] < 300, r["rss_mb"]
