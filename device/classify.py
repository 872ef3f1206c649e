"""Classify brain-MRI slices on the board.  NOT a medical device: research and education only.

    python -m device.classify scan.jpg [scan.dcm folder/ ...] [--json | --csv]

JPEG and PNG images and DICOM files (.dcm, or any file with the DICM preamble, whatever its name); folders are
searched to any depth, each folder once however many links lead to it, and files that are neither are counted in
one note. Every file is decoded in a worker process under OS limits (memory, CPU and wall-clock time per file;
device/isolate.py). Every input that cannot be classified gets one line saying why, and the others still run.
Records are whole lines, flushed one by one; file names are escaped in plain output, CSV cells cannot be formulas,
and JSON carries the exact bytes of a name that is not UTF-8 (`path_bytes_b64`). Output never fails on a terminal
that cannot show a character: it is escaped.

Every answer says whether the scan looks like the model's training images (`in_distribution`, from the model's
own features; see device/ood.py); with --reject-ood a scan that does not is answered "uncertain".

Exit codes: 0 all inputs classified, 1 some inputs failed, 2 usage or model error, 3 internal error (a bug:
please report it with --verbose output).
"""
from __future__ import annotations

import argparse
import base64
import csv
import errno
import io
import json
import math
import os
import stat
import sys
import time
import traceback
import unicodedata
import warnings
from pathlib import Path

# Only the standard library at import: numpy, Pillow and the interpreter load inside main(), so a Ctrl-C while
# they load ends the run quietly (run() catches it) instead of printing a traceback.

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
IMAGE_KINDS = ".jpg/.jpeg/.png/.dcm or DICOM"
RUNTIME_NAMES = ("tflite-runtime", "litert")   # device.runtime.RUNTIMES' keys (a test keeps them equal)


class OutputError(Exception):
    """The results cannot be written (a full disk, a closed stdout): the run stops with one line."""


def shown(path) -> str:
    """A path that cannot forge output on any terminal: bytes that are not UTF-8 appear as \\xNN, and control,
    format (bidi overrides such as U+202E) and line-separator characters as \\xNN or \\uNNNN escapes, so a
    name can neither start a fake result line nor send escape codes."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


def csv_cell(text: str) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ (or tab, carriage return), also after spaces or as
    its full-width form (＝), would make it a formula, so such a cell gets a leading apostrophe (the OWASP rule)."""
    first = unicodedata.normalize("NFKC", text).lstrip(" ")[:1]
    return "'" + text if first in ("=", "+", "-", "@") or text[:1] in ("\t", "\r") else text


def json_path(path) -> dict:
    """The path for JSON: readable text, plus its exact bytes (base64) when the name is not valid UTF-8, so that
    a consumer can always get back the very file."""
    raw = os.fsencode(path)
    try:
        return {"path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path": raw.decode("utf-8", "backslashreplace"), "path_bytes_b64": base64.b64encode(raw).decode()}


def emit(line: str, stream=None) -> None:
    """One whole line, written and flushed at once: a record finished before a SIGTERM is never lost or cut."""
    stream = stream or sys.stdout
    try:
        stream.write(line + "\n")
        stream.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:  # ValueError: the stream was closed under us
        raise OutputError(getattr(e, "strerror", None) or str(e)) from None


def _stat(p: Path):
    """(stat following links, None), or (None, why not) for a broken link, a loop or an unreadable entry."""
    try:
        return os.stat(p), None
    except FileNotFoundError:
        return None, ("broken symbolic link" if p.is_symlink() else "no such file or folder")
    except OSError as e:
        return None, ("symbolic link loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror or e})")


class Skipped:
    """Files a folder walk passed over because they are neither pictures nor DICOM: counted, and named in one
    summary line at the end (a PACS folder with a few notes in it should not print a line per note)."""

    def __init__(self):
        self.count, self.examples = 0, []

    def add(self, p: Path) -> None:
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(shown(p.name))

    def line(self) -> str | None:
        if not self.count:
            return None
        more = ", ..." if self.count > len(self.examples) else ""
        return (f"skipped {self.count} file(s) in the folders given that are neither images nor DICOM "
                f"({', '.join(self.examples)}{more})")


def _dicom_or_problem(p: Path):
    """(is a DICOM file, problem): an extensionless file that cannot be opened is a problem, not 'not DICOM'."""
    from device.preprocess import dicom_preamble

    try:
        return dicom_preamble(p), None
    except PermissionError:
        return False, "permission denied"
    except OSError as e:
        return False, f"cannot be read ({e.strerror or e})"


def _walk(top: Path, top_id, skipped: Skipped):
    """Yield (path, problem-or-None) for every candidate file under top, and a problem for every folder or entry
    that cannot be read. Iterative (a stack, no recursion), so no folder depth ends the batch. Memory grows with
    the folders waiting on the stack, never with depth times width: the folders on the current path are one set,
    updated as the walk enters and leaves them. Every folder is searched once, however many links lead to it (two
    links per level to the next would otherwise give 2^levels copies); a link back into the current path is a
    loop and says so. Files with a picture extension are candidates; any other file is one if it is a DICOM file
    (PACS exports are named by UID, dots and all)."""
    from device.preprocess import file_kind, is_image_path

    found = readable = False
    on_path, seen = set(), {top_id}
    stack = [(os.fspath(top), top_id)]  # plain strings: a Path of a path 1,500 folders deep holds 1,500 parts
    while stack:
        folder, fid = stack.pop()
        if folder is None:       # leaving a folder: it is no longer on the current path
            on_path.discard(fid)
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError:
            yield Path(folder), "permission denied (folder cannot be read)"
            continue
        except OSError as e:
            yield Path(folder), f"folder cannot be read ({e.strerror or e})"
            continue
        readable = True
        on_path.add(fid)
        stack.append((None, fid))
        subfolders = []
        for e in entries:
            p = Path(e.path)
            st, problem = _stat(p)
            if problem:
                yield p, problem
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in on_path:
                    yield p, "symbolic link loop (leads back to a folder being searched)"
                elif key not in seen:  # a folder reached again through another link: already searched
                    seen.add(key)
                    subfolders.append((e.path, key))
            elif stat.S_ISREG(st.st_mode):
                if is_image_path(e.name):
                    found = True
                    yield p, None
                    continue
                dicom, problem = _dicom_or_problem(p)
                if problem:
                    yield p, problem
                elif dicom:
                    found = True
                    yield p, None
                else:
                    skipped.add(p)
            elif is_image_path(e.name):
                yield p, f"{file_kind(st.st_mode)}, not an image file"
            else:  # a FIFO, socket or device without an image's name: counted, never opened
                skipped.add(p)
        stack.extend(reversed(subfolders))  # depth first, in name order
    if readable and not found:
        yield top, f"folder contains no images ({IMAGE_KINDS})"


def expand(paths, skipped: Skipped | None = None):
    """Yield (path, problem-or-None): files as given, folders recursively, and a line for every problem; files
    in folders that are neither pictures nor DICOM are counted in `skipped`."""
    from device.preprocess import file_kind

    skipped = skipped if skipped is not None else Skipped()
    for raw in paths:
        if not os.fspath(raw):  # Path("") is ".": an empty argument must not search the current folder
            yield Path(), "empty path (give a file or a folder)"
            continue
        p = Path(raw)
        st, problem = _stat(p)
        if problem:
            yield p, problem
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(p, (st.st_dev, st.st_ino), skipped)
        elif stat.S_ISREG(st.st_mode):
            yield p, None
        else:  # never open() a FIFO or a device: it can block forever
            yield p, f"{file_kind(st.st_mode)}, not an image file"


def csv_line(cells) -> str:
    """One CSV record; the csv module quotes any cell holding a separator, a quote or a line break (it only quotes
    the line-break characters of its terminator, hence the terminator stripped afterwards)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(cells)
    return buf.getvalue()[:-2]


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 too; keep it to one line
        raise UsageError(message)


def build_parser():
    p = Parser(prog="python -m device.classify", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="image or DICOM files and/or folders")
    p.add_argument("--model", help="a .tflite with its .json sidecar (default: the model in device/models/)")
    p.add_argument("--top-k", type=int, default=1, help="labels to show per image (human output)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads, >= 1 (default: runtime's choice)")
    p.add_argument("--runtime", default="auto", choices=["auto", *RUNTIME_NAMES])
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="below this top probability the answer is 'uncertain' (0..1)")
    p.add_argument("--reject-ood", action="store_true",
                   help="answer 'uncertain' for scans unlike the training images (out of distribution)")
    p.add_argument("--second-opinion", action="store_true",
                   help="also run the int8 teacher shipped beside --model (teacher_int8.tflite) on every scan and "
                        "say where the two disagree: it catches most wrong answers (docs/research.md, Q21), at the "
                        "teacher's cost (about 9x the student's inference)")
    p.add_argument("--adapt", metavar="DIR", action="append", default=None,
                   help="re-estimate the class priors from this site's unlabeled scans first (files or folders; "
                        "repeatable), and answer under them (docs/research.md, Q23)")
    p.add_argument("--explain", metavar="OUT_DIR",
                   help="also write where the model looked: one PNG per input in OUT_DIR, an occlusion map of the top "
                        "class (a fixed 122 interpreter runs an image; about 15 ms on x86)")
    p.add_argument("--verbose", action="store_true", help="show library warnings and, on a crash, the traceback")
    return p


def second_model(a) -> str | None:
    """--second-opinion's model: the int8 teacher shipped beside --model (the API takes any model path)."""
    if not a.second_opinion:
        return None
    from device.runtime import PACKAGE_MODEL

    return str(Path(a.model or PACKAGE_MODEL).with_name("teacher_int8.tflite"))


def _safe_streams() -> bool:
    """Output that any terminal encoding can take (a name like a_M\u00fcller.jpg on an ASCII locale is escaped,
    not a UnicodeEncodeError); False when stdout is closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    return sys.stdout is not None and not getattr(sys.stdout, "closed", False)


def main(argv=None) -> int:
    if not _safe_streams():
        if sys.stderr is not None:
            print("error: standard output is closed: nowhere to write the results", file=sys.stderr)
        return EXIT_USAGE
    from device.runtime import ClassifierOptions

    try:
        a = build_parser().parse_args(argv)
        options = ClassifierOptions(runtime=a.runtime, threads=a.threads, top_k=a.top_k,
                                    min_confidence=a.min_confidence, reject_ood=a.reject_ood,
                                    second_opinion=second_model(a))
        options.validate()
    except (UsageError, ValueError) as e:
        print(f"error: {str(e).replace('top_k', '--top-k').replace('min_confidence', '--min-confidence')} "
              f"(see --help)", file=sys.stderr)
        return EXIT_USAGE
    if not a.verbose:
        warnings.simplefilter("ignore")
    if a.explain is not None:
        try:
            Path(a.explain).mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as e:
            print(f"error: --explain {shown(a.explain)}: cannot make the folder ({getattr(e, 'strerror', None) or e})",
                  file=sys.stderr)
            return EXIT_USAGE
    try:
        return classify_all(a, options)
    except BrokenPipeError:  # the reader went away (`| head -1`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_SOME_FAILED
    except OutputError as e:
        print(f"error: cannot write the results ({e})", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug, not bad input: say so distinctly
        print(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              f"(exit 3; re-run with --verbose for the traceback)", file=sys.stderr)
        if a.verbose:
            traceback.print_exc()
        return EXIT_INTERNAL


def classify_all(a, options) -> int:
    from device.metadata import ModelError
    from device.runtime import Classifier

    try:
        clf = Classifier(a.model, options, quiet=not a.verbose)
    except ModelError as e:
        print(f"error: {shown(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    with clf:
        return _classify_each(a, options, clf)


def _classify_each(a, options, clf) -> int:
    from device.metrics import ranked
    from device.preprocess import ImageError

    for note in clf.notes:
        print(f"note: {note}", file=sys.stderr)
    if a.adapt:
        site = [p for p, problem in expand(a.adapt, Skipped()) if problem is None]
        try:
            priors, used = clf.adapt(site)
        except ImageError as e:
            print(f"error: --adapt: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"note: class priors re-estimated from {used} scans: "
              + ", ".join(f"{c} {p:.2f}" for c, p in zip(clf.labels, priors)), file=sys.stderr)
    if a.csv:
        emit(csv_line(["path", "label", "probability", *clf.labels, "in_distribution", "ood_score", "latency_ms",
                       "note", "error"] + (["explanation"] if a.explain else [])
                      + (["second_opinion", "agrees"] if clf.second else [])))
    n_ok = n_bad = attempted = crashed = 0
    skipped = Skipped()
    for path, problem in expand(a.paths, skipped):
        t0 = time.perf_counter()
        attempted += problem is None
        if problem is None:
            try:  # decoded once: the answer, its second opinion and its map (--explain) use the same decode
                inputs, decode_notes = clf.model_inputs(path)
                pixels = inputs[0]
                result = clf.assess_pixels(pixels, decode_notes, *inputs[1:])
            except ImageError as e:
                problem = str(e)
            except MemoryError:
                problem = "not enough memory to classify this image"
            except Exception as e:  # a bug: this file's record says so, the batch goes on, the exit code is 3
                crashed += 1
                problem = f"internal error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
                if a.verbose:
                    traceback.print_exc()
        ms = (time.perf_counter() - t0) * 1000
        if problem is not None:
            n_bad += 1
            if a.json:
                emit(json.dumps(json_path(path) | {"error": problem}))
            elif a.csv:
                emit(csv_line([csv_cell(shown(path)), "", "", *[""] * len(clf.labels), "", "", "", "",
                               csv_cell(shown(problem))] + ([""] if a.explain else []) + ["", ""] * bool(clf.second)))
            else:
                emit(f"{shown(path)}: error: {shown(problem)}", sys.stderr)
            continue
        n_ok += 1
        rec = answer_record(clf, result)
        probs, notes = result.probabilities, list(result.notes)
        label, known, score = rec["label"], rec["in_distribution"], rec["ood_score"]
        order = ranked(probs)
        top = int(order[0])
        explanation = _explain(clf, path, pixels, top, a.explain) if a.explain else None
        if isinstance(explanation, tuple):  # it could not be written: said in the record, the batch goes on
            explanation, why = explanation
            notes.append(why)
        if a.json:
            record = {**json_path(path), **rec, "latency_ms": round(ms, 2)}
            record |= {"explanation": explanation} if a.explain else {}
            emit(json.dumps(record | ({"note": "; ".join(notes)} if notes else {}), allow_nan=False))
        elif a.csv:
            emit(csv_line([csv_cell(shown(path)), label, f"{probs[top]:.4f}", *[f"{v:.4f}" for v in probs],
                           "" if known is None else str(known).lower(), "" if score is None else f"{score:.3f}",
                           f"{ms:.2f}", csv_cell(shown("; ".join(notes))), ""]
                          + ([csv_cell(shown(explanation or ""))] if a.explain else [])
                          + ([rec["second_opinion"], str(rec["agrees"]).lower()] if clf.second else [])))
        else:
            if known is False:
                notes.insert(0, f"unlike the training images (OOD score {score:.2f} > 1)")
            if result.agrees is False:
                second = result.second_probabilities
                notes.insert(0, f"second opinion: {rec['second_opinion']} {second.max():.1%}, the models disagree: "
                                f"check this scan")
            if explanation:
                notes.append(f"map: {explanation}")
            top_k = ", ".join(f"{clf.labels[i]} {probs[i]:.1%}" for i in order[: options.top_k])
            note = f"  [{shown('; '.join(notes))}]" if notes else ""
            emit(f"{shown(path)}: {label}  ({top_k})  {ms:.1f} ms{note}")
    if skipped.line():
        emit(f"note: {skipped.line()}", sys.stderr)
    if attempted == 0:  # nothing but missing paths, empty folders or non-files: a usage error
        return EXIT_USAGE
    if n_bad and not (a.json or a.csv):
        print(f"{n_bad} of {n_ok + n_bad} inputs failed", file=sys.stderr)
    if crashed:
        print(f"internal error on {crashed} input(s): exit 3 (please report it, with --verbose output)",
              file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_SOME_FAILED if n_bad else EXIT_OK


def answer_record(clf, result) -> dict:
    """The answer as --json gives it (and the web page, device/serve.py): label ('uncertain' when the answer rule
    gives none), its probability, every probability, the OOD flag and score, and the second opinion if asked for."""
    from device.metrics import ranked

    probs = result.probabilities
    answer = clf.answer(result)
    score = None if result.ood_score is None or not math.isfinite(result.ood_score) else round(result.ood_score, 3)
    return {"label": answer[0].label if answer else "uncertain",
            "probability": round(float(probs[int(ranked(probs)[0])]), 4),
            "probabilities": {c: round(float(v), 4) for c, v in zip(clf.labels, probs)},
            "in_distribution": result.in_distribution, "ood_score": score} | (
        {} if result.agrees is None else {"second_opinion": clf.labels[int(ranked(result.second_probabilities)[0])],
                                          "agrees": result.agrees})


def _explain(clf, path, pixels, top: int, out_dir):
    """The occlusion map of the top class on the file's model input, as a PNG in out_dir named after the file plus
    a hash of its whole path (two scans called 1.dcm in two folders get two maps). Returns the PNG's path, or
    (None, why) when it could not be written."""
    import hashlib
    import re

    from device.atomic import atomic_write_bytes
    from device.explain import explain, png_bytes

    raw = os.fsencode(path)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", os.fsdecode(os.path.basename(raw)))[:60] or "scan"
    target = Path(out_dir) / f"{stem}-{hashlib.sha1(raw).hexdigest()[:8]}.png"
    try:
        atomic_write_bytes(target, png_bytes(explain(clf, pixels, top)))
    except OSError as e:
        return None, f"no map: {e.strerror or e}"
    return str(target)


def run() -> None:
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # e.g. piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    run()
