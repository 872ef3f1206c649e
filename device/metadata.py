"""Model metadata: the JSON sidecar the device trusts before it runs a model.

`model.tflite` is always shipped with `model.json` beside it. The device checks
the SHA-256 of the .tflite bytes and the preprocessing contract version against
it, so a swapped, truncated or re-converted model is refused, not run.
"""
from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from pathlib import Path

from device.preprocess import CONTRACT_VERSION, CONTRACTS

FORMAT = "mri-edge-model/1"


class ModelError(RuntimeError):
    """A model that must not be run; the message says why."""


MAX_LABEL = 64


def label_ok(label) -> bool:
    """A class name that cannot forge output: 1 to MAX_LABEL characters, starting with a letter or digit, made of
    letters, digits, spaces and _ - . ( ) / only (no control, format or bidi characters, no formula start)."""
    return (isinstance(label, str) and 0 < len(label) <= MAX_LABEL and label[0].isalnum() and label == label.strip()
            and all(c.isalnum() or c in " _-.()/" for c in label)
            and all(unicodedata.category(c)[0] in "LNZP" and unicodedata.category(c) not in ("Zl", "Zp")
                    for c in label))


# The shipped sidecar is ~200 KB (the OOD statistics); anything far larger is not one, and would cost memory.
MAX_SIDECAR_BYTES = 8 << 20


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(model_path) -> Path:
    return Path(model_path).with_suffix(".json")


def make_metadata(*, model_path, labels, input_size, input_dtype, input_quant, output_dtype,
                  output_quant, output_kind="probabilities", run=None, metrics=None, extra=None) -> dict:
    meta = {
        "format": FORMAT,
        "model_file": Path(model_path).name,
        "sha256": sha256_file(model_path),
        "size_bytes": Path(model_path).stat().st_size,
        "labels": list(labels),
        "input": {"size": int(input_size), "channels": 1, "dtype": input_dtype,
                  "quantization": input_quant},
        "output": {"dtype": output_dtype, "quantization": output_quant, "kind": output_kind},
        "preprocess": {"contract_version": CONTRACT_VERSION, "color": "grayscale",
                       "resize": "head crop, stretched to the square, bilinear", "pixels": "uint8 0..255"},
        "run": run or {},
        "metrics": metrics or {},
    }
    if extra:
        meta.update(extra)
    return meta


def _fail(side, field, want, got) -> ModelError:
    return ModelError(f"metadata {side}: '{field}' must be {want} (found {json.dumps(got)[:60]})")


def validate(meta, side) -> None:
    """Every field the device relies on, its type and range, checked in one place; ModelError names the field."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"metadata {side} is not in format {FORMAT}")
    for key in ("sha256", "labels", "input", "output", "preprocess"):
        if key not in meta:
            raise ModelError(f"metadata {side} lacks '{key}'")
    sha = meta["sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise _fail(side, "sha256", "64 lower-case hex digits", sha)
    labels = meta["labels"]
    if not (isinstance(labels, list) and 2 <= len(labels) <= 1000 and all(label_ok(x) for x in labels)
            and len(set(labels)) == len(labels)):
        raise _fail(side, "labels", f"a list of at least 2 distinct names (letters, digits, spaces, _-.()/; at "
                                    f"most {MAX_LABEL} characters, starting with a letter or digit)", labels)
    for part in ("input", "output", "preprocess"):
        if not isinstance(meta[part], dict):
            raise _fail(side, part, "an object", meta[part])
    size = meta["input"].get("size")
    if not (type(size) is int and 8 <= size <= 4096):
        raise _fail(side, "input.size", "an integer from 8 to 4096", size)
    for part in ("input", "output"):
        if meta[part].get("dtype") not in ("uint8", "int8", "float32", "float16"):
            raise _fail(side, f"{part}.dtype", "uint8, int8, float32 or float16", meta[part].get("dtype"))
        q = meta[part].get("quantization")
        if not (isinstance(q, list) and len(q) == 2 and type(q[0]) in (int, float) and type(q[1]) is int):
            raise _fail(side, f"{part}.quantization", "[scale, zero_point]", q)
    cv = meta["preprocess"].get("contract_version")
    if type(cv) is not int:
        raise _fail(side, "preprocess.contract_version", "an integer", cv)
    ood = meta.get("ood")  # optional: models converted before the OOD flag have none
    if ood is not None:
        if not isinstance(ood, dict):
            raise _fail(side, "ood", "an object", ood)
        if not (type(ood.get("features")) is int and ood["features"] > len(labels)):
            raise _fail(side, "ood.features", "an integer larger than the number of labels", ood.get("features"))
        t = ood.get("threshold")
        if not (type(t) in (int, float) and math.isfinite(t) and 1e-20 <= t <= 1e20):
            raise _fail(side, "ood.threshold", "a finite number from 1e-20 to 1e20", t)
        for key in ("whiten", "means"):
            if not isinstance(ood.get(key), str):
                raise _fail(side, f"ood.{key}", "a base64 string", ood.get(key))


def read_metadata(model_path) -> dict:
    """Load and validate the sidecar of `model_path`; raise ModelError with a clear reason."""
    model_path = Path(model_path)
    if not model_path.is_file():
        what = "is a folder, not a model file" if model_path.is_dir() else "model file not found"
        raise ModelError(f"{what}: {model_path}")
    side = sidecar_path(model_path)
    if not side.is_file():
        raise ModelError(f"metadata not found: {side} (every model ships with a JSON sidecar)")
    try:
        if side.stat().st_size > MAX_SIDECAR_BYTES:
            raise ModelError(f"metadata {side} is {side.stat().st_size:,} bytes (a sidecar is at most "
                             f"{MAX_SIDECAR_BYTES:,}): not a sidecar of this project")
        meta = json.loads(side.read_text())
    except RecursionError:
        raise ModelError(f"metadata {side} is not a sidecar (nested too deeply to read)") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"metadata {side} is not valid JSON ({(str(e).splitlines() or [''])[0][:200]})") from None
    validate(meta, side)
    size = meta.get("size_bytes")
    if type(size) is int and size != model_path.stat().st_size:  # before hashing: a 4 GB file is refused at once
        raise ModelError(f"model {model_path.name} does not match its metadata ({model_path.stat().st_size:,} bytes, not "
                         f"{size:,}): the file was changed or corrupted; copy the .tflite and its .json again, as a "
                         f"pair, from the same release")
    actual = sha256_file(model_path)
    if actual != meta["sha256"]:
        raise ModelError(
            f"model {model_path.name} does not match its metadata (sha256 {actual[:12]}... "
            f"!= {meta['sha256'][:12]}...): the file was changed or corrupted; copy the .tflite and its .json "
            f"again, as a pair, from the same release"
        )
    cv = meta["preprocess"]["contract_version"]
    if cv not in CONTRACTS:
        raise ModelError(f"model was built for preprocessing contract v{cv}, this device code implements "
                         f"v{', v'.join(map(str, CONTRACTS))}: use a device package from the model's release")
    return meta
