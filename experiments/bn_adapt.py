"""Q25's probe (docs/research.md): a site's BatchNorm statistics re-estimated from its unlabeled scans (AdaBN: Li,
Wang, Shi, Liu and Hou, "Revisiting Batch Normalization For Practical Domain Adaptation", ICLR workshop 2017) before
conversion, measured on external-dev halves split as Q23's (a fixed hash of the file name): the adaptation half
without its labels, the evaluation half scored. Float student, tumour / no tumour.

    python -m experiments.bn_adapt --model artifacts/v16-s42/student.keras --data ../shared/data/external-dev
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.external import sources
from device.bench import labelled
from device.metrics import NO_TUMOUR
from device.preprocess import ImageError, load_image
from experiments.prior_shift import balanced, half


def adapted(model, x: np.ndarray):
    """A copy of `model` whose every BatchNorm layer holds the statistics of `x` (one pass in training mode with
    momentum 0: each layer normalises by, and stores, the batch's statistics given the layers before it adapted)."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    bns = [layer for layer in clone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    clone(x.astype(np.float32), training=True)
    return clone, len(bns)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a float student .keras with its run's student_int8.json beside "
                                                  "it (the labels and the preprocessing contract)")
    p.add_argument("--data", required=True, help="external-dev (evaluation only)")
    a = p.parse_args(argv)
    root, sidecar = Path(a.data), Path(a.model).with_name("student_int8.json")
    if not root.is_dir() or not Path(a.model).is_file() or not sidecar.is_file():
        print(f"error: need the model {a.model}, {sidecar} and the folder {root}", file=sys.stderr)
        return 2
    meta = json.loads(sidecar.read_text())
    contract = meta["preprocess"]["contract_version"]
    import keras

    model = keras.models.load_model(a.model, compile=False)
    size = int(model.input_shape[1])
    no = meta["labels"].index(NO_TUMOUR)
    items = labelled(root)
    by_source: dict[str, list] = {}
    for item, src in zip(items, sources(root, items)):
        by_source.setdefault(src, []).append(item)
    print("| source | adaptation / eval images | default: sens. / spec. (balanced) | BN re-estimated |")
    print("|---|---:|---|---|")
    for src, its in sorted(by_source.items()):
        xs = {0: [], 1: []}
        ys = {0: [], 1: []}
        for path, label in its:
            try:
                x = load_image(path, size, contract)
            except ImageError:
                continue
            xs[half(path)].append(x[..., None])
            ys[half(path)].append(label != NO_TUMOUR)
        x_adapt, x_eval, tumour = np.stack(xs[0]), np.stack(xs[1]), np.array(ys[1])
        clone, n_bn = adapted(model, x_adapt)

        def cells(m):
            probs = keras.activations.softmax(m.predict(x_eval.astype(np.float32), batch_size=256, verbose=0))
            s, sp, bal = balanced(np.asarray(probs).argmax(1) != no, tumour)
            return " / ".join("-" if v is None else f"{v:.1%}" for v in (s, sp)) + f" ({bal:.1%})"

        print(f"| {src} | {len(x_adapt)} / {len(x_eval)} | {cells(model)} | {cells(clone)} |", flush=True)
    print(f"({n_bn} BatchNorm layers re-estimated per source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
