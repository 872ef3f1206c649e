"""Report figures (matplotlib, no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from device.atomic import atomic_path  # noqa: E402


def save_fig(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def confusion_png(cms: dict, classes, path):
    """cms: {title: confusion matrix}; one panel each."""
    fig, axes = plt.subplots(1, len(cms), figsize=(4.2 * len(cms), 4))
    axes = np.atleast_1d(axes)
    for ax, (title, cm) in zip(axes, cms.items()):
        cm = np.asarray(cm)
        ax.imshow(cm, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=9)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    save_fig(fig, path)


def curves_png(histories: dict, path):
    """histories: {name: keras History.history dict}."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, h in histories.items():
        if not h:
            continue
        if "accuracy" in h:
            a1.plot(h["accuracy"], "--", label=f"{name} train")
        if "val_accuracy" in h:
            a1.plot(h["val_accuracy"], label=f"{name} val")
        if "val_loss" in h:
            a2.plot(h["val_loss"], label=f"{name} val CE")
    a1.set_xlabel("epoch")
    a1.set_ylabel("accuracy")
    a1.legend(fontsize=7)
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation loss")
    a2.legend(fontsize=7)
    save_fig(fig, path)
