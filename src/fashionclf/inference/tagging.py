"""Rows from photos: ``classify`` turns paths into ``Prediction`` rows a batch at a time, the
one tagging loop behind ``predict`` (in this process) and ``predict --dask`` (in each worker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fashionclf.data.attributes import Schema
from fashionclf.data.photos import PhotoError
from fashionclf.inference.classifier import NAN_ERROR, Classifier
from fashionclf.models.inputs import top_k as top_k_labels
from fashionclf.training.config import PREDICT_BATCH_SIZE


@dataclass
class Answer:
    """One attribute's answer for a photo: its value (several for a multi-label attribute, those
    at or above their thresholds, most likely first; none where no value reaches its threshold)
    and the probability of each."""

    name: str
    values: list[str]
    confidences: list[float]
    multi: bool = False


def answers(schema: Schema, probabilities: list[np.ndarray], i: int) -> list[Answer]:
    """Photo ``i``'s answer per attribute from each attribute's (N, values) probabilities."""
    out = []
    for attr, p in zip(schema.attributes, probabilities):
        row = p[i]
        if attr.multi:
            cut = np.array(attr.thresholds) if attr.thresholds else np.full(len(row), 0.5)
            chosen = sorted(np.flatnonzero(row >= cut), key=lambda j: -row[j])
        else:
            chosen = [int(row.argmax())]
        out.append(Answer(attr.name, [attr.values[j] for j in chosen], [float(row[j]) for j in chosen], attr.multi))
    return out


@dataclass
class Prediction:
    path: str
    label: str = ""
    confidence: float | None = None
    error: str = ""
    top: list[tuple[str, float]] = field(default_factory=list)
    low_confidence: bool = False
    unknown: bool | None = None  # None: the model has no calibrated threshold (or the row failed)
    attributes: list[Answer] = field(default_factory=list)  # a model of several attributes: one per attribute


def classify(classifier: Classifier, paths: Iterable[Path], top_k: int = 1, batch_size: int = PREDICT_BATCH_SIZE,
             min_confidence: float = 0.0) -> Iterator[Prediction]:
    """Rows for ``paths`` in order, produced a batch at a time."""
    classes, to_input = classifier.classes, classifier.to_input
    batch: list[Prediction] = []
    arrays: list[np.ndarray] = []

    def flush() -> list[Prediction]:
        good = [r for r in batch if not r.error]
        if good:
            every, scores = classifier.predict_attributes(np.stack(arrays))
            probs = every[0]
            unknown, finite = classifier.unknown(scores), classifier.finite(np.concatenate(every, 1), scores)
            for i, (row, top) in enumerate(zip(good, top_k_labels(probs, classes, top_k))):
                if not finite[i]:
                    row.error = NAN_ERROR
                    continue
                row.top = top
                row.label, row.confidence = top[0]
                row.low_confidence = row.confidence < min_confidence
                row.unknown = None if unknown is None else bool(unknown[i])
                if classifier.schema is not None:
                    row.attributes = answers(classifier.schema, every, i)
        done = list(batch)
        batch.clear()
        arrays.clear()
        return done

    for path in paths:
        row = Prediction(str(path))
        try:
            arrays.append(to_input(path))
        except PhotoError as exc:  # every failure of the conversion (photos.per_file)
            row.error = str(exc)
        batch.append(row)
        if len(arrays) >= batch_size or len(batch) >= 4 * batch_size:
            yield from flush()
    yield from flush()
