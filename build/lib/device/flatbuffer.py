"""A cheap structural check of a .tflite file before an interpreter sees it.

tflite-runtime 2.14 does not verify a model's flatbuffer: a truncated file or a flipped byte in its tables can
crash the process (SIGSEGV, no message). This walks the tables the interpreter will follow - root, operator
codes, subgraphs, tensors, operators, buffers - and checks that every offset, vector and index stays inside the
file and inside its table, so such a file gets one line instead of a crash. (LiteRT verifies models itself.)
"""
from __future__ import annotations

import struct

IDENTIFIER = b"TFL3"


class BadModel(ValueError):
    pass


class _Reader:
    def __init__(self, data: bytes):
        self.d = data

    def u(self, fmt: str, pos: int):
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.d):
            raise BadModel(f"reference at byte {pos} points outside the file ({len(self.d)} bytes)")
        return struct.unpack_from("<" + fmt, self.d, pos)[0]

    def table(self, pos: int) -> tuple[int, list[int]]:
        """(table position, field offsets) of the table at pos."""
        vtable = pos - self.u("i", pos)
        vsize, tsize = self.u("H", vtable), self.u("H", vtable + 2)
        if vsize < 4 or vsize % 2 or pos + tsize > len(self.d):
            raise BadModel(f"malformed table at byte {pos}")
        fields = [self.u("H", vtable + 4 + 2 * i) for i in range((vsize - 4) // 2)]
        if any(f >= tsize for f in fields if f):
            raise BadModel(f"table at byte {pos} has a field outside itself")
        return pos, fields

    def field(self, table, i: int) -> int | None:
        pos, fields = table
        return pos + fields[i] if i < len(fields) and fields[i] else None

    def scalar(self, table, i: int, fmt: str, default=0):
        at = self.field(table, i)
        return default if at is None else self.u(fmt, at)

    def vector(self, table, i: int, elem: int) -> tuple[int, int]:
        """(first element position, length) of a vector field; (0, 0) when absent."""
        at = self.field(table, i)
        if at is None:
            return 0, 0
        start = at + self.u("I", at)
        n = self.u("I", start)
        if start + 4 + n * elem > len(self.d):
            raise BadModel(f"vector at byte {start} ({n} elements) runs past the end of the file")
        return start + 4, n

    def tables(self, table, i: int) -> list:
        first, n = self.vector(table, i, 4)
        return [self.table(first + 4 * k + self.u("I", first + 4 * k)) for k in range(n)]

    def string(self, table, i: int) -> None:
        self.vector(table, i, 1)

    def ints(self, table, i: int) -> list[int]:
        first, n = self.vector(table, i, 4)
        return [self.u("i", first + 4 * k) for k in range(n)]


def check(data: bytes) -> None:
    """Raise BadModel with a one-line reason when `data` is not a structurally sound TFLite flatbuffer."""
    if len(data) < 16:
        raise BadModel(f"only {len(data)} bytes")
    if data[4:8] != IDENTIFIER:
        raise BadModel("no TFL3 file identifier (not a TFLite model)")
    if len(data) % 4:  # a flatbuffer is always padded to its 4-byte (or wider) alignment
        raise BadModel(f"{len(data)} bytes is not a whole flatbuffer (truncated or padded)")
    r = _Reader(data)
    model = r.table(r.u("I", 0))
    r.string(model, 3)
    codes = r.tables(model, 1)
    for c in codes:
        if not 0 <= max(r.scalar(c, 0, "b"), r.scalar(c, 3, "i")) <= 255:
            raise BadModel("an operator code is not a TFLite builtin")
        r.string(c, 1)
    n_codes = len(codes)
    buffers = r.tables(model, 4)
    if any(k >= len(buffers) for k in r.ints(model, 5)):
        raise BadModel("a metadata buffer index points past the buffers")
    for meta in r.tables(model, 6):
        r.string(meta, 0)
        if r.scalar(meta, 1, "I") >= len(buffers):
            raise BadModel("a metadata entry refers to a buffer that does not exist")
    for b in buffers:
        r.vector(b, 0, 1)
        offset, size = r.scalar(b, 1, "Q"), r.scalar(b, 2, "Q")
        if offset and (offset + size > len(data)):
            raise BadModel(f"a weight buffer ({size} bytes at {offset}) lies past the end of the file")
    subgraphs = r.tables(model, 2)
    if not subgraphs:
        raise BadModel("no subgraph")
    n_tensors = []
    for g in subgraphs:
        r.string(g, 4)
        tensors = r.tables(g, 0)
        n_tensors.append(len(tensors))
        for t in tensors:
            r.vector(t, 0, 4)
            r.string(t, 3)
            if not 0 <= r.scalar(t, 1, "b") <= 17:
                raise BadModel("a tensor has an unknown element type")
            if r.scalar(t, 2, "I") >= max(len(buffers), 1):
                raise BadModel("a tensor refers to a buffer that does not exist")
            if any(d < -1 for d in r.ints(t, 0)):
                raise BadModel("a tensor has a negative dimension")
            if r.field(t, 4) is not None:
                q = r.table(r.field(t, 4) + r.u("I", r.field(t, 4)))
                scales, zero_points = r.vector(q, 2, 4)[1], r.vector(q, 3, 8)[1]
                if zero_points and scales != zero_points:
                    raise BadModel("a tensor's quantisation has mismatched scales and zero points")
        ok = range(-1, len(tensors))
        if any(k not in ok for k in r.ints(g, 1) + r.ints(g, 2)):
            raise BadModel("a subgraph input or output refers to a tensor that does not exist")
        for op in r.tables(g, 3):
            if r.scalar(op, 0, "I") >= n_codes:
                raise BadModel("an operator refers to an operator code that does not exist")
            if any(k not in ok for k in r.ints(op, 1) + r.ints(op, 2)):
                raise BadModel("an operator refers to a tensor that does not exist")
    for sig in r.tables(model, 7):
        r.string(sig, 2)
        k = r.scalar(sig, 4, "I")
        if k >= len(subgraphs):
            raise BadModel("a signature refers to a subgraph that does not exist")
        for tm in r.tables(sig, 0) + r.tables(sig, 1):
            r.string(tm, 0)
            if r.scalar(tm, 1, "I") >= n_tensors[k]:
                raise BadModel("a signature refers to a tensor that does not exist")
