"""``fashionclf audit``: the photos of a set whose label is probably wrong, the near-duplicates
and the outliers, from out-of-sample answers (``folds``) and confident learning
(``confident``); ``report`` writes what was found.

Kinds of suspect (the CSV's ``kind``):

* ``label``: confident learning says the given label is wrong, its confident class is
  another, and the held-out model finds another label at least ``LIKELIER`` times as likely; ``suggested`` is the most likely other value;
  ``score`` 1 - self-confidence (or the normalised margin's form).
* ``duplicate``: a photo and its nearest neighbour when they are far closer to each other
  than to any other photo (a ratio test, as in matching image features), in one fold model's
  features or in the model's input (``close_pairs``); one row per pair, ``other`` naming the
  first photo, ``suggested`` its label, ``score`` the closeness (1: identical;
  ``1 - DUPLICATE_RATIO`` at the cut).
* ``outlier``: below its fold model's unknown-item threshold and among the ``OUTLIER_SHARE``
  least typical photos of the set (the threshold alone flags 5% of good photos by design).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fashionclf.errors import UsageError
from fashionclf.evaluation.ood import softmax
from fashionclf.quality.confident import RANKINGS, LabelIssues, find_label_issues
from fashionclf.quality.folds import OutOfSample, Pool, embed, out_of_sample, pool_of
from fashionclf.quality.report import write_report, write_suspects
from fashionclf.quality.result import AuditResult, Suspect, labels_of
from fashionclf.training.config import TrainConfig
from fashionclf.training.run import planned_contract

# Near-duplicates: a photo and its nearest neighbour, when their cosine distance is under this
# share of the photo's distance to its second nearest (or the two are identical), in the
# model's features or in its input (``close_pairs``). Measured (benchmarks/audit.py shops: 600
# catalogue photos, 10 planted re-photographed copies each: cropped, resized, JPEG 70; and
# Fashion-MNIST's 60,000 training images): at 0.2, 10, 8 and 7 of the copies of three shops
# and no other pair, 89 pairs in Fashion-MNIST; at 0.3, one copy more and 1-2 other pairs, 213
# in Fashion-MNIST. The rule it replaced (under 0.2 of the set's median nearest-neighbour
# distance) found 7-10 copies but 44,441 pairs in Fashion-MNIST, whose similar plain items lie
# densely. Three or more near-copies of one item are flagged only when identical.
DUPLICATE_RATIO = 0.2
IDENTICAL = 1e-4  # cosine distance under which two photos are the same picture
MAX_DUPLICATE_ROWS = 1000  # the most similar pairs written; more are counted
OUTLIER_SHARE = 0.02  # outliers: at most this share of the set, the least typical first
# A label confident learning doubts (pruned by noise rate) is flagged when its confident class
# is another and the held-out model finds another label at least this many times as likely.
# Measured (benchmarks/audit.py, 610 catalogue photos, 8% of labels planted wrong, seed 0):
# pruning alone flagged 78 photos (recall 0.896, precision 0.551), counting the classes the
# model itself confuses (shirts, T-shirts, pullovers); with this rule 59 (0.896 / 0.729), with
# 20 instead of 10, 58 (0.896 / 0.741). A cut on the given label's probability (< 0.02: 0.854 /
# 0.872) missed every planted label of a weakly trained model, whose probabilities are softer.
LIKELIER = 10.0


@dataclass
class AuditSettings:
    """``fashionclf audit``'s own flags (the training settings travel in a ``TrainConfig``)."""

    output: str  # the CSV of suspects
    out: str = "runs/audit"  # the fold runs and report.html
    folds: int = 5
    rank: str = "self_confidence"  # or normalized_margin


def default_recipe(config: TrainConfig) -> TrainConfig:
    """The folds' training when no recipe is named: ``shop`` from an ``--init`` body, else ``fast``."""
    if config.recipe is not None:
        return config
    return dataclasses.replace(config, recipe="shop" if config.init else "fast")


def audit(config: TrainConfig, settings: AuditSettings, log: Callable[[str], None] = print) -> AuditResult:
    """Judge every labelled photo of ``config.data`` (Fashion-MNIST's training set without
    it): K-fold out-of-sample answers, confident learning per single-valued attribute,
    near-duplicates and outliers; write ``settings.output`` (the suspects, ranked) and
    ``settings.out/report.html``."""
    if settings.rank not in RANKINGS:
        raise UsageError(f"unknown --rank {settings.rank!r}; valid: {', '.join(RANKINGS)}")
    if settings.folds < 2:
        raise UsageError(f"--folds must be 2 or more, got {settings.folds}")
    output, out = Path(settings.output), Path(settings.out)
    if output.exists():
        raise UsageError(f"--output {output} exists; pass another file name (an audit never overwrites one)")
    if (out / "fold-1").exists():
        raise UsageError(f"--out {out} holds an earlier audit; pass another folder")
    started = time.perf_counter()
    config = default_recipe(config)
    resolved, contract = planned_contract(config)
    pool = pool_of(resolved, contract, log)
    oos = out_of_sample(pool, resolved, settings.folds, out, log)
    save_out_of_sample(out / "out_of_sample.npz", pool, oos)
    issues = label_issues(pool, oos, settings.rank)
    suspects = [s for name, found in issues.items() for s in label_rows(pool, found, name)]
    suspects.sort(key=lambda s: -s.score)
    duplicates, pairs = duplicate_rows(pool, embed(oos.models[0], pool.images))
    outliers = outlier_rows(pool, oos)
    result = AuditResult(pool, issues, suspects + duplicates + outliers, pairs, len(outliers),
                         time.perf_counter() - started)
    result.files["csv"] = str(write_suspects(result.suspects, output, multi=pool.schema is not None))
    result.files["report_html"] = str(write_report(result, out))
    return result


def calibrated(logits: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """Softmax of each photo's logits over its fold model's temperature."""
    return softmax(logits / temperatures[:, None])


def label_issues(pool: Pool, oos: OutOfSample, rank: str) -> dict[str, LabelIssues]:
    """Confident learning on each single-valued attribute's out-of-sample probabilities,
    calibrated per fold (a multi-label attribute has no single given label to doubt: left out)."""
    if pool.schema is None:
        return {"label": find_label_issues(calibrated(oos.logits, oos.temperatures[:, 0]), pool.labels, rank,
                                           LIKELIER)}
    out = {}
    for a, (attr, zs) in enumerate(zip(pool.schema.attributes, pool.schema.logit_slices)):
        if attr.multi:
            continue
        labels, keep = labels_of(pool, a)
        out[attr.name] = find_label_issues(calibrated(oos.logits[keep][:, zs], oos.temperatures[keep, a]), labels,
                                           rank, LIKELIER)
    return out


def save_out_of_sample(path: Path, pool: Pool, oos: OutOfSample) -> None:
    """Every photo's held-out answers, to rank or cut again without retraining: names,
    labels, logits, temperatures, fold, unknown-item scores."""
    np.savez_compressed(path, names=np.array(pool.names), labels=pool.labels, logits=oos.logits,
                        temperatures=oos.temperatures, fold=oos.fold, scores=oos.scores)


def label_rows(pool: Pool, found: LabelIssues, name: str) -> list[Suspect]:
    a = 0 if pool.schema is None else pool.schema.attribute(name)
    values = pool.classes if pool.schema is None else pool.schema.attributes[a].values
    labels, keep = labels_of(pool, a)
    attribute = "" if pool.schema is None else name
    return [Suspect(pool.names[keep[i]], values[labels[i]], values[found.suggested[i]], float(found.score[i]), "label",
                    attribute) for i in found.ranked()]


def close_pairs(features: np.ndarray, ratio: float = DUPLICATE_RATIO, chunk: int = 2048
                ) -> dict[tuple[int, int], float]:
    """Pairs (i < j) of L2-normalised ``features``, each a photo and its nearest neighbour,
    whose cosine distance is under ``ratio`` of the photo's distance to its second nearest (or
    under ``IDENTICAL``), with their closeness ``1 - distance / second``: a bar set by how
    alike the photo's surroundings are, which neither an absolute similarity (it depends on
    the model and the shop) nor the set's median distance (dense sets) gives."""
    from tqdm import tqdm

    pairs: dict[tuple[int, int], float] = {}
    for start in tqdm(range(0, len(features), chunk), desc="near-duplicates", unit="chunk", leave=False,
                      disable=None if len(features) > 4 * chunk else True):
        sims = features[start : start + chunk] @ features.T
        sims[np.arange(len(sims)), start + np.arange(len(sims))] = -2.0  # never a photo with itself
        if sims.shape[1] < 3:
            break
        near = np.argpartition(-sims, 2, axis=1)[:, :2]
        two = np.take_along_axis(sims, near, 1)
        order = np.argsort(-two, axis=1)
        near, distance = np.take_along_axis(near, order, 1), 1.0 - np.take_along_axis(two, order, 1)
        for r in np.flatnonzero((distance[:, 0] < ratio * distance[:, 1]) | (distance[:, 0] < IDENTICAL)):
            i, j = sorted((start + int(r), int(near[r, 0])))
            closeness = 1.0 - float(distance[r, 0]) / max(float(distance[r, 1]), 1e-12)
            pairs[(i, j)] = max(closeness, pairs.get((i, j), 0.0))
    return pairs


def centred(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(0)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def duplicate_rows(pool: Pool, features: np.ndarray) -> tuple[list[Suspect], int]:
    """Near-duplicate pairs, found in either of two spaces (``close_pairs``): one fold model's
    features, and the model's input itself (the converted photo), most alike first (at most
    ``MAX_DUPLICATE_ROWS`` rows; the number of pairs found is returned beside them)."""
    first = pool.categories
    found = close_pairs(features)
    for pair, closeness in close_pairs(centred(pool.images)).items():
        found[pair] = max(closeness, found.get(pair, 0.0))
    ranked = sorted(found.items(), key=lambda item: -item[1])

    def label(i: int) -> str:
        return pool.classes[first[i]] if first[i] >= 0 else ""

    rows = [Suspect(pool.names[j], label(j), label(i), s, "duplicate", other=pool.names[i])
            for (i, j), s in ranked[:MAX_DUPLICATE_ROWS]]
    return rows, len(ranked)


def outlier_rows(pool: Pool, oos: OutOfSample) -> list[Suspect]:
    """Photos below their fold model's unknown-item threshold, the least typical
    ``OUTLIER_SHARE`` of the set at most; ``score``: how far below the set's median score."""
    limit = int(np.ceil(OUTLIER_SHARE * len(pool.names)))
    order = [i for i in np.argsort(oos.scores, kind="stable") if oos.below_threshold[i]][:limit]
    first = pool.categories
    median = float(np.median(oos.scores))
    return [Suspect(pool.names[i], pool.classes[first[i]] if first[i] >= 0 else "", "", median - float(oos.scores[i]),
                    "outlier") for i in order]
