"""Synthetic brain-MRI phantoms: the embedded default data set.

Deterministic from a seed; writes JPEGs in the Kaggle layout
(`Training/<class>/*.jpg`, `Testing/<class>/*.jpg`) so they travel through the
real loader. Classes mirror the real ones by *where and what shape* the lesion
is, not by brightness: anatomy, contrast, noise, bias field and pose all vary
so that no single pixel or intensity cue separates them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def _smooth_field(rng, n, octaves=3):
    """Low-frequency random field in [-1, 1] (bias field / texture)."""
    field = np.zeros((n, n))
    for o in range(octaves):
        k = 2 ** (o + 2)
        coarse = rng.standard_normal((k, k))
        img = Image.fromarray(coarse.astype(np.float32), mode="F").resize((n, n), Image.Resampling.BICUBIC)
        field += np.asarray(img) / (2 ** o)
    return field / (np.abs(field).max() + 1e-9)


def phantom(cls: str, rng: np.random.Generator, size: int = 160, with_mask: bool = False):
    """One phantom slice (uint8, size x size); with_mask: also the boolean mask of its lesion (all False for no
    tumour), for tests of where a model looks. The random draws are the same either way."""
    n = size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    yy = (yy - n / 2) / (n / 2)
    xx = (xx - n / 2) / (n / 2)
    # Pose: small rotation and shift of the whole head.
    th = np.deg2rad(rng.uniform(-12, 12))
    cx, cy = rng.uniform(-0.06, 0.06, 2)
    u = np.cos(th) * (xx - cx) + np.sin(th) * (yy - cy)
    v = -np.sin(th) * (xx - cx) + np.cos(th) * (yy - cy)
    a, b = rng.uniform(0.62, 0.80), rng.uniform(0.72, 0.92)  # head half-axes
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    skull_t = rng.uniform(0.06, 0.12)
    brain = r < 1 - skull_t
    skull = (r >= 1 - skull_t) & (r < 1)
    grey, white = rng.uniform(0.35, 0.55), rng.uniform(0.5, 0.8)
    img = np.zeros((n, n))
    img[skull] = rng.uniform(0.6, 1.0)
    img[brain] = grey
    texture = _smooth_field(rng, n, 4)
    wm = (r < rng.uniform(0.55, 0.75)) & (texture > rng.uniform(-0.4, 0.1))
    img[brain & wm] = white
    img += 0.06 * texture * brain
    # Ventricles: paired dark ellipses near the midline.
    vs = rng.uniform(0.05, 0.13)
    for side in (-1, 1):
        vx = side * rng.uniform(0.06, 0.12)
        vent = ((u - vx) / (vs * 0.7)) ** 2 + ((v + 0.05) / (vs * 2.0)) ** 2 < 1
        img[vent & brain] = rng.uniform(0.05, 0.2)
    # Lesion intensity is drawn from one shared range for every class, so
    # brightness alone does not tell tumour classes apart.
    lesion_val = rng.uniform(0.8, 1.1) if rng.random() < 0.8 else rng.uniform(0.0, 0.15)
    inner = 1 - skull_t
    lesion = np.zeros((n, n), bool)
    if cls == "glioma":
        # Irregular intra-axial mass with an edema halo.
        ang = rng.uniform(0, 2 * np.pi)
        rad = rng.uniform(0.15, 0.45) * inner
        gx, gy = rad * np.cos(ang) * a, rad * np.sin(ang) * b
        size_g = rng.uniform(0.16, 0.26)
        d = np.sqrt((u - gx) ** 2 + (v - gy) ** 2) / size_g
        wobble = 0.35 * _smooth_field(rng, n, 3)
        core = d + wobble < 1
        halo = (d + wobble < rng.uniform(1.4, 1.9)) & ~core
        img[halo & brain] = img[halo & brain] * 0.6 + rng.uniform(0.55, 0.75) * 0.4
        img[core & brain] = lesion_val * (1 + 0.25 * texture[core & brain])
        lesion = core & brain
    elif cls == "meningioma":
        # Round, well-bounded extra-axial mass abutting the inner skull.
        ang = rng.uniform(0, 2 * np.pi)
        size_m = rng.uniform(0.15, 0.24)
        rad = inner - size_m * 0.6
        mx, my = rad * np.cos(ang) * a, rad * np.sin(ang) * b
        mass = ((u - mx) ** 2 + (v - my) ** 2) < size_m ** 2
        img[mass & (r < 1)] = lesion_val
        lesion = mass & (r < 1)
    elif cls == "pituitary":
        # Small midline mass low in the skull (sella).
        size_p = rng.uniform(0.09, 0.14)
        px, py = rng.uniform(-0.03, 0.03), rng.uniform(0.45, 0.62) * b
        mass = ((u - px) / (size_p * 1.3)) ** 2 + ((v - py) / size_p) ** 2 < 1
        img[mass] = lesion_val
        lesion = mass
    else:
        # Distractor in healthy scans: a small bright vessel-like spot anywhere.
        if rng.random() < 0.5:
            sx, sy = rng.uniform(-0.4, 0.4, 2)
            img[((u - sx) ** 2 + (v - sy) ** 2 < 0.02 ** 2) & brain] = rng.uniform(0.6, 1.0)
    # Scanner effects: multiplicative bias field, global gain/gamma, noise.
    img *= 1 + rng.uniform(0.1, 0.35) * _smooth_field(rng, n, 2)
    img = np.clip(img, 0, None) ** rng.uniform(0.8, 1.25) * rng.uniform(0.7, 1.15)
    img += np.abs(rng.normal(0, rng.uniform(0.01, 0.05), (n, n)))
    out = np.clip(img * 255, 0, 255).astype(np.uint8)
    return (out, lesion) if with_mask else out


def write_dataset(out, n_train: int = 200, n_test: int = 100, size: int = 160, seed: int = 0) -> Path:
    """Write n_train / n_test images per class under out/Training and out/Testing."""
    out = Path(out)
    for split, count, offset in (("Training", n_train, 0), ("Testing", n_test, 1)):
        for ci, cls in enumerate(CLASSES):
            d = out / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                # One generator per image: any single file is reproducible on its own.
                rng = np.random.default_rng([seed, offset, ci, i])
                arr = phantom(cls, rng, size)
                im = Image.fromarray(arr, mode="L")
                if i % 2:  # like the real set, about half are RGB-encoded grayscale
                    im = im.convert("RGB")
                im.save(d / f"{split[:2]}-{cls[:2]}_{i:04d}.jpg", quality=92)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/synthetic")
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=160, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = write_dataset(a.out, a.train_per_class, a.test_per_class, a.size, a.seed)
    total = len(CLASSES) * (a.train_per_class + a.test_per_class)
    print(f"wrote {total} synthetic MRI phantoms to {out}/Training and {out}/Testing")


if __name__ == "__main__":
    main()
