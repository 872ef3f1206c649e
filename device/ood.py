"""Is this scan like the training images? A Mahalanobis score on the int8 model's own penultimate features.

The model has a second output, the pooled features its last layer classifies. At conversion, the features of
the training split give one mean per class and a shared covariance (Lee, Lee, Lee and Shin, "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018,
https://arxiv.org/abs/1807.03888); the sidecar stores the whitening transform and the whitened means.
A scan's score is its distance to the nearest class mean, divided by the distance that keeps `keep` (97%) of
the validation split: a score above 1 means "unlike the training data". Plain numpy, fitted and applied here so
the two cannot drift apart.
"""
from __future__ import annotations

import base64

import numpy as np

METHOD = "mahalanobis-shared-covariance"
SHRINK = 0.1       # covariance shrinkage towards its mean variance: 4 classes x 256 features need it to invert
# Share of the validation split whose score is <= 1. Higher than the 95% a user expects to keep on new
# in-distribution scans: a quantile from ~400 validation images is uncertain by about +-1 point.
KEEP = 0.97


def pack(a: np.ndarray) -> str:
    """float16, little-endian, base64: the whitening matrix of 256 features is 175 KB of JSON this way."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f2").tobytes()).decode("ascii")


def unpack(text: str, shape) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f2").astype(np.float32)
    if a.size != int(np.prod(shape)):
        raise ValueError(f"expected {int(np.prod(shape))} values, found {a.size}")
    return a.reshape(shape)


def _distances(z: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Euclidean distance of each whitened feature row to its nearest whitened class mean."""
    d2 = (z * z).sum(1)[:, None] - 2 * z @ means.T + (means * means).sum(1)[None, :]
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def fit(train_features, train_labels, val_features, n_classes: int) -> dict:
    """The sidecar's "ood" entry from training-split features (class means, shared covariance) and
    validation-split features (the threshold)."""
    f = np.asarray(train_features, np.float64)
    y = np.asarray(train_labels)
    means = np.stack([f[y == c].mean(0) for c in range(n_classes)])
    centred = f - means[y]
    cov = centred.T @ centred / max(len(f) - n_classes, 1)
    cov = (1 - SHRINK) * cov + SHRINK * np.trace(cov) / len(cov) * np.eye(len(cov))
    vals, vecs = np.linalg.eigh(cov)
    # (the floor only matters for dead features, e.g. an untrained model: it keeps float16 finite)
    whiten = (vecs / np.sqrt(np.maximum(vals, 1e-4))).T    # z = whiten @ f
    # Scores are ratios to the threshold, so any scale will do: the one that keeps float16 far from overflow.
    whiten = (whiten / np.abs(whiten).max()).astype(np.float32)
    # Round-trip through float16 before the threshold is set, so the device's numbers are the ones measured.
    whiten = unpack(pack(whiten), whiten.shape)
    wmeans = unpack(pack(means.astype(np.float32) @ whiten.T), means.shape)
    val_d = _distances(np.asarray(val_features, np.float32) @ whiten.T, wmeans)
    threshold = float(np.quantile(val_d, KEEP))
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"OOD statistics degenerate (threshold {threshold}): the features do not vary")
    return {"method": METHOD, "features": int(f.shape[1]), "keep": KEEP, "threshold": threshold,
            "shrink": SHRINK, "whiten": pack(whiten), "means": pack(wmeans),
            "fitted_on": {"train": int(len(f)), "val": int(len(val_d))}}


class Scorer:
    """A sidecar's "ood" entry, ready to score features: score(features) -> 1.0 at the threshold."""

    def __init__(self, entry: dict, n_classes: int):
        d = int(entry["features"])
        self.features = d
        self.whiten = unpack(entry["whiten"], (d, d))
        self.means = unpack(entry["means"], (n_classes, d))
        self.threshold = float(entry["threshold"])
        if not (np.isfinite(self.whiten).all() and np.isfinite(self.means).all()):
            raise ValueError("the whitening or the class means hold values that are not finite")

    def score(self, features) -> np.ndarray:
        f = np.asarray(features, np.float32).reshape(-1, self.features)
        return _distances(f @ self.whiten.T, self.means) / self.threshold
