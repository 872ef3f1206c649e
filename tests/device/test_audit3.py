"""The third hostile-input audit (issue 40): one test per defect, each failing on fb56484. Untrusted files decode in
a worker process under OS limits (device/isolate.py); a Classifier is safe to share between threads; output
survives any terminal, a closed pipe and a full disk."""
import io
import json
import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from tests.device.conftest import ROOT, classify
from tests.device.hostile import classify_peak

MB_LIMIT = 300


def _png(path, value=100, size=(40, 40)):
    Image.new("L", size, value).save(path)
    return path


def _scan(path, seed=1):
    g = np.zeros((64, 64), np.uint8)
    g[8:56, 10:54] = np.random.default_rng(seed).integers(30, 220, (48, 44), dtype=np.uint8)
    Image.fromarray(g).save(path)
    return path


def _tiff(width, height, entries_extra, payload=b"") -> bytes:
    """A little-endian TIFF: one IFD with the baseline grey tags plus entries_extra ((tag, type, count, value or
    offset)), payload appended after the IFD (offsets into it are relative to `base`)."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (277, 3, 1, 1)] + entries_extra
    entries.sort()
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHII", tag, typ, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + payload


def tiff_huge_tile() -> bytes:
    base = 8 + 2 + 12 * 10 + 4
    return _tiff(46336, 46336, [(322, 4, 1, 46336), (323, 4, 1, 46336), (324, 4, 1, base), (325, 4, 1, 1)],
                 b"\0" * 16)


def tiff_million_strips() -> bytes:
    n = 1_000_000
    base = 8 + 2 + 12 * 9 + 4
    offsets = np.full(n, base + 8 * n, "<u4").tobytes()
    counts = np.full(n, 8, "<u4").tobytes()
    return _tiff(8, n, [(273, 4, n, base), (278, 4, 1, 1), (279, 4, n, base + 4 * n)], offsets + counts + b"\0" * 8)


def bmp_rle8(width=40000, height=1000) -> bytes:
    """A 5 KB BMP whose RLE8 data covers 40 MP: Pillow's decoder walked it for seconds."""
    rle = (b"\x00\x00" * 2 + b"\xff\x10" * 5) * 200 + b"\x00\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rle), 2835, 2835, 256, 0)
    off = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", off + len(rle), 0, 0, off) + info + palette + rle


@pytest.mark.parametrize("name, make", [
    ("tile.tif", tiff_huge_tile),               # defect 1: 2.1 GB before
    ("tile_as.png", tiff_huge_tile),            # the same bytes under a PNG name
    ("strips.tif", tiff_million_strips),        # defect 2: 415 MB and 8 s, then classified
    ("rle.bmp", bmp_rle8),                      # defect 12: 5 s of decoding
])
def test_tiff_and_bmp_worst_cases_are_one_line_in_bounded_memory(model, tmp_path, name, make):
    f = tmp_path / name
    f.write_bytes(make())
    r = classify_peak("--model", model, "--json", f)
    row = json.loads(r["out"])
    assert r["rc"] == 1 and ("not read on this device" in row["error"] or "not an image" in row["error"]), r
    assert r["rss_mb"] < MB_LIMIT, r["rss_mb"]


def _tem_bomb(repeats: int) -> bytes:
    """A progressive JPEG whose last scan is repeated, each copy behind a TEM marker (FF 01, no length)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(
        buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last_scan, eoi = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:eoi] + (b"\xff\x01" + data[last_scan:eoi]) * repeats + data[eoi:]


def test_tem_markers_do_not_hide_thousands_of_jpeg_scans(tmp_path):
    """Defect 3: the scan counter read FF 01 as a segment with a length and skipped 65 KB of scans."""
    from device.preprocess import ImageError, load_image

    f = tmp_path / "tem.jpg"
    f.write_bytes(_tem_bomb(3000))
    with pytest.raises(ImageError, match="more than 64 scans"):
        load_image(f, 32)
    f.write_bytes(_tem_bomb(2))  # two TEMs in an ordinary file are harmless
    assert load_image(f, 32).shape == (32, 32)


def _remove_tree(top):
    """Remove a folder tree of any depth without recursion."""
    stack, order = [str(top)], []
    while stack:
        d = stack.pop()
        order.append(d)
        for e in os.scandir(d):
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            else:
                os.unlink(e.path)
    for d in reversed(order):
        os.rmdir(d)


@pytest.mark.slow
def test_a_deep_chain_with_many_folders_at_the_bottom_stays_in_bounded_memory(model, tmp_path, monkeypatch):
    """Defect 4: 1,500 levels with 20,000 empty folders at the bottom reached 1.67 GB (a copy of the ancestor set
    for every folder waiting on the stack)."""
    d = tmp_path / "t"
    d.mkdir()
    monkeypatch.chdir(d)
    for _ in range(1500):
        os.mkdir("a")
        os.chdir("a")
    for i in range(20000):
        os.mkdir(f"{i}")
    monkeypatch.chdir(tmp_path)
    try:
        r = classify_peak("--model", model, "--json", d)
    finally:
        _remove_tree(d)  # pytest's own clean-up of old temporary folders recurses, and 1,500 levels overflow it
    assert r["rc"] == 2 and "folder contains no images" in r["out"], (r["out"][-300:], r["err"][-300:])
    assert r["rss_mb"] < MB_LIMIT, r["rss_mb"]


def test_links_fanning_out_reach_each_folder_once(model, tmp_path):
    """Defect 5: two links per level to the next level gave 2^levels records of one image."""
    levels = [tmp_path / f"L{i}" for i in range(11)]
    for p in levels:
        p.mkdir()
    for a, b in zip(levels, levels[1:]):
        os.symlink(b, a / "x")
        os.symlink(b, a / "y")
    _scan(levels[-1] / "scan.png")
    code, out, err = classify("--model", model, "--json", levels[0])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 1 and "label" in rows[0], (code, len(rows), err[-300:])


def _rgb_dicom(path, side, bits=8, value=None):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    dtype = np.uint8 if bits == 8 else np.uint16
    a = np.zeros((side, side, 3), dtype)
    a[side // 5: side * 4 // 5, side // 4: side * 3 // 4] = value if value is not None else 90
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    for k in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if k in ds:
            del ds[k]
    ds.PixelData = a.tobytes()
    ds.save_as(path)
    return path


def _png_many_text_chunks(n=1_500_000) -> bytes:
    from tests.device.hostile import png_chunk

    buf = io.BytesIO()
    Image.new("L", (32, 32), 60).save(buf, "PNG")
    data = buf.getvalue()
    idat = data.index(b"IDAT") - 4   # before the pixels: Pillow reads every chunk there as it opens the file
    text = png_chunk(b"tEXt", b"k\0v")
    return data[:idat] + text * n + data[idat:]


@pytest.mark.slow
@pytest.mark.parametrize("name, make", [
    ("rgb40mp.dcm", lambda p: _rgb_dicom(p, 6320)),
    ("rgb40mp16.dcm", lambda p: _rgb_dicom(p, 6320, bits=16)),
    ("text_chunks.png", lambda p: p.write_bytes(_png_many_text_chunks())),
])
def test_valid_files_that_need_too_much_memory_are_answered_or_refused_under_300_mb(model, tmp_path, name, make):
    """Defect 6: under 40 MP, still 446 to 563 MB. Whatever the format's trick, the worker's limits hold: the file
    is answered or refused in one line, and no process passes 300 MB."""
    f = tmp_path / name
    make(f)
    r = classify_peak("--model", model, "--json", f)
    row = json.loads(r["out"])
    assert r["rc"] in (0, 1) and ("label" in row or row["error"]) and "Traceback" not in r["err"], r
    assert r["rss_mb"] < MB_LIMIT, (r["rss_mb"], row)


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONUTF8": "0"}])
@pytest.mark.parametrize("fmt", [[], ["--csv"]])
def test_a_name_that_the_terminal_cannot_show_is_escaped_not_a_crash(model, tmp_path, env, fmt):
    """Defect 7: exit 3 UnicodeEncodeError, and the rest of the batch lost."""
    _scan(tmp_path / "a_M\u00fcller.png")
    _scan(tmp_path / "b.png")
    p = subprocess.run([sys.executable, "-m", "device.classify", "--model", str(model), *fmt, str(tmp_path)],
                       capture_output=True, cwd=ROOT, env={k: v for k, v in os.environ.items()
                                                           if k not in ("PYTHONIOENCODING", "LC_ALL")} | env,
                       timeout=120)
    out = p.stdout.decode("ascii")  # nothing but ASCII reached the terminal
    assert p.returncode == 0, p.stderr
    assert "M\\xfcller" in out and "b.png" in out


def test_one_classifier_shared_by_8_threads_gives_each_image_its_own_answer(ood_model, tmp_path):
    """Defect 8: 355 of 552 calls raised RuntimeError and 5 returned another image's probabilities."""
    from device.runtime import Classifier

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (60, 60), dtype=np.uint8) for _ in range(48)]
    files = [_scan(tmp_path / f"s{i}.png", seed=i) for i in range(8)]
    clf = Classifier(ood_model)
    reference = [clf.assess(x) for x in images]
    ref_files = [clf.assess(f) for f in files]
    errors, wrong = [], []

    def work(k):
        try:
            for _ in range(3):
                for i in range(k, len(images), 2):
                    r = clf.assess(images[i])
                    if not (np.array_equal(r.probabilities, reference[i].probabilities)
                            and r.ood_score == reference[i].ood_score):
                        wrong.append(i)
                f = files[k]
                if not np.array_equal(clf.assess(f).probabilities, ref_files[k].probabilities):
                    wrong.append(str(f))
        except Exception as e:  # noqa: BLE001 - any error in a thread is the defect
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    clf.close()
    assert not errors and not wrong, (errors[:3], wrong[:5])


def test_output_piped_into_head_stops_quietly(model, tmp_path):
    """Defect 9: `| head -1` gave exit 3, "internal error: BrokenPipeError"."""
    for i in range(150):
        _png(tmp_path / f"{i:03d}.png", value=i)
    p = subprocess.run(["bash", "-c", f'"{sys.executable}" -m device.classify --model "{model}" "{tmp_path}" '
                        f'| head -1; exit "${{PIPESTATUS[0]}}"'], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert len(p.stdout.splitlines()) == 1 and "internal error" not in p.stderr and p.returncode in (0, 1), p


def test_no_writable_temporary_folder_is_not_an_error(model, tmp_path, monkeypatch, capfd):
    """Defect 10: `docker run --read-only` (no usable temporary folder) made every run exit 3. (Root writes
    anywhere, so the missing folder is simulated: every temporary-file call fails as it does there.)"""
    import tempfile

    from device import classify as cli

    def none(*a, **k):
        raise FileNotFoundError(2, "No usable temporary directory found")

    f = _scan(tmp_path / "x.png")
    with monkeypatch.context() as m:  # undone before capfd's own clean-up, which needs a temporary file
        for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp", "gettempdir"):
            m.setattr(tempfile, name, none)
        code = cli.main(["--model", str(model), str(f)])
    assert code == 0 and "x.png:" in capfd.readouterr().out


def _with_scale(model, tmp_path, name, value):
    """The model with every copy of its output scale replaced by `value`, re-signed (hash and size)."""
    import hashlib

    meta = json.loads(model.with_suffix(".json").read_text())
    old = struct.pack("<f", meta["output"]["quantization"][0])
    blob = model.read_bytes()
    assert old in blob
    blob = blob.replace(old, struct.pack("<f", value))
    m = tmp_path / f"{name}.tflite"
    m.write_bytes(blob)
    m.with_suffix(".json").write_text(json.dumps(dict(meta, sha256=hashlib.sha256(blob).hexdigest(),
                                                      size_bytes=len(blob))))
    return m


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0])
@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_a_model_with_a_broken_quantisation_scale_is_refused_at_load(ood_model, tmp_path, value, fmt):
    """Defect 11: NaN or Inf scales gave exit 3 with zero records, or 'uncertain (glioma nan%)' with exit 0."""
    m = _with_scale(ood_model, tmp_path, "bad", value)
    code, out, err = classify("--model", m, *fmt, _scan(tmp_path / "x.png"))
    # refused by our check, or by the interpreter's own (a softmax output must have scale 1/256): one line either way
    assert code == 2 and ("invalid quantisation" in err or "not a valid TFLite model" in err), (code, out, err)
    assert len(err.strip().splitlines()) == 1 and out == "", (out, err)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_model_whose_feature_scale_is_broken_is_refused_at_load(ood_model, tmp_path, value):
    """Defect 11, the features output (the OOD score's input): a NaN scale exited 3 with a TypeError."""
    import hashlib

    from device.runtime import Classifier

    with Classifier(ood_model) as clf:
        old = struct.pack("<f", clf._feat["quantization"][0])
    blob = ood_model.read_bytes()
    assert old in blob
    blob = blob.replace(old, struct.pack("<f", value))
    m = tmp_path / "bad.tflite"
    m.write_bytes(blob)
    meta = json.loads(ood_model.with_suffix(".json").read_text())
    m.with_suffix(".json").write_text(json.dumps(dict(meta, sha256=hashlib.sha256(blob).hexdigest(),
                                                      size_bytes=len(blob))))
    code, out, err = classify("--model", m, "--json", _scan(tmp_path / "x.png"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (code, err)


@pytest.mark.parametrize("arg", [".", "/", ""])
def test_a_folder_or_empty_model_path_is_a_usage_error(arg, tmp_path):
    """Defect 13: exit 3 (ValueError)."""
    code, _, err = classify("--model", arg, _scan(tmp_path / "x.png"))
    assert code == 2 and err.startswith("error:") and "Traceback" not in err, (code, err)


@pytest.mark.parametrize("label", ["a\nb", "x\x1b[31m", "\u202eevil", "=cmd()", " padded", "tab\tlabel"])
def test_labels_that_could_forge_output_are_refused_at_load(model, tmp_path, label):
    """Defect 14: labels with a newline, ESC or U+202E printed raw, and '=' got no apostrophe."""
    meta = json.loads(model.with_suffix(".json").read_text())
    meta["labels"][1] = label
    model.with_suffix(".json").write_text(json.dumps(meta))
    code, out, err = classify("--model", model, "--csv", _scan(tmp_path / "x.png"))
    assert code == 2 and "'labels' must be" in err and out == "", (code, out, err)


def test_csv_quotes_line_breaks_and_defuses_disguised_formulas():
    from device.classify import csv_cell, csv_line

    assert csv_line(["a\nb", "c\rd", "e"]) == '"a\nb","c\rd",e'
    for text in (" =1+1", "\uff1d1+1", "  @SUM(A1)"):
        assert csv_cell(text) == "'" + text


def test_a_16_bit_colour_dicom_is_scaled_not_wrapped(tmp_path):
    """Defect 15: a head stored at value 256 became black (256 mod 256) and was still answered."""
    from device.preprocess import decode_scan

    img, _ = decode_scan(_rgb_dicom(tmp_path / "c16.dcm", 64, bits=16, value=256))
    a = np.asarray(img)
    assert a.max() == 255 and a[32, 32] == 255 and a[0, 0] == 0


def test_a_dicom_file_is_opened_once(tmp_path, monkeypatch):
    """Defect 16: opened three times, so a file swapped between the size check and the pixel read was decoded
    unchecked. One open, and the pixels decoded are checked against the header that was checked."""
    import builtins

    from device.preprocess import decode_scan

    f = _rgb_dicom(tmp_path / "x.dcm", 64)
    opened = []
    real = builtins.open

    def counting(file, *a, **k):
        if os.fspath(file) == os.fspath(f):
            opened.append(file)
        return real(file, *a, **k)

    monkeypatch.setattr(builtins, "open", counting)
    img, _ = decode_scan(f)
    assert img.size == (64, 64) and len(opened) == 1, opened


def test_an_unreadable_file_without_extension_is_permission_denied_not_skipped(tmp_path, monkeypatch):
    """Defect 17: counted as 'neither images nor DICOM'. (Root reads anything, so the denial is simulated.)"""
    import builtins

    from device.classify import Skipped, expand

    locked = tmp_path / "1.2.840.113619.2.55"
    locked.write_bytes(b"\0" * 200)
    real = builtins.open

    def deny(file, *a, **k):
        if os.fspath(file) == os.fspath(locked):
            raise PermissionError(13, "Permission denied")
        return real(file, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    skipped = Skipped()
    found = list(expand([tmp_path], skipped))
    assert (locked, "permission denied") in found and skipped.count == 0, (found, skipped.examples)


def test_an_empty_path_argument_does_not_search_the_current_folder(model, tmp_path):
    """Defect 18: "" classified the whole current directory."""
    _scan(tmp_path / "here.png")
    p = subprocess.run([sys.executable, "-m", "device.classify", "--model", str(model), "--json", ""],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    code, out, err = p.returncode, p.stdout, p.stderr
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and len(rows) == 1 and "empty path" in rows[0]["error"], (code, out, err)


def test_closed_or_full_stdout_is_one_line_exit_2(model, tmp_path):
    f = _scan(tmp_path / "x.png")
    cmd = f'"{sys.executable}" -m device.classify --model "{model}" "{f}"'
    closed = subprocess.run(["bash", "-c", cmd + " >&-"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert closed.returncode == 2 and "standard output is closed" in closed.stderr, closed
    if os.path.exists("/dev/full"):
        full = subprocess.run(["bash", "-c", cmd + " > /dev/full"], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        assert full.returncode == 2 and "cannot write the results" in full.stderr, full


def test_a_huge_model_of_the_wrong_size_is_refused_before_it_is_hashed(model, tmp_path):
    big = tmp_path / "big.tflite"
    with open(big, "wb") as fh:
        fh.truncate(4 << 30)  # sparse: 4 GB that would take seconds to hash
    big.with_suffix(".json").write_text(model.with_suffix(".json").read_text())
    code, _, err = classify("--model", big, _scan(tmp_path / "x.png"))
    assert code == 2 and "bytes, not" in err, err


def test_the_api_takes_numpy_integers_and_bytes_paths(model, tmp_path):
    from device.runtime import Classifier, ClassifierOptions

    f = _scan(tmp_path / "x.png")
    with Classifier(model, ClassifierOptions(top_k=np.int64(2), threads=np.int32(1))) as clf:
        assert len(clf.classify(os.fsencode(f))) == 2


def test_a_fifo_without_extension_in_a_folder_is_counted_not_silent(model, tmp_path):
    d = tmp_path / "scans"
    d.mkdir()
    os.mkfifo(d / "stream")
    _scan(d / "x.png")
    code, _, err = classify("--model", model, d)
    assert code == 0 and "skipped 1 file(s)" in err and "stream" in err, err


def _slow_jpeg(path):
    """A legal progressive JPEG of 3000x3000 whose last scan is repeated 50 times (under the 64-scan check): about
    2 s of CPU to decode on x86."""
    rng = np.random.default_rng(0)
    g = (np.add.outer(np.arange(3000), np.arange(3000)) % 256).astype(int) + rng.integers(-8, 8, (3000, 3000))
    buf = io.BytesIO()
    Image.fromarray(np.clip(g, 0, 255).astype(np.uint8)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last, eoi = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    path.write_bytes(data[:eoi] + data[last:eoi] * 50 + data[eoi:])
    return path


@pytest.mark.slow
def test_decodes_past_their_cpu_or_wall_clock_time_are_killed_and_the_batch_goes_on(tmp_path):
    """The OS limits themselves, whatever the format: a worker whose file needs more CPU time than it is given is
    killed by SIGXCPU, one that takes longer than the wall-clock limit is killed by this side; each file gets one
    line, and the next file is decoded by a fresh worker."""
    from device.isolate import DecodeWorker
    from device.preprocess import ImageError

    slow, small = _slow_jpeg(tmp_path / "slow.jpg"), _scan(tmp_path / "small.png")
    w = DecodeWorker(memory_mb=256, cpu_seconds=0.01, wall_seconds=60)
    with pytest.raises(ImageError, match="CPU time"):
        w.decode(slow, 32, 2)
    assert w.decode(small, 32, 2)[0].shape == (32, 32) and w.starts == 2
    w.close()
    w = DecodeWorker(memory_mb=256, cpu_seconds=60, wall_seconds=0.3)
    with pytest.raises(ImageError, match="longer than 0.3 s"):
        w.decode(slow, 32, 2)
    assert w.decode(small, 32, 2)[0].shape == (32, 32) and w.starts == 2
    w.close()


def test_a_decode_past_the_memory_limit_is_one_line_and_the_next_file_decodes(tmp_path):
    from device.isolate import DecodeWorker
    from device.preprocess import ImageError

    big = tmp_path / "rgba.png"
    Image.new("RGBA", (5000, 5000), (40, 40, 40, 255)).save(big, compress_level=1)   # 100 MB decoded
    w = DecodeWorker(memory_mb=48, cpu_seconds=20, wall_seconds=60)
    with pytest.raises(ImageError, match="48 MB|memory"):
        w.decode(big, 32, 2)
    assert w.decode(_scan(tmp_path / "small.png"), 32, 2)[0].shape == (32, 32)
    w.close()


def test_where_the_interpreter_cannot_be_started_again_the_worker_is_forked(tmp_path, monkeypatch):
    """Under qemu-user (make pi-smoke) sys.executable is an emulated binary the host cannot exec: the same worker is
    forked instead, with the same limits and the same one-line answers."""
    from device import isolate
    from device.preprocess import ImageError

    def no_exec(*a, **k):
        raise OSError(8, "Exec format error")

    monkeypatch.setattr(isolate.subprocess, "Popen", no_exec)
    w = isolate.DecodeWorker(memory_mb=256, cpu_seconds=10, wall_seconds=60)
    assert w.decode(_scan(tmp_path / "a.png"), 32, 2)[0].shape == (32, 32)
    assert type(w.proc).__name__ == "_Forked"
    (tmp_path / "b.png").write_bytes(b"no picture")
    with pytest.raises(ImageError, match="not an image"):
        w.decode(tmp_path / "b.png", 32, 2)
    w.close()
