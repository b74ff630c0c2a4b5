"""Several attributes per photo: the loss over one head per attribute and the results per
attribute (``AttributeResults``). May import fashionclf.data and fashionclf.evaluation.metrics.

A model of a ``Schema`` answers with one block of logits per attribute, side by side. A
single-valued attribute's block is a softmax over its values (cross-entropy); a multi-label
attribute's block a sigmoid per value (binary cross-entropy, summed over the values). Photos
not labelled for an attribute add nothing to its loss or its figures (a masked loss), so a
photo with only its category known still trains the category head.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fashionclf.data.attributes import UNLABELLED, Schema
from fashionclf.evaluation.metrics import EvalResult, result_from_logits


def attribute_losses(logits: torch.Tensor, labels: torch.Tensor, schema: Schema, label_smoothing: float = 0.0,
                     value_weights: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Each attribute's mean loss over the photos labelled for it (0 where none is);
    ``value_weights`` (``balanced_weights``) weight a single-valued attribute's classes, or a
    multi-label one's positives (``pos_weight``)."""
    losses = []
    for a, (attr, zs, ys) in enumerate(zip(schema.attributes, schema.logit_slices, schema.label_slices)):
        z, w = logits[:, zs].float(), None if value_weights is None else value_weights[a]
        if attr.multi:
            t = labels[:, ys]
            mask = (t != UNLABELLED).all(1)
            loss = F.binary_cross_entropy_with_logits(z[mask], t[mask].float(), pos_weight=w, reduction="sum")
            losses.append(loss / mask.sum().clamp(min=1))
        else:
            t = labels[:, ys.start]
            mask = t != UNLABELLED
            loss = F.cross_entropy(z[mask], t[mask], weight=w, label_smoothing=label_smoothing, reduction="sum")
            total = mask.sum() if w is None else w[t[mask]].sum()
            losses.append(loss / total.clamp(min=1e-6) if w is not None else loss / total.clamp(min=1))
    return losses


def attribute_loss(logits: torch.Tensor, labels: torch.Tensor, schema: Schema, label_smoothing: float = 0.0,
                   weights: list[float] | None = None, value_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The training loss: the attributes' losses, weighted (equal weights by default)."""
    losses = attribute_losses(logits, labels, schema, label_smoothing, value_weights)
    return sum(w * loss for w, loss in zip(weights or [1.0] * len(losses), losses))


def balanced_weights(schema: Schema, labels: np.ndarray, power: float = 1.0) -> list[np.ndarray]:
    """Per attribute, from its training photos: each value's class weight, ``n / (k * n_value)``
    (scikit-learn's "balanced": a class of average size weighs 1; a value without training
    photos, 0), or for a multi-label attribute each value's ``pos_weight``, negatives over
    positives (1 for a value no photo has); each raised to ``power`` (0.5: the square root,
    a softer balance)."""
    out = []
    for a, attr in enumerate(schema.attributes):
        counts = schema.counts(labels, a).astype(np.float64)
        labelled = float(schema.labelled(labels, a).sum())
        if attr.multi:
            out.append(np.where(counts > 0, (labelled - counts) / np.maximum(counts, 1), 1.0) ** power)
        else:
            out.append(np.where(counts > 0, labelled / (len(counts) * np.maximum(counts, 1)), 0.0) ** power)
    return out


def first_hits(logits: torch.Tensor, labels: torch.Tensor, schema: Schema) -> torch.Tensor:
    """How many photos of a batch the first attribute's head gets right (a multi-label head:
    every value right at 0.5)."""
    z, attr = logits[:, schema.logit_slices[0]], schema.first
    if attr.multi:
        t = labels[:, schema.label_slices[0]]
        return (((z > 0).long() == t).all(1) & (t != UNLABELLED).all(1)).sum()
    t = labels[:, 0]
    return ((z.argmax(1) == t) & (t != UNLABELLED)).sum()


@dataclass
class MultiLabelResult:
    """One multi-label attribute on one split: each value's probability (sigmoid) against
    whether the photo has it, and the decision thresholds (chosen on validation)."""

    split: str
    classes: list[str]
    y_true: np.ndarray  # (N, V) 0/1
    probs: np.ndarray  # (N, V)
    thresholds: np.ndarray  # (V,)
    loss: float

    @property
    def y_pred(self) -> np.ndarray:
        return (self.probs >= self.thresholds).astype(np.int64)

    @functools.cached_property
    def average_precision(self) -> np.ndarray:
        """Per value; NaN for a value no photo of the split has."""
        from sklearn.metrics import average_precision_score

        return np.array([average_precision_score(self.y_true[:, v], self.probs[:, v]) if self.y_true[:, v].any()
                         else np.nan for v in range(len(self.classes))])

    @property
    def accuracy(self) -> float:
        """The head's figure of merit for choosing the best epoch: mAP (mean over the values present)."""
        ap = self.average_precision
        return float(np.nanmean(ap)) if len(self.y_true) and not np.isnan(ap).all() else float("nan")

    @functools.cached_property
    def per_class(self) -> dict[str, dict[str, float]]:
        from sklearn.metrics import precision_recall_fscore_support

        p, r, f, s = precision_recall_fscore_support(self.y_true, self.y_pred, zero_division=0)
        return {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]),
                       "average_precision": None if np.isnan(self.average_precision[i]) else
                       float(self.average_precision[i]), "threshold": float(self.thresholds[i])}
                for i, name in enumerate(self.classes)}

    def summary(self) -> dict:
        return {"kind": "multi-label", "split": self.split, "samples": int(len(self.y_true)), "mAP": self.accuracy,
                "loss": self.loss, "per_value": self.per_class}


def best_thresholds(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per value, the probability cut with the highest F1 on these photos (0.5 for a value
    none of them has)."""
    from sklearn.metrics import precision_recall_curve

    out = np.full(y_true.shape[1], 0.5)
    for v in range(y_true.shape[1]):
        if y_true[:, v].any() and not y_true[:, v].all():
            p, r, t = precision_recall_curve(y_true[:, v], probs[:, v])
            f1 = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
            out[v] = float(t[int(f1.argmax())])
    return out


@dataclass
class AttributeResults:
    """A model of several attributes on one split: one result per attribute, over the photos
    labelled for it (``masks``). ``accuracy`` (the mean over attributes of accuracy, or mAP for
    a multi-label one) and ``loss`` choose the best epoch."""

    split: str
    schema: Schema
    results: list[EvalResult | MultiLabelResult]
    masks: list[np.ndarray]  # which photos of the split each result covers
    loss: float

    @property
    def accuracy(self) -> float:
        values = [r.accuracy for r in self.results if not np.isnan(r.accuracy)]
        return float(np.mean(values)) if values else float("nan")

    @property
    def first(self) -> EvalResult | MultiLabelResult:
        return self.results[0]

    def of(self, name: str) -> EvalResult | MultiLabelResult:
        return self.results[self.schema.attribute(name)]

    def summary(self) -> dict:
        out = {}
        for attr, r, mask in zip(self.schema.attributes, self.results, self.masks):
            out[attr.name] = {**({"kind": "single"} if isinstance(r, EvalResult) else {}), **r.summary(),
                              "unlabelled": int((~mask).sum())}
        return out


def results_of(logits: torch.Tensor, labels, schema: Schema, split: str,
               thresholds: dict[str, np.ndarray] | None = None) -> AttributeResults:
    """Score ``logits`` of a model of ``schema`` against a label matrix, attribute by attribute."""
    labels = torch.as_tensor(labels)
    y = labels.numpy()
    results, masks = [], []
    for a, (attr, zs) in enumerate(zip(schema.attributes, schema.logit_slices)):
        mask = schema.labelled(y, a)
        z = logits[torch.from_numpy(mask)][:, zs].float()
        col = schema.column(y, a)[mask]
        if attr.multi:
            probs = torch.sigmoid(z).numpy()
            cut = (thresholds or {}).get(attr.name, np.full(len(attr.values), 0.5))
            loss = float(F.binary_cross_entropy_with_logits(z, torch.from_numpy(col).float(), reduction="sum")
                         / max(len(col), 1)) if len(col) else float("nan")
            results.append(MultiLabelResult(split, list(attr.values), col, probs, np.asarray(cut), loss))
        else:
            results.append(result_from_logits(z, torch.from_numpy(col), list(attr.values), split))
        masks.append(mask)
    loss = float(attribute_loss(logits.float(), labels, schema)) if len(y) else float("nan")
    return AttributeResults(split, schema, results, masks, loss)


def write_attribute_figures(results: AttributeResults, images: np.ndarray, out) -> dict[str, dict[str, str]]:
    """Per single-valued attribute after the first (whose figures the report already has): its
    confusion matrix and most confident mistakes as PNGs in ``out``; the paths per attribute."""
    from pathlib import Path

    from fashionclf.evaluation.plots import plot_confusion_matrix, plot_mistakes, save

    figures = {}
    for attr, r, mask in list(zip(results.schema.attributes, results.results, results.masks))[1:]:
        if attr.multi or not len(r.y_true):
            continue
        stem = "".join(ch if ch.isalnum() else "_" for ch in attr.name)
        paths = {"confusion": Path(out) / f"confusion_matrix_{stem}.png", "mistakes": Path(out) / f"mistakes_{stem}.png"}
        save(plot_confusion_matrix(r).figure, paths["confusion"])
        save(plot_mistakes(r, images[mask]).figure, paths["mistakes"])
        figures[attr.name] = {k: str(v) for k, v in paths.items()}
    return figures
