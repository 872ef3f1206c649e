"""A bounded fuzz run: a few hundred mutated image and DICOM files through one `device.classify --json` process
under a 1 GB address-space cap. Every file gets exactly one JSON record; nothing crashes or runs away."""
import io
import json
import os
import struct
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.device.conftest import ROOT
from tests.device.hostile import limit_address_space

N_PER_SEED = 70  # x 4 formats = 280 files


def seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    scan = rng.integers(0, 255, (48, 40), dtype=np.uint8)
    out = {}
    for ext, kw in (("jpg", {"quality": 90}), ("png", {}), ("progressive.jpg", {"quality": 90, "progressive": True})):
        buf = io.BytesIO()
        Image.fromarray(scan).save(buf, "PNG" if ext == "png" else "JPEG", **kw)
        out[ext] = buf.getvalue()
    from pydicom.data import get_testdata_file

    out["dcm"] = open(get_testdata_file("MR_small.dcm", download=False), "rb").read()
    return out


def mutate(data: bytes, rng) -> bytes:
    b = bytearray(data)
    kind = rng.integers(0, 4)
    if kind == 0:    # bit flips
        for _ in range(rng.integers(1, 8)):
            b[rng.integers(0, len(b))] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # truncation
        b = b[: rng.integers(0, len(b))]
    elif kind == 2:  # absurd numbers in the header region (dimensions, lengths, offsets)
        for _ in range(rng.integers(1, 4)):
            pos = int(rng.integers(0, min(len(b) - 4, 400)))
            struct.pack_into(">I" if rng.integers(0, 2) else "<I", b, pos,
                             int(rng.choice([0, 1, 65535, 62298, 4_000_000, 2**31 - 1, 2**32 - 1])))
    else:            # a random run of bytes overwritten
        pos = int(rng.integers(0, len(b)))
        b[pos: pos + 64] = rng.integers(0, 256, min(64, len(b) - pos), dtype=np.uint8).tobytes()
    return bytes(b)


def test_fuzzed_files_each_get_one_json_record_in_bounded_memory(model, tmp_path):
    d = tmp_path / "fuzz"
    d.mkdir()
    rng = np.random.default_rng(2026)
    for ext, data in seeds().items():
        (d / f"seed.{ext}").write_bytes(data)              # unmutated: must classify
        for i in range(N_PER_SEED):
            (d / f"{ext}{i:03d}.{ext}").write_bytes(mutate(data, rng))
    # mutations with a known answer: the one line each must say
    must_fail = {"empty.jpg": (b"", "empty file"), "text.png": (b"just some text, no picture" * 4, "not an image"),
                 "half.png": (seeds()["png"][:60], "corrupt or truncated"),
                 "nopixels.dcm": (seeds()["dcm"][:2000], "DICOM")}
    for name, (data, _) in must_fail.items():
        (d / name).write_bytes(data)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "device.classify", "--model", str(model), "--json", str(d)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                       preexec_fn=limit_address_space(1.0))
    rows = [json.loads(line) for line in p.stdout.splitlines()]  # every line is JSON
    assert "Traceback" not in p.stderr and p.returncode == 1, p.stderr[-2000:]
    assert sorted(os.path.basename(r["path"]) for r in rows) == sorted(f.name for f in d.iterdir())
    by_name = {os.path.basename(r["path"]): r for r in rows}
    for ext in ("jpg", "png", "progressive.jpg", "dcm"):
        assert "error" not in by_name[f"seed.{ext}"] and by_name[f"seed.{ext}"]["label"] in ("glioma", "meningioma",
                                                                                            "notumor", "pituitary")
    for name, (_, says) in must_fail.items():
        assert says in by_name[name].get("error", ""), (name, by_name[name])
    failed = [r for r in rows if "error" in r]
    assert all(r["error"] and "\n" not in r["error"] for r in failed)
    # a bit flip in a JPEG's or DICOM's pixel data still decodes: most mutations must give an answer, not an error
    # (PNG is left out: its chunks carry CRCs, so every mutation is rightly refused)
    tolerant = [r for r in rows if not r["path"].endswith(".png")]
    assert sum("error" in r for r in tolerant) < 0.6 * len(tolerant)
