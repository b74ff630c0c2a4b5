"""Plots. Each ``plot_*(..., ax=None)`` draws on ``ax`` (or a new figure) and returns the figure;
``save(fig, path)`` writes it and frees it. Nothing here computes a metric."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _figure(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def plot_sample_grid(images: np.ndarray, labels: np.ndarray, classes: list[str], rows: int = 4,
                     cols: int = 8, seed: int = 0):
    """A labelled grid of random sample images, ``rows`` x ``cols``."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), size=min(rows * cols, len(images)), replace=False)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i in zip(np.ravel(axes), picks):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(classes[labels[i]], fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict], axes=None):
    """Loss and accuracy per epoch, train vs val, from ``history.csv`` rows."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    fig = axes[0].figure
    epochs = [h["epoch"] for h in history]
    for ax, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy")):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
        val = [h[f"val_{metric}"] for h in history]
        if any(v == v for v in val):  # not all NaN
            ax.plot(epochs, val, "o-", label="val")
        phases = [h.get("phase", "") for h in history]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(epochs[i] - 0.5, color="grey", linestyle=":", label=f"start of {phases[i]}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion_matrix(result, normalize: bool = True, ax=None):
    """Confusion matrix of an ``EvalResult``; rows are true classes, normalised per row
    (recall on the diagonal) with the counts shown beneath each rate."""
    fig, ax = _figure(ax, (1.0 + 0.75 * len(result.classes),) * 2)
    counts = result.confusion_matrix()
    rates = result.confusion_matrix("true") if normalize else counts
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    k = len(result.classes)
    for i in range(k):
        for j in range(k):
            colour = "white" if rates[i, j] > (0.5 if normalize else rates.max() / 2) else "black"
            text = f"{rates[i, j]:.2f}\n{counts[i, j]}" if normalize else f"{counts[i, j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(k), result.classes, rotation=45, ha="right")
    ax.set_yticks(range(k), result.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({result.split}, accuracy {result.accuracy:.2%})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_mistakes(result, images: np.ndarray, limit: int = 24, cols: int = 8):
    """The most confident wrong predictions: image, true class, predicted class, confidence."""
    picks = result.mistakes(limit)
    rows = max(1, -(-len(picks) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 2.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"true {result.classes[result.y_true[i]]}\npred {result.classes[result.y_pred[i]]}\n"
            f"{result.confidence[i]:.0%}",
            fontsize=7,
            color="firebrick",
        )
    if not len(picks):
        axes[0, 0].text(0, 0.5, "no mistakes", fontsize=12)
    fig.suptitle(f"Most confident mistakes ({result.split})", fontsize=10)
    fig.tight_layout()
    return fig
