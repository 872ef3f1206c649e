"""Data stage: class-per-folder images -> cached uint8 arrays, a leakage-checked split, a report.

    python -m train.data --data ../shared/data/brain-tumor-mri/Training

Every file goes through the board's own preprocessing (device.preprocess: decode_scan, to_model_input), once:
the decoded arrays are cached on disk keyed by file list, file contents and
preprocessing parameters, so later runs never decode a JPEG again.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.atomic import atomic_write_bytes, atomic_write_json
from device.metrics import NO_TUMOUR
from device.preprocess import CONTRACT_VERSION, ImageError, decode_scan, is_dicom_file, is_image_path, to_model_input

THUMB = 16  # near-duplicate thumbnails are THUMB x THUMB grey levels
# A folder whose only classes are these is weakly labelled: tumour or not, the type unknown. Its "tumor" images
# get the label len(classes) (WEAK); its "notumor" images are ordinary no-tumour images.
WEAK_CLASSES = [NO_TUMOUR, "tumor"]


class DataError(ValueError):
    """The data set cannot be used; the message says why."""


def scan_folder(root) -> tuple[list[str], list[tuple[Path, int]]]:
    """Return (sorted class names, [(file, class index)]) for root/<class>/**/<image>."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root} must hold one sub-folder per class (found {len(classes)})")
    items = []
    for ci, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).rglob("*") if p.is_file() and is_image_path(p.name))
        if not files:
            raise DataError(f"class folder {root / cls} holds no images (.jpg/.jpeg/.png/.bmp/.tif)")
        items += [(p, ci) for p in files]
    return classes, items


def _thumbs(x: np.ndarray) -> np.ndarray:
    n, s, _ = x.shape
    f = s // THUMB
    t = x[:, : f * THUMB, : f * THUMB].reshape(n, THUMB, f, THUMB, f).mean(axis=(2, 4))
    return t.reshape(n, -1).astype(np.float32)


@dataclass
class Images:
    """Decoded images of one folder (only the readable ones) plus what was skipped."""
    root: str
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    x: np.ndarray           # (N, size, size) uint8, the preprocessing contract's output
    sha256: list[str]
    thumbs: np.ndarray      # (N, THUMB*THUMB) float32
    skipped: list[dict] = field(default_factory=list)
    cache_hit: bool = False
    source: np.ndarray | None = None          # index into `sources`, per image (several --data folders)
    sources: list[str] = field(default_factory=list)
    weak_sources: list[str] = field(default_factory=list)

    @property
    def weak_label(self) -> int:
        """The label of a tumour of unknown type (only weakly labelled folders have it)."""
        return len(self.classes)


def load_sources(folders: list[str], size: int, cache_dir="artifacts/cache", contract=CONTRACT_VERSION) -> Images:
    """One folder, or several combined: each a source of its own, fully labelled (the same classes in each) or
    weakly labelled (only tumor/ and notumor/)."""
    parts = [load_folder(f, size, cache_dir, contract) for f in folders]
    if len(parts) == 1:
        return dataclasses.replace(parts[0], source=np.zeros(len(parts[0].labels), np.int32), sources=folders)
    full = [p for p in parts if p.classes != WEAK_CLASSES]
    if not full:
        raise DataError(f"--data {','.join(folders)}: at least one folder needs the full class labels")
    classes = full[0].classes
    for p in full[1:]:
        if p.classes != classes:
            raise DataError(f"{p.root} has classes {p.classes}, {full[0].root} has {classes}: fully labelled "
                            f"folders must have the same class folders")
    weak = [p for p in parts if p.classes == WEAK_CLASSES]
    if weak and NO_TUMOUR not in classes:
        raise DataError(f"weakly labelled folders (tumor/, notumor/) need a '{NO_TUMOUR}' class in {classes}")
    labels = [p.labels if p.classes == classes else
              np.where(p.labels == WEAK_CLASSES.index("tumor"), len(classes), classes.index(NO_TUMOUR))
              for p in parts]
    return Images(",".join(folders), classes, sum((p.paths for p in parts), []),
                  np.concatenate(labels).astype(np.int32), np.concatenate([p.x for p in parts]),
                  sum((p.sha256 for p in parts), []), np.concatenate([p.thumbs for p in parts]),
                  sum((p.skipped for p in parts), []), all(p.cache_hit for p in parts),
                  np.concatenate([np.full(len(p.labels), i, np.int32) for i, p in enumerate(parts)]),
                  list(folders), [p.root for p in weak])


def load_folder(root, size: int, cache_dir="artifacts/cache", contract=CONTRACT_VERSION) -> Images:
    classes, items = scan_folder(root)
    return _load_items(root, classes, items, size, cache_dir, contract)


def load_unlabeled(folders: list[str], size: int, cache_dir="artifacts/cache") -> Images:
    """Scans without labels (label -1), any layout: every picture, and every other file that is a DICOM."""
    parts = []
    for root in folders:
        if not Path(root).is_dir():
            raise DataError(f"--unlabeled folder not found: {root}")
        files = sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.name.startswith(".")
                       and (is_image_path(p.name) or is_dicom_file(p)))
        if not files:
            raise DataError(f"--unlabeled folder {root} holds no images or DICOM files")
        parts.append(_load_items(root, [], [(p, -1) for p in files], size, cache_dir))
    return Images(",".join(folders), [], sum((p.paths for p in parts), []),
                  np.concatenate([p.labels for p in parts]), np.concatenate([p.x for p in parts]),
                  sum((p.sha256 for p in parts), []), np.concatenate([p.thumbs for p in parts]),
                  sum((p.skipped for p in parts), []), all(p.cache_hit for p in parts))


def _load_items(root, classes: list[str], items: list[tuple[Path, int]], size: int, cache_dir,
                contract=CONTRACT_VERSION) -> Images:
    digests = []
    for p, _ in items:
        digests.append(hashlib.sha256(p.read_bytes()).hexdigest())
    key = hashlib.sha256(json.dumps(
        [contract, size, "thumbs-v1", [(str(p.relative_to(root)), c, d) for (p, c), d in zip(items, digests)]]
    ).encode()).hexdigest()[:20]
    cache = Path(cache_dir) / f"images-{key}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        return Images(str(root), classes, meta["paths"], z["labels"], z["x"], meta["sha256"], z["thumbs"],
                      meta["skipped"], cache_hit=True)
    xs, thumbs, labels, paths, shas, skipped = [], [], [], [], [], []
    for (p, c), d in zip(items, digests):
        try:
            img, _ = decode_scan(p)
            xs.append(to_model_input(img, size, contract))
            # Near-duplicate thumbnails from the whole frame (contract v1), not the head crop: the crop box can
            # move by a pixel between two encodings of one image, which would hide a leak.
            thumbs.append(to_model_input(img, THUMB * 4, contract=1))
        except ImageError as e:
            skipped.append({"path": str(p), "class": classes[c] if c >= 0 else "", "reason": str(e)})
            continue
        labels.append(c)
        paths.append(str(p))
        shas.append(d)
    if not xs:
        raise DataError(f"no readable images under {root}")
    x = np.stack(xs)
    for ci, cls in enumerate(classes):
        if ci not in labels:
            n_skipped = sum(1 for s in skipped if s["class"] == cls)
            raise DataError(f"class '{cls}' has no readable images (all {n_skipped} skipped)")
    imgs = Images(str(root), classes, paths, np.asarray(labels, np.int32), x, shas, _thumbs(np.stack(thumbs)),
                  skipped)
    buf = io.BytesIO()
    np.savez(buf, x=imgs.x, labels=imgs.labels, thumbs=imgs.thumbs,
             meta=json.dumps({"paths": paths, "sha256": shas, "skipped": skipped}))
    atomic_write_bytes(cache, buf.getvalue())
    return imgs


def exact_duplicate_groups(sha256: list[str]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(sha256):
        groups.setdefault(h, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def nearest_distance(q: np.ndarray, ref: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """RMS grey-level distance from each thumbnail in q to its nearest one in ref (and its index)."""
    if len(ref) == 0:
        return np.full(len(q), np.inf), np.full(len(q), -1)
    rn = (ref.astype(np.float64) ** 2).sum(1)
    best, arg = np.empty(len(q)), np.empty(len(q), np.int64)
    for s in range(0, len(q), chunk):
        a = q[s:s + chunk].astype(np.float64)
        d2 = (a ** 2).sum(1)[:, None] + rn[None, :] - 2 * a @ ref.T.astype(np.float64)
        arg[s:s + chunk] = d2.argmin(1)
        best[s:s + chunk] = np.sqrt(np.maximum(d2[np.arange(len(a)), arg[s:s + chunk]], 0) / q.shape[1])
    return best, arg


def close_pairs(thumbs: np.ndarray, threshold: float, chunk: int = 1024):
    """(i, j) index arrays, one chunk of rows at a time, of the unordered pairs i < j within `threshold`."""
    t = thumbs.astype(np.float64)
    n = (t ** 2).sum(1)
    for s in range(0, len(t), chunk):
        d2 = (n[s:s + chunk, None] + n[None, :] - 2 * t[s:s + chunk] @ t.T) / t.shape[1]
        i, j = np.nonzero(d2 < threshold ** 2)
        i += s
        yield i[i < j], j[i < j]  # each pair once


def near_duplicate_pairs(thumbs: np.ndarray, threshold: float, chunk: int = 1024) -> int:
    """Number of unordered pairs within `threshold` (exact copies included)."""
    return sum(len(i) for i, _ in close_pairs(thumbs, threshold, chunk))


def stratified_split(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Split indices into len(fractions)+1 parts (first = remainder), per class, reproducibly."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        start = 0
        for k, f in enumerate(fractions):
            n = int(round(f * len(idx)))
            parts[k + 1].append(idx[start:start + n])
            start += n
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


@dataclass
class Splits:
    images: Images            # train + val live here
    train: np.ndarray
    val: np.ndarray
    test_images: Images       # same object as `images` when test is held out
    test: np.ndarray
    report: dict

    @property
    def classes(self):
        return self.images.classes

    def at_size(self, cfg, size: int, contract: int = CONTRACT_VERSION) -> "Splits":
        """The same files, split and order, decoded at another size (the teacher's) or preprocessing contract."""
        if size == self.images.x.shape[1] and contract == CONTRACT_VERSION:
            return self
        imgs = load_sources(cfg.data_folders, size, cfg.cache_dir, contract)
        timgs = load_folder(cfg.test_data, size, cfg.cache_dir, contract) if cfg.test_data else imgs
        return dataclasses.replace(self, images=imgs, test_images=timgs)


def prepare(cfg) -> Splits:
    """Load, split and leakage-check according to a train.config.Config, at the student's --image-size."""
    size = cfg.image_size
    t0 = time.time()
    imgs = load_sources(cfg.data_folders, size, cfg.cache_dir)
    # Split per source and class: every source has its own validation and test images.
    strata = imgs.source * (imgs.weak_label + 1) + imgs.labels
    if cfg.test_data:
        test_imgs = load_folder(cfg.test_data, size, cfg.cache_dir)
        if test_imgs.classes != imgs.classes:
            raise DataError(f"test classes {test_imgs.classes} differ from training classes {imgs.classes}")
        train, val = stratified_split(strata, [cfg.val_fraction], cfg.split_seed)
        test = np.arange(len(test_imgs.labels))
    else:
        test_imgs = imgs
        train, val, test = stratified_split(strata, [cfg.val_fraction, cfg.test_fraction], cfg.split_seed)
    # Leakage: evaluation images identical or near-identical to a training image.
    leaks = {}
    train_sha = {imgs.sha256[i] for i in train}
    for name, src, idx in (("val", imgs, val), ("test", test_imgs, test)):
        dist, _ = nearest_distance(src.thumbs[idx], imgs.thumbs[train])
        exact = np.array([src.sha256[i] in train_sha for i in idx], bool)
        near = (dist < cfg.near_dup_threshold) | exact
        leaks[name] = {"exact": int(exact.sum()), "near_or_exact": int(near.sum()), "of": int(len(idx)),
                       "excluded": 0 if cfg.keep_leaks else int(near.sum())}
        if not cfg.keep_leaks:
            if name == "val":
                val = idx[~near]
            else:
                test = idx[~near]
    groups = exact_duplicate_groups(imgs.sha256)
    names = imgs.classes + (["tumor (type unknown)"] if imgs.weak_sources else [])
    counts = {c: int((imgs.labels == i).sum()) for i, c in enumerate(names)}
    report = {
        "data": str(cfg.data), "test_data": str(cfg.test_data), "image_size": size,
        "preprocess_contract": CONTRACT_VERSION, "classes": imgs.classes, "count_per_class": counts,
        "total": int(len(imgs.labels)), "skipped": imgs.skipped + (test_imgs.skipped if cfg.test_data else []),
        "exact_duplicates": {"groups": len(groups), "redundant_files": sum(len(g) - 1 for g in groups)},
        "near_duplicate_pairs": near_duplicate_pairs(imgs.thumbs, cfg.near_dup_threshold),
        "near_dup_threshold": cfg.near_dup_threshold,
        "leakage": leaks, "keep_leaks": cfg.keep_leaks,
        "sources": [{"folder": f, "weak": f in imgs.weak_sources, "images": int((imgs.source == k).sum())}
                    for k, f in enumerate(imgs.sources)],
        "split": {n: {c: int((lab == i).sum()) for i, c in enumerate(names)}
                  for n, lab in (("train", imgs.labels[train]), ("val", imgs.labels[val]),
                                 ("test", test_imgs.labels[test]))},
        "seed": cfg.split_seed, "cache_hit": imgs.cache_hit, "seconds": round(time.time() - t0, 1),
    }
    return Splits(imgs, train, val, test_imgs, test, report)


def format_report(r: dict) -> str:
    lines = [f"data: {r['data']}  ({r['total']} images, {len(r['classes'])} classes, {r['image_size']}px, "
             f"cache {'hit' if r['cache_hit'] else 'built'}, {r['seconds']}s)"]
    lines.append("per class: " + ", ".join(f"{c} {n}" for c, n in r["count_per_class"].items()))
    if len(r.get("sources", [])) > 1:
        kind = {True: "weak: tumour / no tumour", False: "full labels"}
        lines.append("sources: " + ", ".join(f"{x['folder']} {x['images']} ({kind[x['weak']]})" for x in r["sources"]))
    lines.append(f"skipped: {len(r['skipped'])}")
    for s in r["skipped"]:
        lines.append(f"  - {s['path']}: {s['reason']}")
    ed = r["exact_duplicates"]
    lines.append(f"exact duplicates: {ed['redundant_files']} redundant files in {ed['groups']} groups")
    lines.append(f"near-duplicate pairs (thumbnail RMS < {r['near_dup_threshold']}): {r['near_duplicate_pairs']}")
    for name, lk in r["leakage"].items():
        lines.append(f"leakage train->{name}: {lk['near_or_exact']} of {lk['of']} (exact {lk['exact']}); "
                     f"{'kept' if r['keep_leaks'] else 'excluded'}")
    for name, per in r["split"].items():
        lines.append(f"{name}: {sum(per.values())}  " + ", ".join(f"{c} {n}" for c, n in per.items()))
    return "\n".join(lines)


# The flags that decide which images a run reads and how it splits them (train.data and train.groups take these).
SPLIT_FLAGS = {"data", "test_data", "image_size", "val_fraction", "test_fraction", "near_dup_threshold", "keep_leaks",
               "cache_dir", "split_seed"}


def main(argv=None):
    from train.config import add_flags, from_args

    p = argparse.ArgumentParser(prog="python -m train.data", description=__doc__.splitlines()[0])
    add_flags(p, only=SPLIT_FLAGS)
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = p.parse_args(argv)
    try:
        s = prepare(from_args(args))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(s.report))
    if args.json:
        atomic_write_json(args.json, s.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
