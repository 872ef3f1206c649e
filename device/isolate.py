"""Untrusted files are decoded in a worker process, inside limits the operating system enforces.

Checks that read a format's header before its decoder runs can always be gone around by the next trick of a
format (a strip table, a marker with no length, a chunk repeated a million times). So the decoding of every
file given by path runs in one long-lived worker process (started once, not once per file) with:

- an address-space limit (RLIMIT_AS): DECODE_MEMORY_MB more than the worker had when it started;
- a CPU-time limit per file (RLIMIT_CPU, raised before each file to what the worker has used + DECODE_CPU_SECONDS);
- a wall-clock limit per file (DECODE_WALL_SECONDS, enforced by this side: the worker is killed).

A file that hits a limit gets one line (an ImageError), the worker is started again, and the batch goes on.
The worker answers with a small JSON header and the model's input pixels (size x size bytes): never a pickle,
so a decoder bug it meets cannot reach the process that runs the model. What the decoder libraries print on
file descriptor 2 while a file decodes comes back with the answer, to fold into that file's line.

    python -m device.isolate MEMORY_MB     # the worker itself (started by DecodeWorker; reads frames on stdin)
"""
from __future__ import annotations

import base64
import json
import math
import os
import resource
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from device.preprocess import ImageError

DECODE_MEMORY_MB = 256      # address space a worker may add to its own at start (its peak RSS stays near 300 MB)
DECODE_CPU_SECONDS = 10     # CPU time one file may take to decode (a 40 MP PNG takes about 1 s on x86)
DECODE_WALL_SECONDS = 20    # wall-clock time one file may take (a file on a stalled network mount, say)
START_SECONDS = 30          # the worker's own start (imports); a Pi Zero needs a few seconds
MAX_HEADER = 1 << 16        # an answer's JSON header is at most this many bytes
STDERR_KEEP = 2000          # bytes of a decoder's own output kept per file

_FRAME = struct.Struct(">I")


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---- the worker side -------------------------------------------------------------------------------------------

def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, header: dict, payload: bytes = b"") -> None:
    blob = json.dumps(header).encode()
    _write_all(fd, _FRAME.pack(len(blob)) + blob + _FRAME.pack(len(payload)) + payload)


class _Capture:
    """File descriptor 2 pointed at an in-memory file (memfd: no temporary folder needed) while a file decodes."""

    def __init__(self):
        try:
            self.fd = os.memfd_create("decoder-stderr")
        except (AttributeError, OSError):
            self.fd = None

    def __enter__(self):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.saved = os.dup(2)
            os.dup2(self.fd, 2)
        return self

    def __exit__(self, *exc):
        self.text = ""
        if self.fd is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.text = " ".join(os.read(self.fd, STDERR_KEEP).decode("utf-8", "replace").split())[:200]
        return False


def serve(memory_mb: int) -> int:
    """The worker: frames in on fd 0, answers out on a private copy of fd 1 (fd 1 itself goes to fd 2, so that a
    library printing to stdout cannot corrupt an answer)."""
    import warnings

    from device.preprocess import load_scans

    warnings.simplefilter("ignore")
    out = os.dup(1)
    os.dup2(2, 1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    vm = _status_kb("VmSize")
    if vm is not None and memory_mb > 0:
        limit = (vm + memory_mb * 1024) * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    capture = _Capture()
    _send(out, {"ready": True, "limited": vm is not None})
    while True:
        head = _read_exact(0, _FRAME.size)
        if head is None:
            return 0
        req = json.loads(_read_exact(0, _FRAME.unpack(head)[0]) or b"{}")
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        cpu = math.ceil(used + req["cpu"])  # RLIMIT_CPU counts whole seconds
        if hard == resource.RLIM_INFINITY or cpu <= hard:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, hard))
        path = os.fsdecode(base64.b64decode(req["path"]))
        answer, pixels, restart = {}, b"", False
        with capture:
            try:
                xs, notes = load_scans(path, [(int(s), int(c)) for s, c in req["targets"]])
                answer = {"ok": True, "notes": notes, "shapes": [list(x.shape) for x in xs]}
                pixels = b"".join(np.ascontiguousarray(x, np.uint8).tobytes() for x in xs)
            except ImageError as e:
                answer = {"error": str(e)}
            except MemoryError:
                answer, restart = {"error": f"needs more than {memory_mb} MB to decode (this device's limit)"}, True
            except RecursionError:
                answer, restart = {"error": "corrupt image (nested too deeply to decode)"}, True
            except Exception as e:  # a bug in a decoder or here: the caller reports it as one
                answer = {"internal": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}
        answer["stderr"] = capture.text
        _send(out, answer, pixels)
        if restart:  # a heap that hit its limit once is not trusted with the next file
            return 0


# ---- the caller's side -----------------------------------------------------------------------------------------

class _Forked:
    """The worker as a forked child, with the little of subprocess.Popen that DecodeWorker uses."""

    def __init__(self, memory_mb: int):
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: stdin/stdout are the pipes, stderr goes nowhere; never returns
            code = 1
            try:
                os.dup2(r_in, 0)
                os.dup2(w_out, 1)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                for fd in (r_in, w_in, r_out, w_out, devnull):
                    os.close(fd)
                code = serve(memory_mb)
            finally:
                os._exit(code)
        os.close(r_in)
        os.close(w_out)
        self.pid, self.returncode = pid, None
        self.stdin, self.stdout = os.fdopen(w_in, "wb", buffering=0), os.fdopen(r_out, "rb", buffering=0)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    def wait(self):
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


class DecodeWorker:
    """One worker process, started on first use and again after it is killed; safe to share between threads
    (one file at a time)."""

    def __init__(self, memory_mb: int = DECODE_MEMORY_MB, cpu_seconds: float = DECODE_CPU_SECONDS,
                 wall_seconds: float = DECODE_WALL_SECONDS):
        self.memory_mb, self.cpu_seconds, self.wall_seconds = memory_mb, cpu_seconds, wall_seconds
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._lock = threading.Lock()

    def _spawn(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # where `device` is importable from
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("PYTHONSTARTUP", None)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "device.isolate", str(int(self.memory_mb))],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         env=env, cwd=root, close_fds=True, bufsize=0)
        except OSError:
            # sys.executable cannot be started (an emulated interpreter under qemu-user, a frozen app): the same
            # worker, forked from this process instead
            self.proc = _Forked(self.memory_mb)
        self.starts += 1
        header, _ = self._receive(time.monotonic() + START_SECONDS)
        if header is None or not header.get("ready"):
            self._kill()
            raise ImageError("the decoding worker did not start (run with --verbose, or report it)")

    def _kill(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        for s in (proc.stdin, proc.stdout):
            try:
                s.close()
            except OSError:
                pass
        return proc.wait()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _read(self, n: int, deadline: float) -> bytes | None:
        fd, buf = self.proc.stdout.fileno(), bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError
                chunk = os.read(fd, n - len(buf))
                if not chunk:
                    return None
                buf += chunk
        return bytes(buf)

    def _receive(self, deadline: float) -> tuple[dict | None, bytes]:
        """(header, payload), or (None, b"") when the worker died; TimeoutError past the deadline."""
        head = self._read(_FRAME.size, deadline)
        if head is None:
            return None, b""
        n = _FRAME.unpack(head)[0]
        if n > MAX_HEADER:
            raise ImageError("the decoding worker answered nonsense")
        blob = self._read(n, deadline)
        size = self._read(_FRAME.size, deadline)
        if blob is None or size is None:
            return None, b""
        m = _FRAME.unpack(size)[0]
        if m > 1 << 24:
            raise ImageError("the decoding worker answered nonsense")
        payload = self._read(m, deadline) if m else b""
        if payload is None:
            return None, b""
        return json.loads(blob), payload

    def decode(self, path, size: int, contract: int) -> tuple[np.ndarray, list[str], str]:
        """(model input pixels, notes, what the decoder printed); ImageError with one line for a file that cannot be
        decoded or that hit a limit. RuntimeError (a bug) when the decoder raised something unexpected."""
        xs, notes, printed = self.decode_all(path, [(size, contract)])
        return xs[0], notes, printed

    def decode_all(self, path, targets) -> tuple[list[np.ndarray], list[str], str]:
        """decode for several (size, contract) model inputs from one decode of the file."""
        targets = [(int(s), int(c)) for s, c in targets]
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                self._kill()
                self._spawn()
            req = json.dumps({"path": base64.b64encode(os.fsencode(path)).decode(), "targets": targets,
                              "cpu": self.cpu_seconds}).encode()
            try:
                self.proc.stdin.write(_FRAME.pack(len(req)) + req)
                self.proc.stdin.flush()
                header, payload = self._receive(time.monotonic() + self.wall_seconds)
            except TimeoutError:
                self._kill()
                raise ImageError(f"decoding took longer than {self.wall_seconds:g} s (this device's limit): "
                                 f"refused") from None
            except (BrokenPipeError, OSError, ValueError):
                header, payload = None, b""
            if header is None:  # the worker died on this file: the OS enforced a limit, or a decoder crashed
                code = self._kill()
                raise ImageError(self._death(code)) from None
            if header.get("ok"):
                if header.get("shapes") != [[s, s] for s, _ in targets] or len(payload) != sum(s * s for s, _ in targets):
                    self._kill()
                    raise ImageError("the decoding worker answered nonsense")
                ends = np.cumsum([s * s for s, _ in targets])
                xs = [np.frombuffer(payload[e - s * s:e], np.uint8).reshape(s, s).copy() for (s, _), e in zip(targets, ends)]
                return xs, [str(n) for n in header.get("notes", [])], str(header.get("stderr", ""))
            if self.proc is not None and self.proc.poll() is not None:
                self._kill()
            text = str(header.get("stderr", ""))
            if "internal" in header:
                raise RuntimeError(header["internal"])
            raise ImageError(str(header.get("error", "unreadable")) + (f" (decoder: {text})" if text else ""))

    def _death(self, code) -> str:
        sig = -code if code is not None and code < 0 else None
        if sig == signal.SIGXCPU:
            return f"decoding needed more than {self.cpu_seconds:g} s of CPU time (this device's limit): refused"
        if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGKILL):
            return (f"the image decoder crashed on this file (signal {sig}; it may need more than "
                    f"{self.memory_mb} MB, this device's limit)")
        return f"the image decoder stopped on this file (exit {code})"


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]) if len(sys.argv) > 1 else DECODE_MEMORY_MB))
