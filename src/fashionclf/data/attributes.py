"""What a shop tags on each photo: one or more attributes (category, colour, pattern, ...),
each with its values, and how a photo's cells become a label array. numpy only.

Labels. A dataset of one single-valued attribute (class folders; a ``path,label`` manifest)
keeps one value index per photo, shape (N,), as always. Any other dataset (several attributes,
or a multi-label one) has a label matrix (N, ``Schema.width``): per single-valued attribute one
column holding the value's index or ``UNLABELLED``; per multi-label attribute one column per
value holding 1 (the photo has it) or 0, or ``UNLABELLED`` across the block when the photo was
not labelled for it. A model answers with one block of logits per attribute, side by side
(``Schema.logit_slices``): a softmax over a single-valued attribute's values, a sigmoid per
value of a multi-label one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

MULTI_SEPARATOR = ";"  # "red;white" in a manifest cell: the photo has both values
UNLABELLED = -1


def cell_values(cell: str) -> list[str]:
    """The values of one manifest cell: none for an empty cell, several where ``;`` separates them."""
    return [v.strip() for v in cell.split(MULTI_SEPARATOR) if v.strip()]


@dataclass(frozen=True)
class Attribute:
    """One thing tagged on a photo, e.g. ``Attribute("colour", ("blue", "red"))``."""

    name: str
    values: tuple[str, ...]
    multi: bool = False  # several values per photo (a sigmoid per value) rather than one (softmax)
    thresholds: tuple[float, ...] = ()  # a multi-label model's probability cut per value (chosen on validation)
    temperature: float = 1.0  # a trained single-valued head's calibration (fitted on validation)

    @property
    def width(self) -> int:
        """Columns of the label matrix this attribute takes."""
        return len(self.values) if self.multi else 1

    def to_dict(self) -> dict:
        out = {"name": self.name, "values": list(self.values), "multi": self.multi}
        if self.temperature != 1.0:
            out["temperature"] = self.temperature
        return {**out, "thresholds": list(self.thresholds)} if self.thresholds else out


@dataclass(frozen=True)
class Schema:
    """The attributes of a dataset or a model, in order; the first one is the "category":
    the unknown-item score and the run-level ``test_accuracy`` come from it."""

    attributes: tuple[Attribute, ...]

    @classmethod
    def one(cls, values: list[str] | tuple[str, ...], name: str = "label") -> Schema:
        """Today's case: one single-valued attribute."""
        return cls((Attribute(name, tuple(values)),))

    @classmethod
    def from_cells(cls, names: list[str], rows: list[tuple[str, ...]]) -> Schema:
        """The attributes ``names`` with the values seen in ``rows`` (one cell per attribute),
        sorted; an attribute is multi-label when any of its cells holds ``;``."""
        attributes = []
        for i, name in enumerate(names):
            cells = [row[i] for row in rows]
            values = sorted({v for cell in cells for v in cell_values(cell)})
            attributes.append(Attribute(name, tuple(values), any(MULTI_SEPARATOR in c for c in cells)))
        return cls(tuple(attributes))

    @classmethod
    def from_dict(cls, items: list[dict]) -> Schema:
        return cls(tuple(Attribute(str(a["name"]), tuple(map(str, a["values"])), bool(a.get("multi", False)),
                                   tuple(float(t) for t in a.get("thresholds") or ()),
                                   float(a.get("temperature", 1.0))) for a in items))

    def calibrated(self, thresholds: dict[str, list[float]], temperatures: dict[str, float]) -> Schema:
        """The schema with the multi-label attributes' cuts and the single-valued heads'
        temperatures (by attribute name)."""
        return Schema(tuple(replace(a, thresholds=tuple(thresholds.get(a.name, a.thresholds)),
                                    temperature=temperatures.get(a.name, a.temperature)) for a in self.attributes))

    def to_dict(self) -> list[dict]:
        return [a.to_dict() for a in self.attributes]

    @property
    def single(self) -> bool:
        """One single-valued attribute: labels are one index per photo, as they always were."""
        return len(self.attributes) == 1 and not self.attributes[0].multi

    @property
    def first(self) -> Attribute:
        return self.attributes[0]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def outputs(self) -> int:
        """Logits of a model with one head per attribute: one per value of each."""
        return sum(len(a.values) for a in self.attributes)

    @property
    def width(self) -> int:
        return sum(a.width for a in self.attributes)

    @property
    def logit_slices(self) -> list[slice]:
        return _slices([len(a.values) for a in self.attributes])

    @property
    def label_slices(self) -> list[slice]:
        return _slices([a.width for a in self.attributes])

    def attribute(self, name: str) -> int:
        """The index of attribute ``name``; a ValueError listing the valid names otherwise."""
        if name not in self.names:
            raise ValueError(f"no attribute {name!r}; the model's attributes are: {', '.join(self.names)}")
        return self.names.index(name)

    def encode(self, rows: list[tuple[str, ...]]) -> np.ndarray:
        """The label array of ``rows`` (one cell per attribute, ``""`` = unlabelled): (N,) for a
        single schema, else (N, width). A value not among an attribute's values is unlabelled."""
        if self.single:
            index = {v: i for i, v in enumerate(self.first.values)}
            return np.array([index.get(r[0].strip(), UNLABELLED) for r in rows], dtype=np.int64)
        out = np.full((len(rows), self.width), UNLABELLED, dtype=np.int64)
        for a, (attr, cols) in enumerate(zip(self.attributes, self.label_slices)):
            index = {v: i for i, v in enumerate(attr.values)}
            for n, row in enumerate(rows):
                found = [index[v] for v in cell_values(row[a] if a < len(row) else "") if v in index]
                if not found:
                    continue
                if attr.multi:
                    out[n, cols] = 0
                    out[n, cols.start + np.array(found)] = 1
                else:
                    out[n, cols.start] = found[0]
        return out

    def column(self, labels: np.ndarray, a: int) -> np.ndarray:
        """Attribute ``a``'s part of a label array: (N,) indices of a single-valued one
        (``UNLABELLED`` where not labelled), (N, values) of a multi-label one."""
        if labels.ndim == 1:
            return labels
        cols = self.label_slices[a]
        return labels[:, cols] if self.attributes[a].multi else labels[:, cols.start]

    def labelled(self, labels: np.ndarray, a: int) -> np.ndarray:
        """Which photos are labelled for attribute ``a``."""
        col = self.column(labels, a)
        return (col != UNLABELLED) if col.ndim == 1 else (col != UNLABELLED).all(1)

    def counts(self, labels: np.ndarray, a: int) -> np.ndarray:
        """Photos per value of attribute ``a`` (a multi-label photo counts once per value it has)."""
        col = self.column(labels, a)
        k = len(self.attributes[a].values)
        if col.ndim == 1:
            return np.bincount(col[col != UNLABELLED], minlength=k)
        return (col == 1).sum(0)

    def category(self, labels: np.ndarray) -> np.ndarray:
        """The first attribute's value index per photo (``UNLABELLED`` where it has none, or
        the first of several for a multi-label one): what splits are stratified on."""
        col = self.column(labels, 0)
        if col.ndim == 1:
            return col
        has = (col == 1)
        return np.where(has.any(1), has.argmax(1), UNLABELLED)


def recode(labels: np.ndarray, source: Schema, target: Schema) -> np.ndarray:
    """Labels of ``source`` in ``target``'s layout (a model's): each attribute by name (a
    one-attribute ``source``, e.g. class folders, is the target's first attribute), each value
    to its index there; attributes the target has and the source lacks are unlabelled. A
    ValueError names an attribute or value the target does not know."""
    if source.single:
        source = Schema((replace(source.first, name=target.first.name),))
    unknown = [n for n in source.names if n not in target.names]
    if unknown:
        raise ValueError(f"the data has attribute(s) {', '.join(map(repr, unknown))} that the model does not know; "
                         f"its attributes are: {', '.join(target.names)}")
    out = np.full((len(labels), target.width) if not target.single else len(labels), UNLABELLED, np.int64)
    for a, attr in enumerate(source.attributes):
        t = target.attribute(attr.name)
        want = target.attributes[t]
        missing = [v for v in attr.values if v not in want.values]
        if missing:
            raise ValueError(f"attribute {attr.name!r}: the data has value(s) {', '.join(map(repr, missing))} that the "
                             f"model does not know; its values are: {', '.join(want.values)}")
        index = np.array([want.values.index(v) for v in attr.values], dtype=np.int64)
        col = source.column(labels, a)
        if target.single:
            out[:] = np.where(col == UNLABELLED, UNLABELLED, index[col])
        elif want.multi != attr.multi:
            raise ValueError(f"attribute {attr.name!r} is {'multi' if attr.multi else 'single'}-valued in the data, "
                             f"{'multi' if want.multi else 'single'}-valued in the model")
        elif want.multi:
            cols = target.label_slices[t]
            block = np.zeros((len(labels), len(want.values)), np.int64)
            block[:, index] = col
            out[:, cols] = np.where((col == UNLABELLED).all(1, keepdims=True), UNLABELLED, block)
        else:
            out[:, target.label_slices[t].start] = np.where(col == UNLABELLED, UNLABELLED, index[col.clip(0)])
    return out


def _slices(widths: list[int]) -> list[slice]:
    ends = np.cumsum([0, *widths])
    return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]
