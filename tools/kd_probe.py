"""Quick in-process KD experiments on the real data (how docs/teacher.md's augmentation probe was run).

    PYTHONPATH=. python tools/kd_probe.py SIZE EPOCHS LOGITS.npy SPEC [SPEC ...]

SPEC is comma-separated key=value: a (alpha, 1 = scratch), T, aug (none|flip|full), lr,
oracle=1 (replace the teacher's logits by 6 * one-hot labels: tests the KD plumbing, not the teacher).
LOGITS.npy: cached teacher logits of a run whose split matches (same split seed and data),
e.g. artifacts/real-ens/teacher_logits_tta_*.npy. One line "RESULT spec size {val, test}" per SPEC.
"""
import dataclasses
import sys
import time

import keras
import numpy as np

from train import stages
from train.config import Config
from train.data import prepare
from train.metrics import softmax, summarize
from train.models import build_student
from train.run import class_weights

size, epochs, logit_file, specs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
cfg = Config(data="../shared/data/brain-tumor-mri/Training", image_size=size, seed=1, student_epochs=epochs,
             patience=99)
s = prepare(cfg)
logits = np.load(logit_file)
imgs, n = s.images, len(s.classes)
y = imgs.labels[s.train]
assert len(logits) == len(y), "logits are not of this split"
sw = class_weights(y, n)[y]
for spec in specs:
    kv = dict(p.split("=") for p in spec.split(","))
    a = float(kv.get("a", 1))
    c = dataclasses.replace(cfg, temperature=float(kv.get("T", 4)), augment=kv.get("aug", "full"),
                            student_lr=float(kv.get("lr", cfg.student_lr)))
    targets = (6.0 * np.eye(n, dtype=np.float32)[y]) if kv.get("oracle") else logits
    keras.utils.set_random_seed(1)
    st = build_student(size, n)
    t0 = time.time()
    stages.fit_student(st, None, imgs.x[s.train], y, sw, targets if a < 1 else None,
                       imgs.x[s.val], imgs.labels[s.val], c, alpha=a,
                       stage_dir=f"artifacts/probe/{spec.replace(',', '_')}_{size}", strategy=stages.make_strategy("none"))
    res = {}
    for split, idx, src in (("val", s.val, imgs), ("test", s.test, s.test_images)):
        p = softmax(stages.predict_logits(st, src.x[idx]))
        res[split] = round(summarize(src.labels[idx], p, s.classes)["accuracy"] * 100, 2)
    print("RESULT", spec, size, res, f"{time.time() - t0:.0f}s", flush=True)
