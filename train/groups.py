"""Style groups: which look (source collection, scanner, framing) each training image has, found without labels.

The real training set's classes come from different collections (no tumour: almost all one collection; glioma
mostly another), so a model can learn "a slice that looks like this is normal" and miss that collection's own
tumours (docs/research.md, Q19). This module measures that shortcut on the training data alone:

- groups: k-means on a generic ImageNet model's pooled features (EfficientNet-Lite0 as the registry weights ship
  it, never fine-tuned on these labels), fitted on the training split and assigned to every image;
- `table`: class x group counts; `shortcut_probe`: how well the group alone predicts the class (a classifier that
  sees no anatomy, only the look).

Weighting the training images so that class and group are independent (--group-balance, teacher and student) was
measured and did not pay (Q19): the option is gone, its code is in the history (commit bec7677).

    python -m train.groups --data ../shared/data/brain-tumor-mri/Training     # the table and the probe
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.atomic import atomic_write_bytes

GROUPS = 6          # k-means clusters: enough to split the collections, few enough for cells of tens of images
FEATURE_SIZE = 128  # the teacher's input side: the features the teacher starts from
STYLE_CONTRACT = 2  # the looks as the files hold them: v3 standardises away the brightness that sets them apart


@dataclass
class StyleGroups:
    group: np.ndarray      # (N,) group of every image of splits.images (test_images: `test_group`)
    test_group: np.ndarray
    centres: np.ndarray    # (GROUPS, features)

    @property
    def n(self) -> int:
        return len(self.centres)


def style_features(x: np.ndarray, cache_dir, batch: int = 64) -> np.ndarray:
    """L2-normalised 1280-d ImageNet EfficientNet-Lite0 features of uint8 (N, s, s) images, cached by content."""
    key = hashlib.sha256(x.tobytes()).hexdigest()[:16]
    f = Path(cache_dir) / f"style-features-{key}.npy"
    if f.is_file():
        return np.load(f)
    from train.models import build_efficientnet_lite
    from train.pretrained import imagenet_weights

    model = build_efficientnet_lite(x.shape[1], 2, imagenet_weights(cache_dir, "lite0"))
    backbone = model.get_layer("lite0_backbone")
    feats = np.asarray(backbone.predict(x.astype(np.float32)[..., None], batch_size=batch, verbose=0), np.float32)
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8)
    import io
    buf = io.BytesIO()
    np.save(buf, feats)
    atomic_write_bytes(f, buf.getvalue())
    return feats


def kmeans(f: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns the centres (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    centres = [f[rng.integers(len(f))]]
    for _ in range(1, k):
        d = np.min(((f[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(f[rng.choice(len(f), p=d / d.sum())])
    c = np.asarray(centres)
    for _ in range(iters):
        a = assign(f, c)
        new = np.stack([f[a == j].mean(0) if (a == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


def assign(f: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.argmin(((f[:, None, :] - centres[None]) ** 2).sum(-1), axis=1).astype(np.int32)


def style_groups(splits, cfg, k: int = GROUPS) -> StyleGroups:
    """Groups for every image of a Splits: clusters fitted on its training split at the teacher's input size."""
    s = splits.at_size(cfg, FEATURE_SIZE, STYLE_CONTRACT)
    feats = style_features(s.images.x, cfg.cache_dir)
    centres = kmeans(feats[splits.train], k, cfg.split_seed)
    group = assign(feats, centres)
    if s.test_images is s.images:
        test_group = group
    else:
        test_group = assign(style_features(s.test_images.x, cfg.cache_dir), centres)
    return StyleGroups(group, test_group, centres)


def table(labels: np.ndarray, group: np.ndarray, n_classes: int, n_groups: int) -> np.ndarray:
    """(classes, groups) counts of the fully labelled images."""
    full = (labels >= 0) & (labels < n_classes)
    t = np.zeros((n_classes, n_groups), np.int64)
    np.add.at(t, (labels[full], group[full]), 1)
    return t


def shortcut_probe(labels: np.ndarray, group: np.ndarray, fit_idx: np.ndarray, eval_idx: np.ndarray,
                   n_classes: int, n_groups: int) -> dict:
    """A classifier that sees only the look: each group's majority class on fit_idx, scored on eval_idx. Its
    balanced accuracy against chance (1 / classes) is how much the look alone gives away."""
    t = table(labels[fit_idx], group[fit_idx], n_classes, n_groups)
    majority = t.argmax(0)
    y, g = labels[eval_idx], group[eval_idx]
    keep = (y >= 0) & (y < n_classes)
    pred = majority[g[keep]]
    recalls = [float((pred[y[keep] == c] == c).mean()) for c in range(n_classes) if (y[keep] == c).any()]
    return {"accuracy": float((pred == y[keep]).mean()), "balanced_accuracy": float(np.mean(recalls)),
            "chance": 1.0 / n_classes, "majority_class_per_group": majority.tolist()}


def format_table(t: np.ndarray, classes: list[str]) -> str:
    head = "| class | " + " | ".join(f"g{j}" for j in range(t.shape[1])) + " |"
    rows = [head, "|---|" + "---:|" * t.shape[1]]
    rows += [f"| {c} | " + " | ".join(str(v) for v in t[i]) + " |" for i, c in enumerate(classes)]
    rows.append("| share of no tumour | " + " | ".join(
        f"{t[classes.index('notumor'), j] / max(t[:, j].sum(), 1):.0%}" if "notumor" in classes else "-"
        for j in range(t.shape[1])) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    from train.config import Config, ConfigError, add_flags, from_args
    from train.data import SPLIT_FLAGS, DataError, prepare

    p = argparse.ArgumentParser(prog="python -m train.groups", description=__doc__.splitlines()[0])
    add_flags(p, only=SPLIT_FLAGS)
    p.add_argument("--json", metavar="FILE", help="also write the table and probe as JSON")
    args = p.parse_args(argv)
    try:
        cfg = from_args(args) if args.data else Config(data="data/synthetic/Training",
                                                        test_data="data/synthetic/Testing", image_size=64)
        cfg.validate()
        splits = prepare(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    g = style_groups(splits, cfg)
    y, n = splits.images.labels, len(splits.classes)
    t = table(y[splits.train], g.group[splits.train], n, g.n)
    print(f"class x style group, training split ({len(splits.train)} images):\n{format_table(t, splits.classes)}")
    probe = {split: shortcut_probe(y, g.group, splits.train, idx, n, g.n)
             for split, idx in (("val", splits.val),)}
    if splits.test_images is splits.images:
        probe["test"] = shortcut_probe(y, g.group, splits.train, splits.test, n, g.n)
    for split, r in probe.items():
        print(f"shortcut probe (the group alone), {split}: accuracy {r['accuracy']:.1%}, balanced "
              f"{r['balanced_accuracy']:.1%} (chance {r['chance']:.0%})")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": t.tolist(), "classes": splits.classes, "probe": probe},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
