"""Plots. Each ``plot_*(..., ax=None)`` draws on ``ax`` (or on a new figure) and returns the
axes; ``save(fig, path)`` writes a figure. Nothing here computes a metric: the numbers come
from ``fashionclf.evaluation.metrics``.

Figures are made with ``matplotlib.figure.Figure``, not pyplot: no global backend or state
is touched, so importing or calling this module never opens a window.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure


def save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")


def _axes(ax, figsize: tuple[float, float]):
    return Figure(figsize=figsize, layout="constrained").subplots() if ax is None else ax


def _mosaic(images: np.ndarray, cols: int, pad: int = 2) -> tuple[np.ndarray, int]:
    """Tile images (grey ``(N, H, W)`` or colour ``(N, H, W, 3)``) into one array, ``cols`` per
    row, with ``pad`` pixels between them."""
    n, h, w = len(images), images.shape[1], images.shape[2]
    rows = max(1, -(-n // cols))
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *images.shape[3:]), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return canvas, rows


def _captioned_grid(ax, images: np.ndarray, captions: list[str], cols: int, colour: str = "black",
                    fontsize: float = 7) -> None:
    """Images in a grid on one axes, each with a caption above it."""
    canvas, _ = _mosaic(images, cols, pad=14)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255)
    h, w = images.shape[1:3] if len(images) else (28, 28)
    for i, text in enumerate(captions):
        r, c = divmod(i, cols)
        ax.text(14 + c * (w + 14) + w / 2, 14 + r * (h + 14) - 1, text, ha="center", va="bottom",
                fontsize=fontsize, color=colour)
    ax.axis("off")


def plot_sample_grid(images: np.ndarray, labels: np.ndarray, classes: list[str], rows: int = 4,
                     cols: int = 8, seed: int = 0, ax=None):
    """A labelled grid of random sample images, ``rows`` x ``cols``."""
    ax = _axes(ax, (cols * 1.3, rows * 1.5))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), size=min(rows * cols, len(images)), replace=False)
    _captioned_grid(ax, images[picks], [classes[labels[i]] for i in picks], cols)
    ax.set_title("Sample training images")
    return ax


def plot_curves(history: list[dict], metric: str = "acc", ax=None):
    """``metric`` ("loss" or "acc") per epoch, train vs val, from ``history.csv`` rows;
    dotted lines mark where a new training phase starts."""
    ax = _axes(ax, (5, 3.8))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
    val = [h[f"val_{metric}"] for h in history]
    if any(v == v for v in val):  # not all NaN
        ax.plot(epochs, val, "o-", label="val")
    phases = [h.get("phase", "") for h in history]
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            ax.axvline(epochs[i] - 0.5, color="grey", linestyle=":", label=f"start of {phases[i]}")
    ax.set_xlabel("epoch")
    ax.set_title({"acc": "Accuracy", "loss": "Loss"}[metric])
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def figure_curves(history: list[dict]) -> Figure:
    """Loss and accuracy side by side (curves.png)."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    plot_curves(history, "loss", loss_ax)
    plot_curves(history, "acc", acc_ax)
    return fig


def plot_confusion_matrix(result, normalize: bool = True, ax=None):
    """Confusion matrix of an ``EvalResult``; rows are true classes, normalised per row
    (recall on the diagonal) with the counts shown beneath each rate."""
    k = len(result.classes)
    ax = _axes(ax, (1.0 + 0.75 * k,) * 2)
    counts = result.confusion
    rates = result.confusion_normalized if normalize else counts
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1 if normalize else None)
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
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax


def plot_mistakes(result, images: np.ndarray, limit: int = 24, cols: int = 8, ax=None):
    """The most confident wrong predictions of an ``EvalResult``: image, true class,
    predicted class, confidence."""
    picks = result.mistakes(limit)
    rows = max(1, -(-len(picks) // cols))
    ax = _axes(ax, (cols * 1.5, rows * 2.3))
    captions = [f"true {result.classes[result.y_true[i]]}\npred {result.classes[result.y_pred[i]]}\n"
                f"{result.confidence[i]:.0%}" for i in picks]
    if len(picks):
        _captioned_grid(ax, images[picks], captions, cols, colour="firebrick", fontsize=6)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", fontsize=12)
    ax.set_title(f"Most confident mistakes ({result.split})", fontsize=10)
    return ax


def plot_suspects(images: np.ndarray, captions: list[str], title: str, cols: int = 8, ax=None):
    """Photos with a caption each (``fashionclf audit``'s top suspects: given label, suggested
    one, score), in a grid."""
    rows = max(1, -(-len(images) // cols))
    ax = _axes(ax, (cols * 1.5, rows * 2.3))
    if len(images):
        _captioned_grid(ax, images, captions, cols, colour="firebrick", fontsize=6)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing flagged", ha="center", fontsize=12)
    ax.set_title(title, fontsize=10)
    return ax


def plot_reliability(reliability: dict, ax=None):
    """Reliability diagram: accuracy against confidence per bin, before and after temperature
    scaling (``reliability``: ``{"before": ood.reliability(...), "after": ...}``); the diagonal
    is perfect calibration."""
    ax = _axes(ax, (5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, style in (("before", "o-"), ("after", "s-")):
        r = reliability.get(name)
        if not r:
            continue
        used = [i for i, n in enumerate(r["count"]) if n]
        ax.plot([r["confidence"][i] for i in used], [r["accuracy"][i] for i in used], style,
                label=f"{name} temperature scaling (ECE {r['ece']:.3f})")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="Reliability on the validation split")
    ax.legend(loc="upper left", fontsize=8)
    return ax
