"""Evaluation: numbers are computed here once; plots.py draws them and report.py shows them."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashionclf.evaluation.report import ReportParts, write_report
from fashionclf.fileio import write_json
from fashionclf.models.contract import InputContract, predict_logits

# A large gap between train and val/test accuracy (measured in eval mode) is flagged.
OVERFIT_GAP = 0.05
# A gap this large (the MobileNetV2 reference: 96% train, 36% val) means a broken pipeline.
BROKEN_GAP = 0.2


@dataclass
class EvalResult:
    """Predictions on one split and the metrics derived from them."""

    split: str
    classes: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray  # (N, k) softmax probabilities
    loss: float
    logits: np.ndarray | None = None  # (N, k), for calibration

    @property
    def accuracy(self) -> float:
        return float((self.y_true == self.y_pred).mean()) if len(self.y_true) else float("nan")

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    @functools.cached_property
    def confusion(self) -> np.ndarray:
        """Counts: rows are true classes, columns predicted ones (computed once)."""
        from sklearn.metrics import confusion_matrix

        return confusion_matrix(self.y_true, self.y_pred, labels=range(len(self.classes)))

    @property
    def confusion_normalized(self) -> np.ndarray:
        """Each row divided by its count (recall on the diagonal); 0 for an empty row."""
        totals = self.confusion.sum(1, keepdims=True)
        return np.divide(self.confusion, totals, out=np.zeros(self.confusion.shape), where=totals > 0)

    @functools.cached_property
    def per_class(self) -> dict[str, dict[str, float]]:
        from sklearn.metrics import precision_recall_fscore_support

        p, r, f, s = precision_recall_fscore_support(
            self.y_true, self.y_pred, labels=range(len(self.classes)), zero_division=0
        )
        return {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(self.classes)
        }

    def mistakes(self, limit: int = 25) -> np.ndarray:
        """Indices of the wrong predictions, most confident first."""
        wrong = np.flatnonzero(self.y_true != self.y_pred)
        return wrong[np.argsort(-self.confidence[wrong], kind="stable")][:limit]

    def summary(self) -> dict:
        return {
            "split": self.split,
            "samples": int(len(self.y_true)),
            "accuracy": self.accuracy,
            "loss": self.loss,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion.tolist(),
            "confusion_matrix_normalized": np.round(self.confusion_normalized, 4).tolist(),
        }


def result_from_logits(logits: torch.Tensor, labels, classes: list[str], split: str) -> EvalResult:
    labels = torch.as_tensor(labels)
    empty = len(labels) == 0
    return EvalResult(
        split=split,
        classes=list(classes),
        y_true=labels.numpy(),
        y_pred=np.empty(0, dtype=np.int64) if empty else logits.argmax(1).numpy(),
        probs=np.empty((0, len(classes))) if empty else F.softmax(logits, 1).numpy(),
        loss=float("nan") if empty else float(F.cross_entropy(logits, labels)),
        logits=np.empty((0, len(classes)), np.float32) if empty else logits.numpy(),
    )


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
             contract: InputContract, split: str = "test", device: str | torch.device = "cpu") -> EvalResult:
    return result_from_logits(predict_logits(model, images, contract, device), labels, classes, split)


def overfitting_check(accuracies: dict[str, float]) -> dict:
    """Compare train accuracy (eval mode) with val and test; flag a large gap with a hint."""
    train = accuracies.get("train")
    held_out = {k: v for k, v in accuracies.items() if k != "train" and v == v}  # drop NaN
    if train is None or not held_out:
        return {"gap": None, "flag": False, "hint": ""}
    worst = min(held_out, key=held_out.get)
    gap = train - held_out[worst]
    hint = ""
    if gap > BROKEN_GAP:
        hint = (
            f"train accuracy is {gap:.1%} above {worst} accuracy, far more than overfitting explains: "
            "training and evaluation probably see different inputs or a different network. Usual causes: "
            "BatchNorm statistics re-estimated in training mode while fine-tuning a pretrained base "
            "(keep --bn-policy frozen), or preprocessing (channels, size, normalisation) that differs "
            "between training and evaluation."
        )
    elif gap > OVERFIT_GAP:
        hint = (
            f"train accuracy is {gap:.1%} above {worst} accuracy: the model overfits. Try fewer epochs "
            "(the best-by-validation checkpoint already helps), --augment, or --weight-decay."
        )
    return {"gap": float(gap), "worst_split": worst, "flag": gap > OVERFIT_GAP, "hint": hint}


def write_evaluation(result: EvalResult, images: np.ndarray, out_dir: str | os.PathLike,
                     accuracies: dict[str, float], info: dict, parts: ReportParts = ReportParts()) -> dict:
    """Write the evaluation artefacts of ``result`` into ``out_dir``; return the paths written.

    ``images`` are the uint8 source images of ``result``'s split (for the mistakes gallery);
    ``accuracies`` the accuracies side by side (and their ``overfitting_check`` in the report);
    ``info`` the run's settings shown in the report; ``parts`` the rest of the report
    (``ReportParts``: training curves, the data's problems, the calibration and unknown-item
    figures drawn as a reliability diagram, a section per attribute).
    """
    from fashionclf.evaluation.plots import figure_curves, plot_confusion_matrix, plot_mistakes, plot_reliability, save

    history, unknown = parts.history, parts.unknown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "confusion_matrix_png": out / "confusion_matrix.png",
        "confusion_matrix_json": out / "confusion_matrix.json",
        "mistakes_png": out / "mistakes.png",
        "report_html": out / "report.html",
    }
    write_json(
        {
            "split": result.split,
            "classes": result.classes,
            "counts": result.confusion.tolist(),
            "normalized": np.round(result.confusion_normalized, 4).tolist(),
        },
        paths["confusion_matrix_json"],
    )
    save(plot_confusion_matrix(result).figure, paths["confusion_matrix_png"])
    save(plot_mistakes(result, images).figure, paths["mistakes_png"])
    if parts.heatmaps is not None and len(parts.heatmaps):
        from fashionclf.evaluation.plots import plot_suspects

        paths["mistakes_heatmaps_png"] = out / "mistakes_heatmaps.png"
        picks = result.mistakes(len(parts.heatmaps))
        captions = [f"pred {result.classes[result.y_pred[i]]}\n{result.confidence[i]:.0%}" for i in picks]
        save(plot_suspects(parts.heatmaps, captions, f"Where the model looked ({result.split})").figure,
             paths["mistakes_heatmaps_png"])
    if history:
        paths["curves_png"] = out / "curves.png"
        save(figure_curves(history), paths["curves_png"])
    if unknown and "reliability" in unknown:
        paths["reliability_png"] = out / "reliability.png"
        save(plot_reliability(unknown["reliability"]).figure, paths["reliability_png"])
    write_report(result, accuracies, overfitting_check(accuracies), info, paths, parts)
    return {k: str(v) for k, v in paths.items()}
