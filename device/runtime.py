"""The Python API for apps on the board, and the one inference path the CLI, the bench and the parity gate run.

    from device.runtime import Classifier, ClassifierOptions
    clf = Classifier(options=ClassifierOptions(top_k=2, min_confidence=0.8))   # the shipped model
    for p in clf.classify("scan.dcm"):                                          # a path, or a 2-D uint8 array
        print(p.label, p.probability)
    r = clf.assess("scan.dcm")           # all probabilities, and whether the scan looks like the training data
    print(r.probabilities, r.in_distribution, r.ood_score)

tflite-runtime first (Pi OS Bookworm, 32-bit Pi OS), LiteRT (`ai-edge-litert`) when it is missing or cannot run
(Python >= 3.12, e.g. Pi OS Trixie; or numpy 2 beside tflite-runtime). Never TensorFlow.
"""
from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from device import flatbuffer
from device.isolate import DECODE_CPU_SECONDS, DECODE_MEMORY_MB, DecodeWorker
from device.metadata import ModelError, read_metadata
from device.metrics import ranked
from device.ood import Scorer
from device.preprocess import MAX_PIXELS, ImageError, load_scans, to_model_input

RUNTIMES = {
    "tflite-runtime": "tflite_runtime.interpreter",
    "litert": "ai_edge_litert.interpreter",
}
PACKAGE_MODEL = Path(__file__).resolve().parent / "models" / "student_int8.tflite"
MAX_THREADS = 256  # interpreters take a C int; no board has more cores than this
PROBE_SECONDS = 60  # the throwaway inference of a model under tflite-runtime (a Pi Zero runs the teacher in ~1 s)


class RuntimeMissing(ModelError):
    pass


@dataclass
class ClassifierOptions:
    runtime: str = "auto"           # auto | tflite-runtime | litert
    threads: int | None = None      # interpreter threads; None = the runtime's choice
    top_k: int = 1                  # predictions returned by classify()
    min_confidence: float = 0.0     # below this probability a class is not returned (none at all: "uncertain")
    reject_ood: bool = False        # a scan unlike the training images is answered "uncertain" (needs OOD stats)
    # Files given by path are decoded in a worker process under OS limits (device/isolate.py): memory above the
    # worker's own, CPU seconds and wall-clock seconds per file. isolate=False decodes in this process (trusted
    # files only: no limit holds then but the per-format checks).
    isolate: bool = True
    decode_memory_mb: int = DECODE_MEMORY_MB
    decode_seconds: float = DECODE_CPU_SECONDS
    # A second model (e.g. the int8 teacher shipped beside the student) run on every scan: where the two top
    # answers differ, Assessment.agrees is False. It catches the student's wrong answers far better than the OOD
    # score (docs/research.md, Q21), at the second model's cost per scan (the teacher: about 9x the student's inference).
    second_opinion: str | os.PathLike | None = None

    def validate(self) -> None:
        def integer(v):  # numpy integers too, never bools
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        if self.runtime not in ("auto", *RUNTIMES):
            raise ValueError(f"runtime must be auto, {' or '.join(RUNTIMES)} (got {self.runtime!r})")
        if self.threads is not None and (not integer(self.threads) or not 1 <= self.threads <= MAX_THREADS):
            raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS} (got {self.threads!r})")
        if not integer(self.top_k) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1 (got {self.top_k!r})")
        if (not isinstance(self.min_confidence, numbers.Real) or isinstance(self.min_confidence, bool)
                or not 0.0 <= self.min_confidence <= 1.0):
            raise ValueError(f"min_confidence must be a number between 0 and 1 (got {self.min_confidence!r})")
        for name in ("reject_ood", "isolate"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False (got {getattr(self, name)!r})")
        if not integer(self.decode_memory_mb) or not 32 <= self.decode_memory_mb <= 1 << 20:
            raise ValueError(f"decode_memory_mb must be an integer from 32 (got {self.decode_memory_mb!r})")
        if (not isinstance(self.decode_seconds, numbers.Real) or isinstance(self.decode_seconds, bool)
                or not 0.1 <= self.decode_seconds <= 3600):
            raise ValueError(f"decode_seconds must be a number from 0.1 to 3600 (got {self.decode_seconds!r})")
        if self.second_opinion is not None and not isinstance(self.second_opinion, (str, bytes, os.PathLike)):
            raise ValueError(f"second_opinion must be a model path or None (got {self.second_opinion!r})")
        self.threads = None if self.threads is None else int(self.threads)
        self.top_k, self.min_confidence = int(self.top_k), float(self.min_confidence)
        self.reject_ood, self.isolate = bool(self.reject_ood), bool(self.isolate)


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float


@dataclass(frozen=True)
class Assessment:
    """Everything the model says about one scan."""
    probabilities: np.ndarray
    ood_score: float | None = None   # distance from the training data; > 1: unlike it (None: model has no stats)
    notes: tuple[str, ...] = ()      # what was read (e.g. which DICOM frame)
    second_probabilities: np.ndarray | None = None   # the second opinion's (options.second_opinion), if asked for

    @property
    def in_distribution(self) -> bool | None:
        return None if self.ood_score is None else bool(self.ood_score <= 1.0)

    @property
    def agrees(self) -> bool | None:
        """Whether the second opinion's top answer is this one's (None: no second opinion asked for)."""
        if self.second_probabilities is None:
            return None
        return bool(np.argmax(self.second_probabilities) == np.argmax(self.probabilities))


def _numpy_abi_error(e: BaseException) -> bool:
    """tflite-runtime 2.14 is built against numpy 1.x: under numpy 2 its extension fails as it starts, as a
    SystemError whose cause is 'AttributeError: _ARRAY_API not found' (or as an ImportError naming numpy)."""
    chain, seen = [], e
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(x) for x in chain)
    return "_ARRAY_API" in text or "numpy.core.multiarray" in text or "compiled using NumPy 1" in text


def _numpy_fix(name: str) -> str:
    return (f'{name} was built against numpy 1.x and cannot run with numpy {np.__version__}: '
            f'pip install "numpy<2" (or use LiteRT: pip install ai-edge-litert)')


def _import_runtime(name: str):
    module = RUNTIMES[name]
    try:
        return importlib.import_module(module).Interpreter
    except ImportError as e:
        if _numpy_abi_error(e):
            raise RuntimeMissing(_numpy_fix(name)) from None
        raise RuntimeMissing(f"{name} is not installed ({module}: {e})") from None
    except AttributeError as e:
        raise RuntimeMissing(_numpy_fix(name) if _numpy_abi_error(e) else f"{name} failed to import ({e})") from None


@contextmanager
def _quiet_stderr(enabled: bool = True):
    """Silence what the interpreter's C++ side (XNNPACK's 'Created TensorFlow Lite XNNPACK delegate', numpy's
    ABI banner) writes straight to file descriptor 2; errors still arrive as Python exceptions."""
    try:
        fd = sys.stderr.fileno() if enabled else None
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _probe_in_child(Interpreter, path: Path, threads) -> None:
    """tflite-runtime does not verify a model: run one inference on zeros in a forked child first, so a model
    that crashes the interpreter costs a one-line error instead of the process (and the batch)."""
    if not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:  # the child: no output, no Python cleanup
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            it = Interpreter(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
            for d in it.get_input_details():
                it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            it.invoke()
        except BaseException:
            os._exit(1)  # a Python-level error: the parent's own attempt reports it
        os._exit(0)
    deadline = time.monotonic() + PROBE_SECONDS
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:  # a model that makes the interpreter spin is as broken as one that crashes
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise ModelError(f"{path} does not finish one inference in {PROBE_SECONDS} s: the model file is corrupt")
        time.sleep(0.01)
    if os.WIFSIGNALED(status):
        raise ModelError(f"{path} crashes the interpreter (signal {os.WTERMSIG(status)}): the model file is corrupt")


def _check_quantization(name: str, detail) -> None:
    """A scale or zero point that is NaN, infinite or not positive turns every answer into NaN: refuse the model."""
    scale, zp = detail["quantization"]
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and not (
            math.isfinite(scale) and scale > 0 and math.isfinite(zp)):
        raise ModelError(f"{name}: tensor '{detail.get('name', '?')}' has an invalid quantisation (scale {scale}, "
                         f"zero point {zp}): the model file is corrupt or was edited")


class Classifier:
    """A verified model plus one interpreter, created once and reused for every image.

    Safe to share between threads: one inference runs at a time (the interpreter's tensors are shared state, so
    unguarded threads would read each other's answers), and files decode one at a time in the worker. For
    parallel inference, give each thread its own Classifier."""

    def __init__(self, model_path=None, options: ClassifierOptions | None = None, *, quiet: bool = True):
        self.options = options or ClassifierOptions()
        self.options.validate()
        if isinstance(model_path, bytes):
            model_path = os.fsdecode(model_path)
        if model_path is not None and not str(model_path).strip():
            raise ModelError("--model: empty path")
        self.model_path = Path(model_path) if model_path is not None else PACKAGE_MODEL
        self._lock = threading.Lock()
        self._worker = None
        self.priors = None   # a site's class priors (adapt); None: the training priors (class-balanced)
        self.meta = read_metadata(self.model_path)
        self.notes: list[str] = []  # what the runtime choice had to say (e.g. a fallback), for the caller to show
        t0 = time.perf_counter()
        self.interpreter = self._open(quiet)
        self.load_seconds = time.perf_counter() - t0
        try:  # tensor names are decoded here: a name that is not UTF-8 is a broken model, not a bug
            inp = self.interpreter.get_input_details()[0]
            outputs = self.interpreter.get_output_details()
        except (ValueError, RuntimeError, IndexError) as e:
            raise self._invalid(e) from None
        self._in_index = inp["index"]
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_quant = tuple(inp["quantization"])
        self.size = int(inp["shape"][1])
        n_labels = len(self.meta["labels"])
        # Outputs are told apart by width (the converter does not keep their order): the class probabilities,
        # and for models with OOD statistics the pooled features those were fitted on.
        probs = [o for o in outputs if int(o["shape"][-1]) == n_labels]
        ood = self.meta.get("ood")
        feats = [o for o in outputs if ood and int(o["shape"][-1]) == ood["features"]]
        if self.meta["input"]["size"] != self.size or not probs or (ood and not feats):
            raise ModelError(f"{self.model_path.name}: model tensors do not match its metadata")
        self._out = probs[0]
        self._feat = feats[0] if feats else None
        for d in [inp, self._out] + ([self._feat] if self._feat else []):
            _check_quantization(self.model_path.name, d)
        self.labels = list(self.meta["labels"])
        # The framing the model was trained with: a v1 model keeps its pad-to-square input.
        self.contract = self.meta["preprocess"]["contract_version"]
        try:
            self.ood = Scorer(ood, n_labels) if ood else None
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{self.model_path.name}: its out-of-distribution statistics are unreadable ({e})") from None
        if self.options.reject_ood and self.ood is None:
            raise ModelError(f"{self.model_path.name} has no out-of-distribution statistics, so it cannot reject "
                             f"scans unlike its training data (convert it again with this release)")
        self.second = None
        if self.options.second_opinion is not None:
            o = self.options
            self.second = Classifier(o.second_opinion, ClassifierOptions(runtime=o.runtime, threads=o.threads,
                                                                         isolate=False), quiet=quiet)
            if self.second.labels != self.labels:
                raise ModelError(f"second opinion {self.second.model_path.name}: its labels {self.second.labels} "
                                 f"are not this model's {self.labels}")

    def _open(self, quiet: bool):
        """An allocated interpreter from the first runtime that can run this model here."""
        try:
            data = self.model_path.read_bytes()
        except OSError as e:
            raise ModelError(f"cannot read model {self.model_path} ({e.strerror or e})") from None
        try:
            flatbuffer.check(data)
        except flatbuffer.BadModel as e:
            raise self._invalid(e) from None
        wanted = self.options.runtime
        names = list(RUNTIMES) if wanted == "auto" else [wanted]
        errors = []
        for name in names:
            try:
                Interpreter = _import_runtime(name)
                if name == "tflite-runtime":
                    self._verify_for_tflite_runtime(Interpreter)
                with _quiet_stderr(quiet):
                    it = Interpreter(model_path=str(self.model_path), num_threads=self.options.threads)
                    it.allocate_tensors()
            except RuntimeMissing as e:
                errors.append(str(e))
                continue
            except ModelError:
                raise
            except (SystemError, ImportError, AttributeError) as e:
                if not _numpy_abi_error(e):
                    raise
                errors.append(_numpy_fix(name))
                continue
            except (ValueError, RuntimeError) as e:
                raise self._invalid(e) from None
            if errors:  # an earlier runtime could not run here: say so once
                self.notes.append(f"{errors[-1]}; using {name} instead")
            self.runtime = name
            return it
        numpy_abi = [e for e in errors if "numpy 1.x" in e]
        if numpy_abi or wanted != "auto":
            raise RuntimeMissing((numpy_abi or errors)[0])
        raise RuntimeMissing("no TFLite interpreter available: " + "; ".join(errors)
                             + " (install: pip install -r device/requirements.txt)")

    def _invalid(self, e: Exception) -> ModelError:
        return ModelError(f"{self.model_path} is not a valid TFLite model "
                          f"({(str(e).splitlines() or [type(e).__name__])[0]})")

    def _verify_for_tflite_runtime(self, Interpreter) -> None:
        """LiteRT's verifier where it is installed, else a throwaway run in a child process."""
        try:
            verifier = _import_runtime("litert")
        except RuntimeMissing:
            _probe_in_child(Interpreter, self.model_path, self.options.threads)
            return
        try:
            with _quiet_stderr():
                verifier(model_path=str(self.model_path))
        except (ValueError, RuntimeError) as e:
            raise self._invalid(e) from None

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

    def _output(self, detail) -> np.ndarray:
        out = self.interpreter.get_tensor(detail["index"])[0]
        if np.issubdtype(out.dtype, np.integer):
            scale, zp = detail["quantization"]
            out = (out.astype(np.float32) - zp) * scale
        return out.astype(np.float32)

    def assess_pixels(self, pixels: np.ndarray, notes=(), second_pixels: np.ndarray | None = None) -> Assessment:
        """uint8 (size, size) array from device.preprocess -> probabilities and OOD score; with the second
        opinion's input pixels (model_inputs), its probabilities too."""
        probs, feats = self._run(pixels, features=self.ood is not None)
        score = float(self.ood.score(feats)[0]) if feats is not None else None
        if self.priors is not None:
            from device.priors import adjust

            probs = adjust(probs, self.priors).astype(np.float32)
        second = None if second_pixels is None or self.second is None else self.second.predict_pixels(second_pixels)
        return Assessment(probs, score, tuple(notes), second)

    def adapt(self, sources) -> tuple[np.ndarray, int]:
        """Re-estimate the class priors from a site's unlabeled scans (paths or 2-D uint8 arrays; unreadable ones
        are skipped) by EM (device/priors.py); every later answer is reweighted by them. Returns (priors, scans
        used). adapt([]) or a list with no readable scan raises ImageError."""
        from device.priors import em_priors

        self.priors = None
        probs = []
        for s in sources:
            try:
                probs.append(self.assess_pixels(*self.model_input(s)).probabilities)  # (no second opinion)
            except ImageError:
                continue
        if not probs:
            raise ImageError("no readable scan to estimate the site's class priors from")
        self.priors = em_priors(np.stack(probs))
        return self.priors, len(probs)

    def decode(self, path, models: list["Classifier"]) -> tuple[list[np.ndarray], list[str]]:
        """A file -> the input pixels of each of `models`, from one decode, and notes, in the limited worker
        (options.isolate) or here. The second opinion's pixels come from this model's worker too."""
        targets = [(m.size, m.contract) for m in models]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not str(path):
            raise ImageError("empty path")
        if not self.options.isolate:
            return load_scans(path, targets)
        with self._lock:
            if self._worker is None:
                self._worker = DecodeWorker(self.options.decode_memory_mb, self.options.decode_seconds,
                                            max(2.0 * self.options.decode_seconds, 5.0))
        xs, notes, printed = self._worker.decode_all(path, targets)
        return xs, notes + ([f"decoder: {printed}"] if printed else [])

    def close(self) -> None:
        """Stop the decoding worker (a later file starts it again)."""
        if getattr(self, "_worker", None) is not None:
            self._worker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (size, size) array from device.preprocess -> class probabilities (float32); no OOD score (the
        explanation maps call this 122 times an image)."""
        return self._run(pixels, features=False)[0]

    def _run(self, pixels: np.ndarray, features: bool):
        """(probabilities, features or None) of one input: set, invoke and read as one step under the lock, since
        the tensors are the interpreter's, not this thread's."""
        x = self._feed(pixels)
        with self._lock:
            self.interpreter.set_tensor(self._in_index, x)
            self.interpreter.invoke()
            return self._output(self._out), (self._output(self._feat) if features else None)

    def assess(self, source) -> Assessment:
        """source: an image or DICOM file path, or a 2-D uint8 grayscale image of any size (e.g. a camera frame)
        that goes through the same framing and resize as a file."""
        xs, notes = self.model_inputs(source)
        return self.assess_pixels(xs[0], notes, *xs[1:])

    def model_input(self, source, model: "Classifier | None" = None) -> tuple[np.ndarray, list[str]]:
        """(the input pixels of `model`, default this one, and notes) of a file path or a 2-D uint8 grayscale array
        of any size."""
        xs, notes = self.model_inputs(source, [model or self])
        return xs[0], notes

    def model_inputs(self, source, models: list["Classifier"] | None = None) -> tuple[list[np.ndarray], list[str]]:
        """model_input for each of `models` (default: this one and its second opinion), from one decode."""
        models = models or [self] + ([self.second] if self.second is not None else [])
        if isinstance(source, (str, bytes, os.PathLike)):
            return self.decode(source, models)
        a = np.asarray(source)
        if a.ndim != 2 or a.dtype != np.uint8:
            raise ImageError(f"an image array must be 2-D uint8 grayscale (got {a.dtype} {a.shape})")
        if a.size > MAX_PIXELS:  # before any copy: a strided view of a huge buffer is copied by fromarray
            raise ImageError(f"image too large ({a.shape[1]}x{a.shape[0]} = {a.size:,} pixels > {MAX_PIXELS:,} limit)")
        img = Image.fromarray(a, mode="L")
        return [to_model_input(img, m.size, m.contract) for m in models], []

    def explain(self, source, target=None):
        """Where the model looked: an occlusion map (device/explain.py; a fixed device.explain.EVALUATIONS
        interpreter runs) of `target` (a label, its index, or None for the most probable class) on a file path, a
        2-D uint8 array of any size -> device.explain.Explanation."""
        from device.explain import explain

        if isinstance(target, str):
            if target not in self.labels:
                raise ValueError(f"target must be one of {self.labels} (got {target!r})")
            target = self.labels.index(target)
        elif target is not None and not (isinstance(target, numbers.Integral) and 0 <= target < len(self.labels)):
            raise ValueError(f"target must be a label or an index below {len(self.labels)} (got {target!r})")
        return explain(self, self.model_input(source)[0], target)

    def probabilities(self, source) -> np.ndarray:
        return self.assess(source).probabilities

    def classify(self, source) -> list[Prediction]:
        """Up to options.top_k predictions at or above options.min_confidence, most probable first; an empty
        list means 'uncertain' (or, with options.reject_ood, unlike the training data). Raises ImageError (one line)
        for an unusable input."""
        return self.answer(self.assess(source))

    def answer(self, result: Assessment) -> list[Prediction]:
        """The answer rule, for the API and the CLI alike: no answer ('uncertain') for a scan unlike the training
        data under options.reject_ood, else the top_k classes at or above options.min_confidence."""
        if self.options.reject_ood and not result.in_distribution:
            return []
        probs = result.probabilities
        return [Prediction(self.labels[i], float(probs[i])) for i in ranked(probs)[: self.options.top_k]
                if probs[i] >= self.options.min_confidence]
