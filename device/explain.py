"""Where the model looked: occlusion maps computed with the very int8 model the board runs (numpy + Pillow only).

A `.tflite` file has no gradients, so Grad-CAM is out of reach on the board; occlusion needs only the
interpreter. A square patch slides over the model's input on a fixed GRID x GRID lattice; under each position
the pixels are replaced by a heavily blurred copy of the slice (the patch keeps the slice's grey levels, but not
its detail: a black patch would itself look like a lesion or a hole), and the drop of the explained class's
weight of evidence, log(p / (1 - p)) (Zintgraf et al., ICLR 2017), is added to every pixel the patch covered.
Log-odds, not the probability: an int8 softmax moves in steps of 1/256, so a confident answer (0.996) would hide
every drop smaller than a step, while its log-odds still move by ~0.7 per step. The map is the mean drop per
pixel, at the model input's size (the head-cropped square the model sees), clipped at 0: bright where hiding the
pixels weakens the answer.

Cost is fixed: GRID * GRID + 1 interpreter runs per image (EVALUATIONS), whatever the image. The runs loop: the
shipped models take a batch of one, and resizing an interpreter's input per call would cost more than it saves.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GRID = 11                        # patch positions per axis
EVALUATIONS = GRID * GRID + 1    # interpreter runs per explanation (the +1: the slice itself)
PATCH_FRACTION = 1 / 6           # patch side, as a fraction of the input side (16 px at 96 px)
EPS = 1 / 512                    # half an int8 probability step: keeps the log-odds of 0 and 1 finite


def log_odds(p: float) -> float:
    return float(np.log(p + EPS) - np.log(1.0 - p + EPS))


@dataclass(frozen=True)
class Explanation:
    heatmap: np.ndarray     # (size, size) float32 >= 0: mean drop of the class's log-odds when the pixel is hidden
    pixels: np.ndarray      # (size, size) uint8: the model input that was explained
    label: str              # the class explained
    class_index: int
    probability: float      # its probability on the unoccluded slice
    evaluations: int        # interpreter runs spent
    seconds: float

    def peak(self) -> tuple[int, int]:
        """(row, column) of the map's maximum."""
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape))


def windows(size: int, grid: int = GRID) -> list[tuple[int, int, int]]:
    """(top, left, side) of every patch position: GRID per axis, evenly spaced, covering the whole input."""
    side = max(2, round(size * PATCH_FRACTION))
    starts = np.round(np.linspace(0, size - side, grid)).astype(int)
    return [(int(t), int(left), side) for t in starts for left in starts]


def occlusion(predict, pixels: np.ndarray, target: int | None = None, grid: int = GRID):
    """(heatmap, target, base probabilities, evaluations) for `predict`: uint8 (size, size) -> probabilities.
    target None: the most probable class."""
    pixels = np.ascontiguousarray(pixels, np.uint8)
    size = pixels.shape[0]
    base = np.asarray(predict(pixels), np.float32)
    target = int(np.argmax(base)) if target is None else int(target)
    evidence = log_odds(float(base[target]))
    wins = windows(size, grid)
    radius = max(1, wins[0][2] // 2)
    blurred = np.asarray(Image.fromarray(pixels, "L").filter(ImageFilter.BoxBlur(radius)), np.uint8)
    total = np.zeros((size, size), np.float64)
    count = np.zeros((size, size), np.float64)
    x = pixels.copy()
    for top, left, side in wins:
        sl = (slice(top, top + side), slice(left, left + side))
        x[sl] = blurred[sl]
        drop = evidence - log_odds(float(predict(x)[target]))
        x[sl] = pixels[sl]
        total[sl] += drop
        count[sl] += 1
    heat = np.clip(total / np.maximum(count, 1), 0, None).astype(np.float32)
    return heat, target, base, len(wins) + 1


def explain(classifier, pixels: np.ndarray, target: int | None = None) -> Explanation:
    t0 = time.perf_counter()
    heat, target, base, n = occlusion(classifier.predict_pixels, pixels, target)
    return Explanation(heat, np.asarray(pixels, np.uint8), classifier.labels[target], target, float(base[target]), n,
                       time.perf_counter() - t0)


def render(e: Explanation, scale: int = 4) -> Image.Image:
    """The slice as the model saw it, enlarged, the map blended over it in red, and a caption line."""
    side = e.pixels.shape[0] * scale
    gray = np.asarray(Image.fromarray(e.pixels, "L").resize((side, side), Image.Resampling.BILINEAR), np.float32)
    peak = float(e.heatmap.max())
    heat = e.heatmap / peak if peak > 0 else e.heatmap
    heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8), "L").resize((side, side),
                                                                                 Image.Resampling.BILINEAR),
                      np.float32) / 255.0
    alpha = 0.65 * heat
    rgb = np.stack([gray * (1 - alpha) + 255 * alpha, gray * (1 - alpha), gray * (1 - alpha)], axis=-1)
    canvas = Image.new("RGB", (side, side + 22), (0, 0, 0))
    canvas.paste(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"), (0, 22))
    caption = f"{e.label} {e.probability:.1%}  (occlusion, {e.evaluations} runs)"
    ImageDraw.Draw(canvas).text((4, 5), caption, fill=(255, 255, 255))
    return canvas


def png_bytes(e: Explanation) -> bytes:
    import io

    buf = io.BytesIO()
    render(e).save(buf, "PNG")
    return buf.getvalue()
