"""Score trained teachers / members, and every ensemble of them, on the real data's leakage-checked split.

    PYTHONPATH=. python tools/eval_teachers.py artifacts/kd96/teacher_member*.keras artifacts/t192/teacher_member0.keras

--image-size 64 scores on the split a 64 px student run uses (the near-duplicate check, and so the split, depends
slightly on the student's input size), as in tools/score_models.py.

Each model sees the images at its own input size (decoded from the JPEGs by the preprocessing contract),
with flip-TTA, as the cached teacher logits are made. Ensembles average logits; they are ranked by
validation accuracy (the test column is for reporting, never for choosing).
"""
import argparse
import itertools

import keras
import numpy as np

from train import stages
from train.config import Config
from train.data import load_folder, prepare

p = argparse.ArgumentParser()
p.add_argument("paths", nargs="+")
p.add_argument("--image-size", type=int, default=Config.image_size, help="the student input size whose split is scored")
args = p.parse_args()
paths = args.paths
cfg = Config(data="../shared/data/brain-tumor-mri/Training", image_size=args.image_size)
s = prepare(cfg, log=lambda *a, **k: None)
y = {"val": s.images.labels[s.val], "test": s.images.labels[s.test]}
logits, by_size = {}, {}
for p in paths:
    m = keras.models.load_model(p)
    size = m.input_shape[1]
    if size not in by_size:
        by_size[size] = load_folder(cfg.data, size, cfg.cache_dir)
    x = by_size[size].x
    logits[p] = {k: stages.predict_logits(m, x[idx], tta=True) for k, idx in (("val", s.val), ("test", s.test))}


def acc(names, split):
    mean = np.mean([logits[n][split] for n in names], axis=0)
    return 100 * float(np.mean(mean.argmax(1) == y[split]))


rows = [(acc(c, "val"), acc(c, "test"), c) for r in range(1, len(paths) + 1) for c in itertools.combinations(paths, r)]
for v, t, c in sorted(rows, key=lambda r: -r[0]):
    print(f"val {v:6.2f}  test {t:6.2f}  {' + '.join(c)}")
