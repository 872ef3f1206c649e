"""Interpreter loading and the one inference path the board runs.

tflite-runtime first (Pi OS Bookworm, 32-bit Pi OS), LiteRT (`ai-edge-litert`)
when it is missing (Python >= 3.12, e.g. Pi OS Trixie). Never TensorFlow.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np

from device.metadata import ModelError, read_metadata
from device.preprocess import load_image

RUNTIMES = {
    "tflite-runtime": "tflite_runtime.interpreter",
    "litert": "ai_edge_litert.interpreter",
}


class RuntimeMissing(ModelError):
    pass


def _import_runtime(name: str):
    module = RUNTIMES[name]
    try:
        return importlib.import_module(module).Interpreter
    except ImportError as e:
        text = str(e)
        if "numpy" in text.lower() or "_ARRAY_API" in text or "multiarray" in text:
            import numpy

            raise RuntimeMissing(
                f"{name} failed to import with numpy {numpy.__version__}: it was built against "
                f'numpy 1.x and cannot load with numpy 2; fix: pip install "numpy<2"'
            ) from None
        raise RuntimeMissing(f"{name} is not installed ({module}: {text})") from None
    except AttributeError as e:  # numpy 2 ABI mismatch can also surface this way
        raise RuntimeMissing(
            f'{name} failed to import ({e}); if numpy >= 2 is installed: pip install "numpy<2"'
        ) from None


def load_interpreter_class(runtime: str = "auto"):
    """Return (name, Interpreter class)."""
    if runtime != "auto":
        if runtime not in RUNTIMES:
            raise RuntimeMissing(f"unknown runtime '{runtime}' (choose: auto, {', '.join(RUNTIMES)})")
        return runtime, _import_runtime(runtime)
    errors = []
    for name in RUNTIMES:
        try:
            return name, _import_runtime(name)
        except RuntimeMissing as e:
            errors.append(str(e))
    raise RuntimeMissing(
        "no TFLite interpreter available: " + "; ".join(errors)
        + ' (install: pip install -r device/requirements.txt)'
    )


class Classifier:
    """A verified model plus one interpreter, created once and reused for every image."""

    def __init__(self, model_path, runtime: str = "auto", threads: int | None = None,
                 verify: bool = True):
        self.model_path = Path(model_path)
        self.meta = read_metadata(self.model_path) if verify else None
        t0 = time.perf_counter()
        self.runtime, Interpreter = load_interpreter_class(runtime)
        try:
            self.interpreter = Interpreter(model_path=str(self.model_path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except ValueError as e:
            raise ModelError(f"{self.model_path} is not a valid TFLite model ({str(e).splitlines()[0]})") from None
        except RuntimeError as e:
            raise ModelError(f"{self.model_path} could not be loaded ({str(e).splitlines()[0]})") from None
        self.load_seconds = time.perf_counter() - t0
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_quant = tuple(inp["quantization"])
        self.output_quant = tuple(out["quantization"])
        self.size = int(inp["shape"][1])
        if self.meta is not None:
            if self.meta["input"]["size"] != self.size or len(self.meta["labels"]) != int(out["shape"][-1]):
                raise ModelError(f"{self.model_path.name}: model tensors do not match its metadata")
            self.labels = list(self.meta["labels"])
        else:
            self.labels = [str(i) for i in range(int(out["shape"][-1]))]

    def _feed(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.reshape(1, self.size, self.size, 1)
        if self.input_dtype == np.uint8:
            scale, zp = self.input_quant
            if (scale, zp) in ((1.0, 0), (0.0, 0)):
                return x  # raw pixels map exactly onto the input: no arithmetic at all
            q = np.round(x.astype(np.float32) / scale + zp)
            return np.clip(q, 0, 255).astype(np.uint8)
        if self.input_dtype == np.int8:
            scale, zp = self.input_quant
            q = np.round(x.astype(np.float32) / scale + zp)
            return np.clip(q, -128, 127).astype(np.int8)
        return x.astype(self.input_dtype)  # float models take pixel values 0..255

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (size, size) array from device.preprocess -> class probabilities (float32)."""
        self.interpreter.set_tensor(self._in_index, self._feed(pixels))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._out_index)[0]
        if np.issubdtype(out.dtype, np.integer):
            scale, zp = self.output_quant
            out = (out.astype(np.float32) - zp) * scale
        return out.astype(np.float32)

    def predict_file(self, path) -> np.ndarray:
        return self.predict_pixels(load_image(path, self.size))
