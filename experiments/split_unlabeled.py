"""Split one labelled class-per-folder set into a labelled part and an unlabeled part, to measure `--unlabeled`.

    python -m experiments.split_unlabeled --data ../shared/data/brain-tumor-mri/Training \\
        --labelled 0.5 --out artifacts/semi

Writes symlinks (no copies): OUT/labelled/<class>/<file> and OUT/unlabeled/<hash>.<ext>. The unlabeled files are
named by a hash of their path, so no name carries its class (this set's names do: Tr-gl_..., Tr-me_...). The split
is stratified by class and fixed by --seed. `python -m train --data OUT/labelled --unlabeled OUT/unlabeled` then
leaves out unlabeled scans that nearly duplicate a validation or test image (train/teacher.view_cache).
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

from train.data import scan_folder


def split(data: str, labelled: float, out: Path, seed: int = 0) -> tuple[int, int]:
    classes, items = scan_folder(data)
    rng = random.Random(seed)
    n_lab = n_unl = 0
    (out / "unlabeled").mkdir(parents=True)
    for ci, cls in enumerate(classes):
        files = [p for p, c in items if c == ci]
        rng.shuffle(files)
        cut = round(len(files) * labelled)
        (out / "labelled" / cls).mkdir(parents=True)
        for p in files[:cut]:
            (out / "labelled" / cls / p.name).symlink_to(p.resolve())
        for p in files[cut:]:
            name = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16] + p.suffix.lower()
            (out / "unlabeled" / name).symlink_to(p.resolve())
        n_lab, n_unl = n_lab + cut, n_unl + len(files) - cut
    return n_lab, n_unl


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--labelled", type=float, default=0.5, help="fraction of each class kept with its label")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.exists():
        print(f"error: {out} exists; choose a new --out", file=sys.stderr)
        return 2
    if not Path(a.data).is_dir():
        print(f"error: data folder not found: {a.data}", file=sys.stderr)
        return 2
    n_lab, n_unl = split(a.data, a.labelled, out, a.seed)
    print(f"{n_lab} labelled images in {out / 'labelled'}, {n_unl} unlabeled in {out / 'unlabeled'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
