"""The preprocessing contract: file on disk -> uint8 grayscale array.

Two steps, used by both sides: `decode_scan` (file -> grayscale PIL image) and `to_model_input` (framing by the
contract, then resize). Training (train.data) calls them separately, to decode each file once for several sizes;
the board (device.runtime) calls them through `load_scan`. So the pixels the student learns from are the pixels
the int8 model is fed. Bump CONTRACT_VERSION whenever the output of `to_model_input` can change for an ordinary
image: caches and model metadata carry it, and the device applies the contract a model's sidecar names
(CONTRACTS), refusing any other.

  v1: pad to a square with black, resize.
  v2: crop to the head's bounding box, then resize (stretch) to the square. The training images were squashed to
      224x224 squares by their redistributors and their head fills 68 to 90% of the frame depending on the class;
      real scans come at other aspect ratios and framings. Cropping to the head gives every scan one framing, so
      neither the frame nor the aspect ratio can stand in for the class (docs/research.md, Q11).
  v3: v2, then the head's grey levels standardised (`standardise`): mean 128, sd 40. The no-tumour class's source
      is brighter (head mean ~101 grey levels against 70 to 81 for the tumour classes) and each source has its
      own window, so brightness and contrast cannot stand in for the class; the histogram's shape is kept (full
      equalisation cost 2.5 points in distribution; docs/research.md, Q24).

Memory is bounded by the pixel-count check, never by what a header claims: no
buffer grows with max(width, height)^2, and wide 16-bit or transparent images
are converted a band of rows at a time.
"""
from __future__ import annotations

import math
import os
import stat
import struct
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

CONTRACT_VERSION = 3          # what training writes now
CONTRACTS = (1, 2, 3)         # what the device can apply (v1 and v2 models keep working)
PICTURE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Picture formats this device no longer reads (each decoder had a worst case of its own: TIFF tile and strip tables,
# BMP run lengths): such a file gets one line asking for PNG, not "not an image".
REFUSED_EXTENSIONS = {".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF", ".webp": "WebP"}
DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = PICTURE_EXTENSIONS + DICOM_EXTENSIONS + tuple(REFUSED_EXTENSIONS)
# Fixed filter: the resampling filter changes pixels, so it is part of the contract.
RESAMPLE = Image.Resampling.BILINEAR
# A scan is at most a few thousand pixels across; anything larger is refused
# before decoding so a hostile or broken file cannot eat the board's memory.
MAX_PIXELS = 40_000_000
# Up to this side an image is padded to a square at full resolution, then resized (the contract's exact
# pixels). A longer side (a strip claiming 62,298 px, say) is first reduced by an integer box filter to at most
# this side, so the square canvas never exceeds ORDINARY_SIDE^2 bytes (16 MB).
ORDINARY_SIDE = 4096
BAND_PIXELS = 1 << 20  # rows converted at a time for 16-bit and transparent images
# Head crop (v2): found on a thumbnail of at most THUMB_SIDE pixels, blurred so that JPEG noise and the dark gap
# between skull and brain do not split the head; a pixel is "head" above HEAD_LEVEL of the thumbnail's 99th
# percentile (and above HEAD_FLOOR grey levels); the largest 8-connected region wins, so text, rulers and
# noise specks beside the head are left out. A region smaller than MIN_HEAD of the thumbnail means no head was
# found: the whole image is used.
THUMB_SIDE = 128
HEAD_LEVEL = 0.10
HEAD_FLOOR = 8
MIN_HEAD = 0.01
HEAD_MARGIN = 0.03            # of the box's longer side, on every side
# v3: the head's grey levels after standardise (the mean and sd of its pixels above the head level)
HEAD_MEAN, HEAD_SD = 128.0, 40.0
DICOM_MAGIC_OFFSET = 128
# The decoders a scan can arrive in (Pillow's names); any other format is "not an image". Every file given by path
# on the board is decoded inside OS limits (device/isolate.py); the checks here keep ordinary cases cheap.
PICTURE_FORMATS = ("JPEG", "PNG")  # JPEG opens MPO files too
MAX_JPEG_SCANS = 64
MAX_JPEG_BYTES = 128 << 20
MAX_JPEG_COEFFICIENT_BYTES = 160 << 20   # a 6320^2 grey progressive JPEG needs 80 MB; 4:4:4 colour, 240 MB
# Large JPEGs are decoded at a DCT-reduced scale to at most this side (1/2, 1/4 or 1/8 of the original).
DRAFT_SIDE = 2048
# EXIF orientation -> the transpose that undoes it (as ImageOps.exif_transpose does)
EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                  4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                  7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"

# Pillow's own bomb guard would answer before ours (with its own wording) above 2 x its limit: ours decides.
Image.MAX_IMAGE_PIXELS = None
# Warnings about odd files (EXIF, palette transparency) once per run, not once per file.
warnings.filterwarnings("once", module="PIL")


class ImageError(ValueError):
    """A file that cannot be turned into a model input; the message says why."""


def is_image_path(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def dicom_preamble(path) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble (whatever its name). OSError if unreadable."""
    with open(path, "rb") as fh:
        fh.seek(DICOM_MAGIC_OFFSET)
        return fh.read(4) == b"DICM"


def is_dicom_file(path) -> bool:
    """dicom_preamble, with an unreadable file counted as not DICOM."""
    try:
        return dicom_preamble(path)
    except OSError:
        return False


def _bands(img: Image.Image):
    """(top, bottom) row ranges of about BAND_PIXELS pixels each."""
    w, h = img.size
    step = max(1, BAND_PIXELS // max(w, 1))
    for top in range(0, h, step):
        yield top, min(h, top + step)


def _to_grayscale(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit scans: stretch the used range to 8 bits instead of clipping (float64, band by band).
        lo, hi = (float(v) for v in img.getextrema())
        out = Image.new("L", img.size, 0)
        if hi > lo:
            for top, bottom in _bands(img):
                a = np.asarray(img.crop((0, top, img.width, bottom)), dtype=np.float64)
                band = np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
                out.paste(Image.fromarray(band, mode="L"), (0, top))
        return out
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # MRI background is black: composite transparency onto black, band by band.
        out = Image.new("L", img.size, 0)
        for top, bottom in _bands(img):
            rgba = img.crop((0, top, img.width, bottom)).convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            out.paste(Image.alpha_composite(black, rgba).convert("L"), (0, top))
        return out
    return img.convert("L")


def _check_size(w: int, h: int) -> None:
    if w * h > MAX_PIXELS:
        raise ImageError(f"image too large ({w}x{h} = {w * h:,} pixels > {MAX_PIXELS:,} limit)")


def file_kind(mode: int) -> str:
    """What a non-regular file is, for the one line that says it is not an image."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _jpeg_check(fh) -> None:
    """Refuse, before decoding, the JPEGs whose decoding cost is out of bounds, read from the segment structure
    (entropy-coded data skipped): more than MAX_JPEG_SCANS scans (a progressive JPEG has about 10; thousands of
    repeated scans are a CPU bomb that Pillow decodes one by one over the whole image), or a progressive image
    whose DCT coefficients (2 bytes each, all components, held whole by libjpeg whatever the output scale) exceed
    MAX_JPEG_COEFFICIENT_BYTES."""
    fh.seek(0)
    data = fh.read(MAX_JPEG_BYTES + 1)
    fh.seek(0)  # (Pillow seeks to its tiles itself when it decodes)
    if len(data) > MAX_JPEG_BYTES:
        raise ImageError(f"JPEG file larger than {MAX_JPEG_BYTES >> 20} MB: not a scan this device reads")
    i, scans, end = 2, 0, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            i = data.find(b"\xff", i)
            if i < 0:
                break
            continue
        marker = data[i + 1]
        if marker in (0xFF, 0x00) or 0xD0 <= marker <= 0xD8 or marker == 0x01:
            # fill byte, stuffed zero; RSTn, SOI and TEM stand alone (no length): counted as segments with a
            # length, a TEM would let thousands of scans slip past the count
            i += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:  # end of image
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xC2 and i + 10 <= end:  # progressive frame: height, width, then 3 bytes per component
            h, w, n = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9]
            comps = [data[i + 10 + 3 * k + 1] for k in range(n) if i + 12 + 3 * k <= end]
            if comps:
                hmax, vmax = max(c >> 4 for c in comps) or 1, max(c & 15 for c in comps) or 1
                blocks = sum(math.ceil(w * (c >> 4) / hmax / 8) * math.ceil(h * (c & 15) / vmax / 8) for c in comps)
                if blocks * 64 * 2 > MAX_JPEG_COEFFICIENT_BYTES:
                    raise ImageError(f"progressive JPEG of {w}x{h} with {len(comps)} components needs "
                                     f"{blocks * 128 >> 20} MB to decode (limit {MAX_JPEG_COEFFICIENT_BYTES >> 20} MB): "
                                     f"save it as a baseline JPEG or PNG")
        i += 2 + length
        if marker == 0xDA:  # start of scan: skip its entropy-coded data up to the next real marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(f"JPEG with more than {MAX_JPEG_SCANS} scans (a normal one has at most about 12): "
                                 f"refused, it would take minutes to decode")
            while True:
                i = data.find(b"\xff", i)
                if i < 0 or i + 1 >= end:
                    return
                nxt = data[i + 1]
                if nxt in (0x00, 0xFF) or 0xD0 <= nxt <= 0xD7:
                    i += 1 if nxt == 0xFF else 2
                    continue
                break


def _decode_picture(path) -> Image.Image:
    with open(path, "rb") as fh:
        if not fh.read(1):
            raise ImageError("empty file (0 bytes)")
        fh.seek(0)
        # Only the picture decoders a scan can come in: a .jpg holding PostScript must not reach Ghostscript.
        img = Image.open(fh, formats=PICTURE_FORMATS)
        _check_size(*img.size)
        if img.format in ("JPEG", "MPO"):
            _jpeg_check(fh)
        img.seek(0)
        w, h = img.size
        if img.format in ("JPEG", "MPO") and max(w, h) > ORDINARY_SIDE:
            # decode at a DCT-reduced scale: the full-size decode would be thrown away anyway
            img.draft("L", (math.ceil(w * DRAFT_SIDE / max(w, h)), math.ceil(h * DRAFT_SIDE / max(w, h))))
        img.load()
        orientation = img.getexif().get(0x0112, 1)
    # Grey first, then the EXIF rotation: rotating a 40 MP RGB image would copy 120 MB, its grey version 40 MB.
    gray = _to_grayscale(img)
    del img
    method = EXIF_TRANSPOSE.get(orientation)
    return gray.transpose(method) if method else gray


def _frame_notes(n_frames: int, index: int) -> list[str]:
    return [f"multi-frame DICOM: frame {index + 1} of {n_frames} (the middle one) classified"] if n_frames > 1 else []


def _decode_dicom(path) -> tuple[Image.Image, list[str]]:
    """A DICOM slice as 8-bit grayscale: modality rescale, the file's window (else a robust 0.5-99.5 percentile
    window), MONOCHROME1 inverted; the middle frame of a multi-frame file."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        raise ImageError("DICOM file, but pydicom is not installed (pip install -r device/requirements.txt)") from None
    try:
        return _dicom_pixels(path)
    except (ImageError, MemoryError):
        raise
    except Exception as e:  # pydicom parses lazily and raises many types on malformed files
        raise ImageError(f"unreadable DICOM ({(str(e).splitlines() or [''])[0][:120] or type(e).__name__})") from None


def _first(value) -> float:
    """A numeric tag's value, or the first of several (pydicom's MultiValue is a Sequence)."""
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)


def _colour_to_gray(arr: np.ndarray) -> Image.Image:
    """A colour DICOM (RGB samples) as 8-bit grey: 8-bit samples as Pillow converts a colour picture; wider ones
    (16-bit colour) as luminance stretched over their used range, never wrapped modulo 256."""
    rgb = arr[..., :3]
    if rgb.dtype == np.uint8:
        return _to_grayscale(Image.fromarray(np.ascontiguousarray(rgb), "RGB"))
    step = max(1, BAND_PIXELS // max(arr.shape[1], 1))
    lum = np.empty(arr.shape[:2], np.float32)
    for top in range(0, arr.shape[0], step):
        band = rgb[top:top + step].astype(np.float32)
        lum[top:top + step] = band[..., 0] * 0.299 + band[..., 1] * 0.587 + band[..., 2] * 0.114
    lo, hi = float(lum.min()), float(lum.max())
    gray = np.zeros(lum.shape, np.uint8)
    if hi > lo:
        for top in range(0, arr.shape[0], step):
            gray[top:top + step] = np.round((lum[top:top + step] - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return Image.fromarray(gray, mode="L")


def _dicom_pixels(path) -> tuple[Image.Image, list[str]]:
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.pixels import pixel_array

    # One open file for every read: a file swapped on disk between the size check and the pixel read cannot
    # get a bigger image past the check (and what is decoded is checked against what was checked).
    with open(path, "rb") as fh:
        # The file meta group is read alone first: pydicom inflates a deflated data set whole before any size
        # check, so 1 MB on disk can become gigabytes. Such files are refused before that.
        read_preamble(fh, False)
        syntax = str(getattr(_read_file_meta_info(fh), "TransferSyntaxUID", "") or "")
        if syntax == DEFLATED_DICOM:
            raise ImageError("deflated DICOM (Deflated Explicit VR Little Endian) is not supported: it cannot be "
                             "inflated within this device's memory bounds; export it uncompressed (e.g. gdcmconv --raw)")
        fh.seek(0)
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            raise ImageError(f"compressed DICOM ({syntax.name}) needs a codec this package does not ship; "
                             f"export it uncompressed (e.g. dcmdjpeg / gdcmconv --raw)")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        if rows < 1 or cols < 1:
            raise ImageError("DICOM file without an image (no rows / columns)")
        _check_size(cols, rows)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames < 1 or frames * rows * cols > 4 * MAX_PIXELS:
            raise ImageError(f"DICOM with {frames} frames of {cols}x{rows} is beyond this device's limits")
        index = frames // 2
        fh.seek(0)
        arr = pixel_array(fh, index=index if frames > 1 else None)
    if arr.shape[:2] != (rows, cols):
        raise ImageError(f"DICOM pixel data of shape {arr.shape} does not match its header ({rows}x{cols})")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour secondary capture
        return _colour_to_gray(arr), _frame_notes(frames, index)
    if arr.ndim != 2:
        raise ImageError(f"DICOM pixel data of shape {arr.shape} is not a 2-D slice")
    slope, intercept = _first(ds.get("RescaleSlope", 1) or 1), _first(ds.get("RescaleIntercept", 0) or 0)

    def modality(a):  # stored values -> modality units (float32), for a band of rows at a time
        return a.astype(np.float32) * slope + intercept

    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c, w = _first(center), max(_first(width), 1.0)
        lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    else:  # a huge slice's percentiles come from every other row and column: the same window, a quarter the memory
        sample = arr if arr.size <= ORDINARY_SIDE ** 2 else arr[::2, ::2]
        lo, hi = (float(v) for v in np.percentile(modality(sample), [0.5, 99.5]))
    # Windowed to 8 bits a band of rows at a time: float32 copies of a whole 40 MP slice would cost 160 MB each.
    gray = np.empty(arr.shape, np.uint8)
    step = max(1, BAND_PIXELS // max(arr.shape[1], 1))
    for top in range(0, arr.shape[0], step):
        x = modality(arr[top:top + step])
        x = np.zeros_like(x) if not hi > lo else np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0
        gray[top:top + step] = np.round(np.nan_to_num(x)).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: low values are white
    return Image.fromarray(gray, mode="L"), _frame_notes(frames, index)


def _runs(row: np.ndarray) -> tuple[list[int], list[int]]:
    """Starts and (exclusive) ends of the True runs of a boolean row."""
    d = np.diff(np.concatenate(([0], row.astype(np.int8), [0])))
    return np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()


def largest_region_box(mask: np.ndarray) -> tuple[int, int, int, int, int] | None:
    """(left, top, right, bottom, area) of the largest 8-connected True region (right/bottom exclusive), or None.

    Run-length union-find: rows are scanned once and runs that touch a run of the row above are merged, so it
    costs O(runs) in plain numpy + Python, with no SciPy on the board."""
    parent: list[int] = []
    info: list[list[int]] = []   # per run: left, top, right, bottom, area

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    prev: list[tuple[int, int, int]] = []
    for y in range(mask.shape[0]):
        cur = []
        j = 0
        for s, e in zip(*_runs(mask[y])):
            rid = len(parent)
            parent.append(rid)
            info.append([s, y, e, y + 1, e - s])
            while j < len(prev) and prev[j][1] < s:   # runs above that end before this one's diagonal reach
                j += 1
            k = j
            while k < len(prev) and prev[k][0] <= e:  # 8-connected: [ps, pe) touches [s - 1, e + 1)
                a, b = find(prev[k][2]), find(rid)
                if a != b:
                    parent[b] = a
                    ia, ib = info[a], info[b]
                    info[a] = [min(ia[0], ib[0]), min(ia[1], ib[1]), max(ia[2], ib[2]), max(ia[3], ib[3]),
                               ia[4] + ib[4]]
                k += 1
            cur.append((s, e, rid))
        prev = cur
    roots = [info[i] for i in range(len(parent)) if parent[i] == i]
    return tuple(max(roots, key=lambda r: r[4])) if roots else None


def head_box(img: Image.Image) -> tuple[int, int, int, int] | None:
    """The head's bounding box in `img` (PIL box: left, top, right, bottom), with a margin; None = no head found."""
    factor = max(1, math.ceil(max(img.size) / THUMB_SIDE))
    thumb = img.reduce(factor) if factor > 1 else img
    blurred = np.asarray(thumb.filter(ImageFilter.BoxBlur(1)), dtype=np.uint8)
    level = max(HEAD_FLOOR, HEAD_LEVEL * float(np.percentile(blurred, 99)))
    box = largest_region_box(blurred > level)
    if box is None or box[4] < MIN_HEAD * blurred.size:
        return None
    # The blur joins the head's parts but widens it by a pixel: the box is the unblurred pixels inside it.
    x0, y0, x1, y1 = box[:4]
    raw = np.asarray(thumb, dtype=np.uint8)[y0:y1, x0:x1] > level
    rows, cols = np.flatnonzero(raw.any(axis=1)), np.flatnonzero(raw.any(axis=0))
    if len(rows):
        x0, y0, x1, y1 = x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1
    left, top, right, bottom = (int(v) * factor for v in (x0, y0, x1, y1))
    margin = math.ceil(HEAD_MARGIN * max(right - left, bottom - top))
    return (max(0, left - margin), max(0, top - margin), min(img.width, right + margin),
            min(img.height, bottom + margin))


def to_model_input(img: Image.Image, size: int, contract: int = CONTRACT_VERSION) -> np.ndarray:
    """A grayscale image framed by the contract (v1: padded to a square; v2: cropped to the head) and resized."""
    if contract not in CONTRACTS:
        raise ValueError(f"preprocessing contract v{contract} is not one of {CONTRACTS}")
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError("image has no pixels")
    if max(w, h) > ORDINARY_SIDE:
        factor = math.ceil(max(w, h) / ORDINARY_SIDE)
        img = img.reduce(factor)
        w, h = img.size
    if contract >= 2:
        box = head_box(img)
        if box is not None and box != (0, 0, w, h):
            img = img.crop(box)
        if img.size != (size, size):
            img = img.resize((size, size), RESAMPLE)
        x = np.asarray(img, dtype=np.uint8).copy()
        return standardise(x) if contract >= 3 else x
    side = max(w, h)
    if w != h:
        square = Image.new("L", (side, side), 0)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    if side != size:
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8).copy()


def standardise(x: np.ndarray) -> np.ndarray:
    """Contract v3: the head's pixels (above the head level, as head_box: HEAD_LEVEL of the 99th percentile, at
    least HEAD_FLOOR) mapped linearly to mean HEAD_MEAN and sd HEAD_SD, everything darker to 0. The map is a
    256-entry table computed in float64 (IEEE arithmetic: the same bytes on every board)."""
    flat = x.ravel()
    if not flat.size:
        return x
    k = flat.size * 99 // 100
    p99 = int(np.partition(flat, k)[k])
    level = max(HEAD_FLOOR, p99 * round(HEAD_LEVEL * 100) // 100)
    hist = np.bincount(flat[flat > level], minlength=256).astype(np.int64)
    n = int(hist.sum())
    if n < 2:
        return x
    v = np.arange(256, dtype=np.int64)
    mean = float((hist * v).sum()) / n
    var = float((hist * (v - mean) ** 2).sum()) / n
    if not var > 0:
        return x
    lut = np.clip(np.round(HEAD_MEAN + HEAD_SD * (v - mean) / np.sqrt(var)), 1, 255)
    lut[:level + 1] = 0
    return lut.astype(np.uint8)[x]


def load_scan(path, size: int, contract: int = CONTRACT_VERSION) -> tuple[np.ndarray, list[str]]:
    """load_image, plus notes on what was chosen for the caller to show (e.g. which frame of a DICOM series)."""
    xs, notes = load_scans(path, [(size, contract)])
    return xs[0], notes


def load_scans(path, targets) -> tuple[list[np.ndarray], list[str]]:
    """load_scan for several (size, contract) model inputs from one decode (a model and its second opinion)."""
    img, notes = decode_scan(path)
    try:
        return [to_model_input(img, size, contract) for size, contract in targets], notes
    except MemoryError:
        raise ImageError("not enough memory to decode this image") from None


def decode_scan(path) -> tuple[Image.Image, list[str]]:
    """A file as a grayscale PIL image, before framing and resizing (so one decode can serve several sizes),
    and notes on what was chosen. Raises ImageError with a one-line reason for anything unusable."""
    notes: list[str] = []
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # never open() a FIFO or a device: it can block forever
            raise ImageError(f"{file_kind(st.st_mode)}, not an image file")
        name = str(path).lower()
        refused = next((f for ext, f in REFUSED_EXTENSIONS.items() if name.endswith(ext)), None)
        if refused:
            raise ImageError(f"{refused} files are not read on this device (JPEG, PNG and DICOM are): convert it to PNG")
        # A picture's own extension decides without a second open; other names are sniffed for the DICM preamble.
        if name.endswith(DICOM_EXTENSIONS) or (not name.endswith(PICTURE_EXTENSIONS) and is_dicom_file(path)):
            img, notes = _decode_dicom(path)
        else:
            img = _decode_picture(path)
        return img, notes
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except MemoryError:
        raise ImageError("not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError) as e:
        # PIL reports truncated / corrupt data as OSError ("image file is truncated") and worse.
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"corrupt or truncated image ({why})") from None


def load_image(path, size: int, contract: int = CONTRACT_VERSION) -> np.ndarray:
    """Decode `path` into a (size, size) uint8 grayscale array.

    Steps, in order: first frame only (DICOM: the middle frame, windowed to 8 bits); EXIF orientation applied;
    grayscale (RGB-encoded grayscale collapses to the same values); cropped to the head's bounding box (v1: padded
    with black to a square); resized with RESAMPLE. Raises ImageError with a one-line reason for anything unusable.
    """
    return load_scan(path, size, contract)[0]
