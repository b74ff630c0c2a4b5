"""Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty
in Dataset Labels", JAIR 2021), written here from the paper: cleanlab, its authors' library,
is AGPL-3.0, which this project's licence cannot take. numpy only.

From out-of-sample probabilities ``p`` (N, K) and the given labels ``y``:

1. Per-class thresholds ``t_j``: the mean probability of class j over the photos labelled j
   (the class's average self-confidence).
2. The confident joint ``C`` (K, K): photo i counts in ``C[y_i, j]`` for the class j with the
   highest ``p_ij`` among those at or above their threshold (none: it counts nowhere).
3. Calibrated to the label counts and normalised, ``Q`` estimates the joint distribution of
   given and true labels; ``1 - Q[j, j] / Q[j].sum()`` is the share of class j's labels that
   are wrong.
4. Prune by noise rate (the paper's default): for every off-diagonal cell (i, j), the
   ``round(N * Q[i, j])`` photos labelled i with the largest margin ``p_j - p_i`` are issues.
   ``likelier`` narrows them to those whose confident class is another (the joint's
   off-diagonal, as the paper's "both" narrows by it) and that another label is that many
   times as likely as the given one: a model that confuses two classes by itself otherwise
   fills the list with photos labelled right (``fashionclf.quality.find.LIKELIER``).

Issues are ranked by self-confidence (``p[i, y_i]``, lowest first) or by normalised margin
(``p[i, y_i] - max_{k != y_i} p[i, k]``); ``score`` is 1 minus the one or half of one minus
the other, so higher is more suspect either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RANKINGS = ("self_confidence", "normalized_margin")


@dataclass
class LabelIssues:
    """What confident learning found in one set of labels."""

    issues: np.ndarray  # (N,) bool: the labels judged wrong
    score: np.ndarray  # (N,) higher = more suspect (``ranking``)
    suggested: np.ndarray  # (N,) the most likely other class
    thresholds: np.ndarray  # (K,) per-class self-confidence thresholds
    joint: np.ndarray  # (K, K) the calibrated, normalised joint Q of given (rows) and true labels
    ranking: str

    @property
    def noise_share(self) -> np.ndarray:
        """Per class, the estimated share of its labels that are wrong (``1 - Q[j, j] / Q[j].sum()``)."""
        rows = self.joint.sum(1)
        return np.divide(rows - np.diag(self.joint), rows, out=np.zeros(len(rows)), where=rows > 0)

    def ranked(self) -> np.ndarray:
        """Indices of the issues, most suspect first."""
        found = np.flatnonzero(self.issues)
        return found[np.argsort(-self.score[found], kind="stable")]


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    k = probs.shape[1]
    return np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)])


def confident_classes(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Each photo's confident class: the most likely of those at or above their threshold (-1: none)."""
    above = probs >= thresholds - 1e-6  # the threshold is a mean of these very numbers: keep its own ties
    return np.where(above.any(1), np.where(above, probs, -1.0).argmax(1), -1)


def confident_joint(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``C[given, confident]``: counts of photos by given label and by the class they confidently belong to."""
    k = probs.shape[1]
    confident = confident_classes(probs, thresholds)
    counted = confident >= 0
    joint = np.zeros((k, k), np.int64)
    np.add.at(joint, (labels[counted], confident[counted]), 1)
    return joint


def calibrate_joint(joint: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row rescaled to its class's label count, then the whole normalised to sum 1."""
    counts = np.bincount(labels, minlength=len(joint)).astype(np.float64)
    rows = joint.sum(1, keepdims=True).astype(np.float64)
    scaled = np.divide(joint, rows, out=np.zeros(joint.shape), where=rows > 0) * counts[:, None]
    # a class none of whose photos passed any threshold: assume its labels right
    empty = rows[:, 0] == 0
    scaled[empty, np.flatnonzero(empty)] = counts[empty]
    return scaled / max(scaled.sum(), 1e-12)


def find_label_issues(probs: np.ndarray, labels: np.ndarray, ranking: str = "self_confidence",
                      likelier: float | None = None) -> LabelIssues:
    """Confident learning on out-of-sample ``probs`` (N, K) for the given ``labels`` (N,);
    ``likelier``: keep only the issues that also lie off the confident joint's diagonal (their
    confident class is another) and whose most likely other label is at least that many times
    as likely as the given one."""
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; valid: {', '.join(RANKINGS)}")
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    n, k = probs.shape
    thresholds = per_class_thresholds(probs, labels)
    joint = calibrate_joint(confident_joint(probs, labels, thresholds), labels)
    issues = np.zeros(n, bool)
    for i in range(k):
        labelled_i = np.flatnonzero(labels == i)
        for j in range(k):
            count = int(round(n * joint[i, j]))
            if i == j or count == 0 or not len(labelled_i):
                continue
            margin = probs[labelled_i, j] - probs[labelled_i, i]
            issues[labelled_i[np.argsort(-margin, kind="stable")[:count]]] = True
    self_conf = probs[np.arange(n), labels]
    others = probs.copy()
    others[np.arange(n), labels] = -1.0
    suggested = others.argmax(1)
    if likelier is not None:
        confident = confident_classes(probs, thresholds)
        issues &= (confident >= 0) & (confident != labels) & (others.max(1) >= likelier * self_conf)
    margin = self_conf - others.max(1)
    score = 1.0 - self_conf if ranking == "self_confidence" else (1.0 - margin) / 2
    return LabelIssues(issues, score, suggested, thresholds, joint, ranking)
