"""Hand-made hostile inputs for the device tests: files whose headers lie, and a peak-memory probe."""
from __future__ import annotations

import io
import json
import resource
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image

from tests.device.conftest import ROOT


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims width x height: decoding runs out of data."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, rows: int = 1) -> bytes:
    """A grayscale PNG header of width x height with only `rows` rows of data behind it."""
    raw = zlib.compress((b"\0" + b"\x10" * width) * rows)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b""))


def png_full(width: int, height: int, mode: str) -> bytes:
    """A complete PNG of the given size and mode ('L', 'I;16', 'RGBA'), compressed: small file, big image."""
    if mode == "I;16":
        img = Image.fromarray(np.full((height, width), 1000, np.uint16))
    else:
        img = Image.new(mode, (width, height), 40 if mode == "L" else (40, 40, 40, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


PROBE = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "print(__import__('json').dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr, "
         "'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")


def classify_peak(*args) -> dict:
    """Run `python -m device.classify ARGS` in a fresh process; exit code, output and its peak RSS in MB."""
    p = subprocess.run([sys.executable, "-c", PROBE, sys.executable, "-m", "device.classify", *map(str, args)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    return json.loads(p.stdout)


def limit_address_space(gb: float):
    """preexec_fn for subprocess: an address-space cap, so an unbounded allocation fails instead of thrashing."""
    def apply():
        limit = int(gb * 1024 ** 3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply
