"""A review queue: the photos a person should look at, as ``Card``s ordered by the queue's
score, each with the model's answer per attribute.

Three kinds of queue (``load_queue``):

* a ``predict --review`` folder (its ``review.csv``): the photos predict filed there; the
  current value is the folder predict filed each under, the score its uncertainty;
* an audit CSV (``fashionclf audit --output``): its photos in its order (one card per photo,
  however many rows name it); the current value is the given label, the suggestion the
  audit's, the score the audit's (each kind of row has its own scale);
* any folder of photos: every photo below it; the current value is the class folder a photo
  is in (when the folder is a tree of class folders), the score the model's uncertainty.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashionclf.data.attributes import Schema
from fashionclf.data.photos import IMAGE_SUFFIXES, PhotoError
from fashionclf.errors import DataError
from fashionclf.fileio import plain_cell
from fashionclf.inference.classifier import Classifier
from fashionclf.inference.predict import REVIEW_CSV
from fashionclf.inference.tagging import answers
from fashionclf.training.config import PREDICT_BATCH_SIZE

AUDIT_FIELDS = ("path", "label", "suggested", "score", "kind")
UNKNOWN = "_unknown"  # "not one of our items": the value written, a folder name training ignores


@dataclass
class Card:
    """One photo to decide: what it is now, what the model (or the audit) suggests, how much
    the queue wants it looked at (``score``: higher first)."""

    id: int
    path: Path
    current: dict[str, str]  # attribute -> the value it has now ("" when none)
    suggested: dict[str, str]  # attribute -> the suggested value
    confidences: dict[str, list[float]]  # attribute -> the model's probability of each value, in the schema's order
    score: float
    why: str = ""  # what put it in the queue: "unknown", "low confidence", an audit's kinds
    error: str = ""  # a photo that could not be read: shown, decided like any other


@dataclass
class Queue:
    """The cards of a queue, most to look at first, and the attributes they are decided on."""

    source: Path
    kind: str  # "review folder", "audit", "folder"
    schema: Schema
    cards: list[Card] = field(default_factory=list)

    def card(self, id: int) -> Card:
        if not 0 <= id < len(self.cards):
            raise KeyError(id)
        return self.cards[id]


def load_queue(source: str | os.PathLike, classifier: Classifier) -> Queue:
    """The queue at ``source`` (see the module docstring), every photo answered by ``classifier``."""
    source = Path(source)
    schema = classifier.schema or Schema.one(list(classifier.classes))
    if source.is_file() and source.suffix.lower() == ".csv":
        entries = audit_entries(source)
        kind = "audit"
    elif source.is_dir() and (source / REVIEW_CSV).is_file():
        entries = review_entries(source)
        kind = "review folder"
    elif source.is_dir():
        entries = folder_entries(source)
        kind = "folder"
    else:
        raise DataError(f"review {source}: expected a predict --review folder, an audit CSV (fashionclf audit "
                        "--output) or a folder of photos")
    if not entries:
        raise DataError(f"review {source}: no photos in it")
    queue = Queue(source, kind, schema)
    answer(queue, entries, classifier)
    if kind != "audit":  # an audit CSV is in its own order: wrong labels, near-duplicates, outliers, each ranked
        queue.cards.sort(key=lambda c: (-c.score, str(c.path)))
    for i, card in enumerate(queue.cards):
        card.id = i
    return queue


@dataclass
class Entry:
    path: Path
    current: str = ""  # the first attribute's value now
    suggested: str = ""  # the queue's own suggestion for it (an audit's); "" leaves it to the model
    score: float | None = None  # the queue's own score (an audit's); None: the model's uncertainty
    why: str = ""


def audit_entries(path: Path) -> list[Entry]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not set(AUDIT_FIELDS) <= set(rows[0]):
        raise DataError(f"review {path}: a CSV with columns {', '.join(AUDIT_FIELDS)} (fashionclf audit --output) "
                        f"was expected; its columns are {', '.join(rows[0])}")
    by_path: dict[str, Entry] = {}
    for row in rows:
        name = plain_cell(row["path"])
        where = Path(name) if Path(name).is_absolute() or Path(name).exists() else path.parent / name
        entry = by_path.setdefault(name, Entry(where, plain_cell(row["label"]), score=float("-inf")))
        if row["kind"] == "label" and not row.get("attribute"):
            entry.suggested = plain_cell(row["suggested"])
        entry.score = max(entry.score, float(row["score"]))
        entry.why = ", ".join(filter(None, [entry.why, row["kind"]]))
    return list(by_path.values())


def review_entries(folder: Path) -> list[Entry]:
    with open(folder / REVIEW_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        copy = Path(plain_cell(row["copy"]))
        where = copy if copy.is_absolute() or copy.exists() else folder / copy
        why = "unknown" if row.get("unknown") == "true" else "low confidence"
        out.append(Entry(where, current=where.parent.name if where.parent != folder else "", why=why))
    return out


def folder_entries(folder: Path) -> list[Entry]:
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [Entry(p, current=p.parent.name if p.parent != folder else "") for p in photos]


def answer(queue: Queue, entries: list[Entry], classifier: Classifier, batch: int = PREDICT_BATCH_SIZE) -> None:
    """One card per entry with the model's answer per attribute (a multi-label one: the values
    at or above their thresholds, ``;``-joined); the score is the queue's, or 1 - the model's
    confidence in its first attribute's answer (+1 for an unknown item; a photo that cannot be
    read comes first)."""
    schema, to_input, first = queue.schema, classifier.to_input, queue.schema.first.name
    cards, arrays = [], []
    for entry in entries:
        card = Card(0, entry.path, {a.name: "" for a in schema.attributes}, {}, {}, 0.0, entry.why)
        card.current[first] = entry.current
        try:
            arrays.append(to_input(entry.path))
            cards.append((card, entry))
        except (PhotoError, OSError) as exc:
            card.error, card.score = str(exc), float("inf") if entry.score is None else entry.score
        queue.cards.append(card)
    for start in range(0, len(cards), batch):
        every, scores = classifier.predict_attributes(np.stack(arrays[start : start + batch]))
        unknown = classifier.unknown(scores)
        for i, (card, entry) in enumerate(cards[start : start + batch]):
            for attr, p, said in zip(schema.attributes, every, answers(schema, every, i)):
                card.confidences[attr.name] = [round(float(v), 4) for v in p[i]]
                card.suggested[attr.name] = ";".join(said.values)
            if entry.suggested:
                card.suggested[first] = entry.suggested
            is_unknown = unknown is not None and bool(unknown[i])
            if is_unknown and not card.why:
                card.why = "unknown"
            confidence = max(card.confidences[first])
            card.score = entry.score if entry.score is not None else (1 - confidence) + is_unknown
