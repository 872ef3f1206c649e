"""The teacher view cache: function matching made affordable on 2 cores.

Patient, consistent distillation (Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent", CVPR 2022, https://arxiv.org/abs/2106.05237) shows the student the teacher's answer on the very
view it sees, on views far from the training images (strong crops, mixup), for a long schedule. Running the
teacher on every batch costs 3x the time here, so, as FKD does (Shen & Xing, "A Fast Knowledge Distillation
Framework for Visual Recognition", ECCV 2022, https://arxiv.org/abs/2112.01528), each view is rendered once and
the teacher's logits are stored beside it; the student then trains on the cache at the price of a plain fit.

Every view is rendered twice from the same crop of one source render of the scan: at the teacher's input size
(for its logits) and at the student's (what the student trains on); the student's view is never upsampled for
the teacher. Views are rendered from a fixed per-view seed, so the cache is the same whoever builds it; it is
written in shards, so a killed build resumes, and it is keyed by the teacher's file contents, the view recipe and
the images, so student seeds, runs and the ablation harness all reuse one cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from device.atomic import atomic_write_bytes, atomic_write_json
from device.preprocess import CONTRACT_VERSION, RESAMPLE, standardise

SHARD = 2048           # views per shard file (the unit a killed build resumes from)
SOURCE_SCALE = 1.5     # the source render is this much larger than the larger of the two view sizes


@dataclass(frozen=True)
class ViewRecipe:
    """How far a view may leave the training image. Each field is drawn uniformly in its range per view."""
    k: int = 8                                  # views per image
    area: tuple[float, float] = (0.5, 1.0)      # crop area, as a fraction of the (head-cropped) image
    aspect: tuple[float, float] = (0.75, 1.33)  # crop width / height (log-uniform)
    rotate: float = 15.0                        # degrees, either way
    gamma: tuple[float, float] = (0.6, 1.6)
    contrast: tuple[float, float] = (0.75, 1.3)
    brightness: tuple[float, float] = (-20.0, 20.0)   # grey levels added
    blur: float = 0.25                          # probability of a light Gaussian blur
    noise: float = 0.25                         # probability of Gaussian noise (sd 2-8 grey levels)
    mixup: float = 0.5                          # probability that a view mixes two images, lambda ~ Beta(1, 1)

    def key(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def parse(cls, k: int, spec: str) -> "ViewRecipe":
        """The default recipe with k views and the overrides of `spec`: comma-separated FIELD=VALUE, a range as
        LOW:HIGH, e.g. "area=0.35:1,gamma=0.5:2,mixup=0.3" (--view-recipe). ValueError names a bad part."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "k"}
        values = {}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name, _, value = part.partition("=")
            name = name.strip()
            if name not in fields:
                raise ValueError(f"'{part}': no view-recipe field '{name}' (fields: {', '.join(fields)})")
            is_range = isinstance(getattr(cls, name), tuple)
            try:
                nums = tuple(float(v) for v in value.split(":"))
            except ValueError:
                raise ValueError(f"'{part}': not a number") from None
            if len(nums) != (2 if is_range else 1) or not all(math.isfinite(v) for v in nums):
                raise ValueError(f"'{part}': want {name}={'LOW:HIGH' if is_range else 'VALUE'}")
            if is_range and nums[0] > nums[1]:
                raise ValueError(f"'{part}': LOW > HIGH")
            values[name] = nums if is_range else nums[0]
        r = cls(k=k, **values)
        if not (0 < r.area[0] <= r.area[1] <= 1 and 0 < r.aspect[0] and 0 < r.gamma[0] and r.contrast[0] > 0
                and all(0 <= p <= 1 for p in (r.blur, r.noise, r.mixup)) and 0 <= r.rotate <= 180):
            raise ValueError("ranges out of bounds (area in (0, 1], aspect, gamma and contrast > 0, blur, noise and "
                             "mixup probabilities in [0, 1], rotate 0 to 180 degrees)")
        return r


def _affine(size_out: int, box: tuple[float, float, float, float], angle: float, flip: bool):
    """PIL AFFINE coefficients mapping output pixels of a size_out square to source pixels: the crop box
    (cx, cy, w, h) rotated by angle about its centre, mirrored when flip."""
    cx, cy, w, h = box
    a = math.radians(angle)
    sx, sy = w / size_out, h / size_out
    if flip:
        sx = -sx
    c, s = math.cos(a), math.sin(a)
    # source = centre + R @ diag(sx, sy) @ (out - size_out / 2)
    m00, m01, m10, m11 = c * sx, -s * sy, s * sx, c * sy
    half = size_out / 2  # PIL's continuous coordinates: pixel centres at +0.5, so no half-pixel terms here
    x0 = cx - (m00 + m01) * half
    y0 = cy - (m10 + m11) * half
    return (m00, m01, x0, m10, m11, y0)


def _draw_geometry(rng: np.random.Generator, r: ViewRecipe, side: int):
    area = rng.uniform(*r.area) * side * side
    aspect = math.exp(rng.uniform(math.log(r.aspect[0]), math.log(r.aspect[1])))
    w = min(side, math.sqrt(area * aspect))
    h = min(side, math.sqrt(area / aspect))
    cx = rng.uniform(w / 2, side - w / 2)
    cy = rng.uniform(h / 2, side - h / 2)
    return (cx, cy, w, h), rng.uniform(-r.rotate, r.rotate), bool(rng.random() < 0.5)


def _draw_photometric(rng: np.random.Generator, r: ViewRecipe) -> dict:
    return {"gamma": math.exp(rng.uniform(math.log(r.gamma[0]), math.log(r.gamma[1]))),
            "contrast": rng.uniform(*r.contrast), "brightness": rng.uniform(*r.brightness),
            "blur": rng.uniform(0.4, 1.0) if rng.random() < r.blur else 0.0,
            "noise": rng.uniform(2.0, 8.0) if rng.random() < r.noise else 0.0,
            "noise_seed": int(rng.integers(1 << 31))}


def _render(src: Image.Image, size: int, geo, photo: dict) -> np.ndarray:
    """One view of `src` at `size` px, float32 0..255: geometry, then grey levels, blur and noise scaled to size."""
    box, angle, flip = geo
    img = src.transform((size, size), Image.Transform.AFFINE, _affine(size, box, angle, flip),
                        resample=RESAMPLE, fillcolor=0)
    if photo["blur"]:
        # the blur's radius is a fraction of the crop, so both renders blur the same anatomy
        img = img.filter(ImageFilter.GaussianBlur(photo["blur"] * size / 96))
    x = np.asarray(img, np.float32) / 255.0
    x = np.power(x, photo["gamma"])
    x = (x - 0.5) * photo["contrast"] + 0.5
    x = x * 255.0 + photo["brightness"] * (x > 0)  # the black background stays black
    if photo["noise"]:
        x = x + np.random.default_rng(photo["noise_seed"]).normal(0, photo["noise"], x.shape).astype(np.float32)
    return np.clip(x, 0, 255)


def render_view(sources: np.ndarray, i: int, seed: int, recipe: ViewRecipe, sizes: tuple[int, ...]):
    """View number i of the cache (image i // k): one uint8 array per size, and (image a, image b, lambda)."""
    rng = np.random.default_rng([seed, i])
    a = i // recipe.k
    side = sources.shape[1]
    parts = [(a, 1.0)]
    if len(sources) > 1 and rng.random() < recipe.mixup:
        b = int(rng.integers(len(sources) - 1))
        b += b >= a
        lam = float(rng.beta(1.0, 1.0))
        parts = [(a, lam), (b, 1.0 - lam)]
    out = [np.zeros((s, s), np.float32) for s in sizes]
    for img, weight in parts:
        src = Image.fromarray(sources[img], "L")
        geo, photo = _draw_geometry(rng, recipe, side), _draw_photometric(rng, recipe)
        for o, s in zip(out, sizes):
            o += weight * _render(src, s, geo, photo)
    b, lam = (parts[1][0], parts[0][1]) if len(parts) > 1 else (a, 1.0)
    views = [np.round(o).astype(np.uint8) for o in out]
    if CONTRACT_VERSION >= 3:  # a view is a scan as the board would see it: its head's grey levels equalised last
        views = [standardise(v) for v in views]
    return views, (a, b, lam)


@dataclass
class ViewCache:
    """K views per image at the student's size, the teacher's logits on each, and what each view mixes."""
    x: np.ndarray        # (N*K, s, s) uint8, the student's views
    logits: np.ndarray   # (N*K, classes) float32, the teacher's logits on its own render of the same view
    a: np.ndarray        # (N*K,) int32: the image the view belongs to
    b: np.ndarray        # (N*K,) int32: the image mixed in (= a when not mixed)
    lam: np.ndarray      # (N*K,) float32: weight of image a
    key: str
    seconds: float = 0.0
    recipe: dict | str = ""   # what the views are: the ViewRecipe's fields, or a word for the identity views

    def soft_labels(self, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """The labels-only twin's targets: mixed one-hot labels (lam * y_a + (1 - lam) * y_b) and a mask of the
        views whose both images carry a full label (unlabeled and weakly labelled images have none)."""
        eye = np.eye(n_classes + 1, dtype=np.float32)[:, :n_classes]
        la, lb = labels[self.a], labels[self.b]
        known = (la >= 0) & (la < n_classes) & (lb >= 0) & (lb < n_classes)
        lam = self.lam[:, None]
        target = lam * eye[np.clip(la, 0, n_classes)] + (1 - lam) * eye[np.clip(lb, 0, n_classes)]
        return target.astype(np.float32), known


def teacher_digest(files: list[Path]) -> str:
    """The teacher's identity: its files' contents (a retrained teacher at the same path is another teacher)."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cache_key(teacher: str, recipe: ViewRecipe, images_digest: str, sizes: tuple[int, int], seed: int) -> str:
    blob = json.dumps({"teacher": teacher, "recipe": recipe.key(), "images": images_digest, "sizes": sizes,
                       "seed": seed, "source_scale": SOURCE_SCALE, "version": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build(sources: np.ndarray, predict, recipe: ViewRecipe, sizes: tuple[int, int], folder: Path, key: str,
          seed: int = 0, log=print) -> ViewCache:
    """Render every view and score it with `predict` (uint8 (n, t, t) -> logits), shard by shard; finished shards
    are kept, so a killed build resumes where it stopped. sizes = (student, teacher)."""
    folder = Path(folder) / f"views-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    total, t0 = len(sources) * recipe.k, time.time()
    n_shards = math.ceil(total / SHARD)
    parts = []
    for s in range(n_shards):
        f = folder / f"shard{s:05d}.npz"
        if not f.is_file():
            lo, hi = s * SHARD, min(total, (s + 1) * SHARD)
            xs, xt, meta = [], [], []
            for i in range(lo, hi):
                (vs, vt), m = render_view(sources, i, seed, recipe, sizes)
                xs.append(vs)
                xt.append(vt)
                meta.append(m)
            logits = np.asarray(predict(np.stack(xt)), np.float32)
            m = np.asarray(meta, np.float64)
            buf = io.BytesIO()
            np.savez(buf, x=np.stack(xs), logits=logits, a=m[:, 0].astype(np.int32), b=m[:, 1].astype(np.int32),
                     lam=m[:, 2].astype(np.float32))
            atomic_write_bytes(f, buf.getvalue())
            log(f"view cache {key}: shard {s + 1}/{n_shards} ({hi} of {total} views, {time.time() - t0:.0f}s)")
        z = np.load(f)
        parts.append({k: z[k] for k in ("x", "logits", "a", "b", "lam")})
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    seconds = time.time() - t0
    atomic_write_json(folder / "done.json", {"views": total, "recipe": recipe.key(), "sizes": list(sizes)})
    return ViewCache(cat["x"], cat["logits"], cat["a"], cat["b"], cat["lam"], key, seconds, recipe.key())


def identity(images: np.ndarray, logits: np.ndarray, key: str) -> ViewCache:
    """One view per image, the image itself, with the teacher's logits on it (--views 0: classic image-logit KD
    through the same distiller)."""
    n = len(images)
    idx = np.arange(n, dtype=np.int32)
    return ViewCache(np.asarray(images, np.uint8), np.asarray(logits, np.float32), idx, idx.copy(),
                     np.ones(n, np.float32), key, recipe="identity: the training images themselves")


def source_size(student: int, teacher: int) -> int:
    return int(round(max(student, teacher) * SOURCE_SCALE))
