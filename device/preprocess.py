"""The preprocessing contract: file on disk -> uint8 grayscale array.

Training (train.data) and the board (device.classify) both call `load_image`, so
the pixels the student learns from are the pixels the int8 model is fed.
Bump CONTRACT_VERSION whenever the output of `load_image` can change: caches and
model metadata carry it, and the device refuses a model built for another one.
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CONTRACT_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
# Fixed filter: the resampling filter changes pixels, so it is part of the contract.
RESAMPLE = Image.Resampling.BILINEAR
# A scan is at most a few thousand pixels across; anything larger is refused
# before decoding so a hostile or broken file cannot eat the board's memory.
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """A file that cannot be turned into a model input; the message says why."""


def is_image_path(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _to_grayscale(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit scans: stretch the used range to 8 bits instead of clipping.
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # MRI background is black: composite transparency onto black.
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    return img.convert("L")


def load_image(path, size: int) -> np.ndarray:
    """Decode `path` into a (size, size) uint8 grayscale array.

    Steps, in order: first frame only; EXIF orientation applied; grayscale
    (RGB-encoded grayscale collapses to the same values); padded with black to a
    square (keeps anatomy proportions); resized with RESAMPLE.
    Raises ImageError with a one-line reason for anything unusable.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(1)
            if not head:
                raise ImageError("empty file (0 bytes)")
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fh)
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP > {MAX_PIXELS / 1e6:.0f} MP limit)"
                    )
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
                img = _to_grayscale(img)
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
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL reports truncated / corrupt data as OSError ("image file is truncated").
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"corrupt or truncated image ({why})") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError("image has no pixels")
    side = max(w, h)
    if w != h:
        square = Image.new("L", (side, side), 0)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    if side != size:
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8).copy()
