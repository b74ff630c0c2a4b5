"""What an audit found: ``Suspect`` rows (the CSV's) and the ``AuditResult``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fashionclf.data.attributes import UNLABELLED
from fashionclf.quality.confident import LabelIssues
from fashionclf.quality.folds import Pool


@dataclass
class Suspect:
    """One row of the audit's CSV."""

    path: str
    label: str
    suggested: str
    score: float
    kind: str  # label, duplicate or outlier
    attribute: str = ""  # a model of several attributes: which one's label
    other: str = ""  # a duplicate's twin


@dataclass
class AuditResult:
    """What an audit found (``suspects``, in the CSV's order) and how (per attribute, the
    confident-learning figures)."""

    pool: Pool
    issues: dict[str, LabelIssues]  # per single-valued attribute ("label" for one-attribute data)
    suspects: list[Suspect]
    duplicate_pairs: int
    outliers: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    def noise_table(self) -> list[tuple[str, str, int, float, int]]:
        """(attribute, class, photos, estimated share of wrong labels, flagged) per class."""
        rows = []
        for name, found in self.issues.items():
            a = 0 if self.pool.schema is None else self.pool.schema.attribute(name)
            values = self.pool.classes if self.pool.schema is None else self.pool.schema.attributes[a].values
            labels = labels_of(self.pool, a)[0]
            for j, value in enumerate(values):
                rows.append((name, value, int((labels == j).sum()), float(found.noise_share[j]),
                             int((found.issues & (labels == j)).sum())))
        return rows


def labels_of(pool: Pool, a: int) -> tuple[np.ndarray, np.ndarray]:
    """Attribute ``a``'s label per photo of the pool (over the labelled ones) and which photos those are."""
    if pool.schema is None:
        return pool.labels, np.arange(len(pool.labels))
    col = pool.schema.column(pool.labels, a)
    keep = np.flatnonzero(col != UNLABELLED)
    return col[keep], keep
