"""A site's class priors, re-estimated from its own unlabeled scans (Saerens, Latinne and Decaestecker, "Adjusting
the Outputs of a Classifier to New a Priori Probabilities: A Simple Procedure", Neural Computation 2002).

The student was trained class-balanced, so its probabilities assume equal priors. A site whose scans are mostly
normal (or mostly tumours) has other priors; EM finds the priors under which the model's adjusted answers on the
site's scans average to those priors, and `adjust` reweights every answer by them. No labels, no retraining, no
TensorFlow: numpy on the board (`python -m device.classify scans/ --adapt site_scans/`). Measured in
docs/research.md, Q23.
"""
from __future__ import annotations

import numpy as np

ITERATIONS = 200
FLOOR = 1e-6   # int8 probabilities of exactly 0 would pin a class's prior at 0 for good


def em_priors(probs, train_prior=None, iterations: int = ITERATIONS) -> np.ndarray:
    """The priors p(y) of the scans whose model probabilities are `probs` (N, classes)."""
    p = np.asarray(probs, np.float64) + FLOOR
    p /= p.sum(1, keepdims=True)
    base = np.full(p.shape[1], 1 / p.shape[1]) if train_prior is None else np.asarray(train_prior, np.float64)
    prior = base.copy()
    for _ in range(iterations):
        new = adjust(p, prior, base).mean(0)
        if np.allclose(new, prior, atol=1e-7):
            break
        prior = new
    return prior


def adjust(probs, prior, train_prior=None) -> np.ndarray:
    """Probabilities under the new priors: p'(y|x) proportional to p(y|x) * prior(y) / train_prior(y)."""
    p = np.asarray(probs, np.float64)
    base = np.full(p.shape[-1], 1 / p.shape[-1]) if train_prior is None else np.asarray(train_prior, np.float64)
    a = p * (np.asarray(prior, np.float64) / base)
    return a / np.maximum(a.sum(-1, keepdims=True), 1e-300)
