"""Classification metrics in plain numpy: used on the board (bench) and by training reports and parity."""
from __future__ import annotations

import numpy as np


def confusion(labels, pred, n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(pred)), 1)
    return m


NO_TUMOUR = "notumor"   # the label that is not a tumour; every other label is one


def pct(x, digits: int = 2) -> str:
    """A fraction as a percentage for reports; '-' for a missing value."""
    return "-" if x is None else f"{x:.{digits}%}"


def tumour_calls(truth, pred, labels) -> dict:
    """Tumour (any tumour label) vs no tumour, from label indices: what every source can be scored on, even one
    labelled only tumour / no tumour (an index beyond the labels counts as a tumour)."""
    no = list(labels).index(NO_TUMOUR)
    tumour, called = np.asarray(truth) != no, np.asarray(pred) != no
    return {"n": int(len(tumour)), "tumour": int(tumour.sum()), "no_tumour": int((~tumour).sum()),
            "sensitivity": float(called[tumour].mean()) if tumour.any() else None,
            "specificity": float((~called)[~tumour].mean()) if (~tumour).any() else None}


def ranked(probs) -> np.ndarray:
    """Class indices, most probable first. The one tie rule of the project: a tie goes to the lower index, which
    is what argmax (and so every accuracy figure) picks."""
    return np.argsort(-np.asarray(probs), kind="stable")


def summarize(labels, probs, classes) -> dict:
    """accuracy, macro-F1, per-class recall/precision, confusion matrix, ECE."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, np.float64)
    pred = probs.argmax(1)  # ties: the lower index, as ranked()
    n = len(classes)
    cm = confusion(labels, pred, n)
    tp = np.diag(cm).astype(float)
    recall = tp / np.maximum(cm.sum(1), 1)
    precision = tp / np.maximum(cm.sum(0), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "macro_f1": float(f1.mean()),
        "per_class_recall": {c: float(r) for c, r in zip(classes, recall)},
        "per_class_precision": {c: float(p) for c, p in zip(classes, precision)},
        "confusion": cm.tolist(),
        "ece": expected_calibration_error(labels, probs),
    }


def expected_calibration_error(labels, probs, bins: int = 15) -> float:
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def softmax(logits, axis=-1):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
