"""Temperature scaling (Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks", ICML 2017,
https://arxiv.org/abs/1706.04599): one number T, fitted on the validation split, that minimises its negative
log-likelihood (it need not lower the test split's calibration error: the shipped student's rose from 3.27% to
3.38%). Conversion folds it into the last layer, so the int8 model stays unchanged
apart from two rescaled weight tensors; accuracy cannot change (argmax is the same)."""
from __future__ import annotations

import math

import numpy as np

from device.metrics import expected_calibration_error, softmax


def nll(logits, labels, t: float) -> float:
    p = softmax(np.asarray(logits, np.float64) / t)
    return float(-np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-12)).mean())


def fit_temperature(logits, labels, lo: float = 0.05, hi: float = 20.0) -> float:
    """argmin over T of the validation negative log-likelihood: golden-section search on log T (NLL is
    unimodal in T for a fixed set of logits)."""
    labels = np.asarray(labels)
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(60):
        if nll(logits, labels, math.exp(c)) < nll(logits, labels, math.exp(d)):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    return round(math.exp((a + b) / 2), 4)


def calibration_report(val_logits, val_labels, test_logits, test_labels) -> dict:
    """T from validation; ECE and NLL before / after on both splits (test only reports, never fits)."""
    t = fit_temperature(val_logits, val_labels)
    r = {"temperature": t, "fitted_on": "validation split"}
    for split, logits, labels in (("val", val_logits, val_labels), ("test", test_logits, test_labels)):
        labels = np.asarray(labels)
        for tag, temp in (("before", 1.0), ("after", t)):
            r[f"{split}_ece_{tag}"] = expected_calibration_error(labels, softmax(np.asarray(logits) / temp))
            r[f"{split}_nll_{tag}"] = nll(logits, labels, temp)
    return r
