"""Golden preprocessing output: the exact bytes the contract gives for a few fixture images, pinned. The resize
filter and the decoders are part of the contract; a Pillow upgrade that changes a single pixel fails here, before
a model trained on the old pixels meets the new ones (issue 42). If it fails after a deliberate change: bump
CONTRACT_VERSION (device/preprocess.py), retrain, and pin the new hashes."""
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from device.preprocess import decode_scan, to_model_input

GOLDEN = {  # (file, size, contract) -> sha256 of the model input's bytes, first 16 hex digits (Pillow 13.0)
    ("gray.png", 96, 2): "f73a4206ee246505", ("gray.png", 128, 2): "3118bba21ed86f4a",
    ("gray.png", 96, 1): "ec3d2dcf6566ee77", ("rgb.jpg", 96, 2): "1cadcf0a46c9a8fd",
    ("rgb.jpg", 128, 2): "5a2b37504a53f5ff", ("rgb.jpg", 96, 1): "9f0dede43685c396",
    ("wide16.png", 96, 2): "fc588b23be9b1128", ("wide16.png", 128, 2): "e315880c9ddffa23",
    ("wide16.png", 96, 1): "cad67f8aeeac2077", ("gray.png", 96, 3): "0f76325ae32a10bb",
    ("rgb.jpg", 128, 3): "329f1920eec8238f", ("wide16.png", 96, 3): "827666cdea312fa9",
}


def _fixtures():
    """A grey PNG, the same as an RGB-encoded JPEG, and a wide 16-bit PNG: made from a fixed seed."""
    rng = np.random.default_rng(2026)
    g = np.zeros((150, 120), np.uint8)
    g[20:130, 15:105] = rng.integers(40, 220, (110, 90), dtype=np.uint8)
    out = {}
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, "PNG")
    out["gray.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(g).convert("RGB").save(buf, "JPEG", quality=90)
    out["rgb.jpg"] = buf.getvalue()
    w = np.zeros((90, 200), np.uint16)
    w[10:80, 30:170] = rng.integers(0, 4000, (70, 140)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(w).save(buf, "PNG")
    out["wide16.png"] = buf.getvalue()
    return out


@pytest.mark.parametrize("name, size, contract", sorted(GOLDEN))
def test_the_preprocessing_bytes_are_the_pinned_ones(tmp_path, name, size, contract):
    f = tmp_path / name
    f.write_bytes(_fixtures()[name])
    img, _ = decode_scan(f)
    got = hashlib.sha256(to_model_input(img, size, contract).tobytes()).hexdigest()[:16]
    assert got == GOLDEN[(name, size, contract)], (name, size, contract, got)
