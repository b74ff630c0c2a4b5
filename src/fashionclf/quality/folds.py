"""Out-of-sample answers for every photo of a set: K folds, each held out while a model learns
from the others (``fashionclf.training.fit`` on the same photos split otherwise), so that no
photo is judged by a model that saw its label.

``pool_of`` gathers the photos once (converted for the model's input; identical photos share
a group and a fold); ``out_of_sample`` trains the K models and keeps, per photo, the logits,
the unknown-item score and whether it falls below its fold model's threshold; ``embed`` puts
every photo in one model's feature space (near-duplicates).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fashionclf.data.attributes import Schema
from fashionclf.data.fashion_mnist import Dataset, ImageSet
from fashionclf.evaluation.ood import energy_score
from fashionclf.inference.checkpoint import load_checkpoint
from fashionclf.models import head_of
from fashionclf.models.contract import InputContract, predict_logits
from fashionclf.training import crossfit
from fashionclf.training.config import TrainConfig


@dataclass
class Pool:
    """Every labelled photo an audit judges, converted for the model's input."""

    names: list[str]  # file paths; "train[i]" for Fashion-MNIST's own images
    images: np.ndarray
    labels: np.ndarray  # (N,), or (N, width) for several attributes (``schema``)
    groups: list[str]  # identical photos (same SHA-256) share a group, so they share a fold
    classes: list[str]
    schema: Schema | None
    source: str
    verification: str  # the data's (``Dataset.verification``): Fashion-MNIST's checksum, or photos'
    class_indices: list[int]  # Fashion-MNIST's indices of ``classes`` (0..k-1 for photos)

    @property
    def categories(self) -> np.ndarray:
        """Each photo's (first attribute's) class index; ``UNLABELLED`` where it has none."""
        return self.labels if self.schema is None else self.schema.category(self.labels)


def pool_of(config: TrainConfig, contract: InputContract, log: Callable[[str], None]) -> Pool:
    """The photos of ``config.data`` (every split: an audit judges them all), or
    Fashion-MNIST's training set when no ``--data`` is given."""
    from fashionclf.data.sources import PHOTO_VERIFICATION, as_list, gather_photos, is_fashion_mnist, kind_of, load_data

    if is_fashion_mnist(config.data):
        ds = load_data(config.data, config.classes, config.verify, log=log, contract=contract)
        names = [f"train[{i}]" for i in range(len(ds.train.labels))]
        return Pool(names, ds.train.images, ds.train.labels, names, ds.classes, None, str(ds.source),
                    ds.verification, list(ds.class_indices))
    paths = as_list(config.data)
    photos = gather_photos(paths, [kind_of(p) for p in paths], config.classes, contract)
    log(f"photos: {len(photos.entries):,} in {len(photos.classes)} classes from {', '.join(paths)}")
    return Pool([str(e.path) for e in photos.entries], photos.images, photos.labels, photos.hashes, photos.classes,
                None if photos.schema.single else photos.schema, "; ".join(paths), PHOTO_VERIFICATION,
                list(range(len(photos.classes))))


def assign_folds(pool: Pool, folds: int, seed: int) -> np.ndarray:
    """Each photo's fold, stratified by its (first attribute's) class, identical photos together."""
    return crossfit.assign_folds(pool.categories, pool.groups, folds, seed)


@dataclass
class OutOfSample:
    """Each photo's answers from the model that did not learn from it."""

    logits: np.ndarray  # (N, outputs)
    temperatures: np.ndarray  # (N, attributes) each head's calibration temperature in the photo's fold model
    scores: np.ndarray  # (N,) the unknown-item score (first attribute's head, its fold's temperature)
    below_threshold: np.ndarray  # (N,) bool: "unknown" by its fold model's threshold
    fold: np.ndarray  # (N,) which fold held it out
    models: list[Path]  # each fold's model.pt
    seconds: list[float]  # each fold's wall time


def out_of_sample(pool: Pool, config: TrainConfig, folds: int, out: Path, log: Callable[[str], None]) -> OutOfSample:
    """Train one model per fold (``config``, written to ``out/fold-K``) on the other folds'
    photos and answer for the held-out ones; a time estimate after the first fold."""
    from fashionclf.training.fit import fit

    fold = assign_folds(pool, folds, config.seed)
    strata = pool.categories
    logits, scores, below = [None] * len(pool.names), np.zeros(len(pool.names)), np.zeros(len(pool.names), bool)
    heads = 1 if pool.schema is None else len(pool.schema.attributes)
    temperatures = np.ones((len(pool.names), heads))
    models, seconds = [], []
    log(f"audit: {folds} folds, each a training run on about {len(pool.names) * (folds - 1) // folds:,} of the "
        f"{len(pool.names):,} photos; the first fold's time gives an estimate of the rest")
    for k in range(folds):
        held = fold == k
        start = time.perf_counter()
        learn = np.flatnonzero(~held)
        val = learn[carve_val(strata[learn], config.val_fraction, config.seed)]
        train = np.setdiff1d(learn, val)
        view = Dataset(ImageSet(pool.images[train], pool.labels[train]), ImageSet(pool.images[held], pool.labels[held]),
                       list(pool.classes), pool.class_indices, pool.source, pool.verification,
                       val=ImageSet(pool.images[val], pool.labels[val]), schema=pool.schema)
        run_dir = out / f"fold-{k + 1}"
        fit(dataclasses.replace(config, out=str(run_dir)), log=_only_results(log, k, folds), data=view)
        ckpt = load_checkpoint(run_dir / "model.pt")
        z = predict_logits(ckpt.build_model(), torch.from_numpy(pool.images[held]), ckpt.contract).numpy()
        first = z if pool.schema is None else z[:, pool.schema.logit_slices[0]]
        s = energy_score(first, ckpt.temperature)
        for i, row in zip(np.flatnonzero(held), z):
            logits[i] = row
        scores[held] = s
        temperatures[held] = [ckpt.temperature] + ([] if ckpt.attributes is None else
                                                   [a.temperature for a in ckpt.attributes.attributes[1:]])
        if ckpt.unknown is not None:
            below[held] = s < ckpt.unknown["threshold"]
        models.append(run_dir / "model.pt")
        seconds.append(time.perf_counter() - start)
        left = statistics.fmean(seconds) * (folds - k - 1)
        log(f"audit: fold {k + 1}/{folds} done in {seconds[-1]:.0f} s" + (f"; about {left:.0f} s left" if left else ""))
    return OutOfSample(np.stack(logits), temperatures, scores, below, fold, models, seconds)


def carve_val(strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a validation share of a fold's learning photos, stratified where every class
    has two photos or more (a shop's rare class may not)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(strata))
    if fraction <= 0 or len(index) < 2:
        return index[:0]
    counts = np.bincount(strata[strata >= 0]) if (strata >= 0).any() else np.zeros(1)
    stratify = strata if counts[counts > 0].min() >= 2 and (strata >= 0).all() else None
    try:
        return np.sort(train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)[1])
    except ValueError:  # fewer photos than classes in the share: not stratified
        return np.sort(train_test_split(index, test_size=fraction, random_state=seed)[1])


def _only_results(log: Callable[[str], None], k: int, folds: int) -> Callable[[str], None]:
    """A fold run's log, down to its result lines, each saying which fold it is."""
    def fold_log(message: str) -> None:
        if message.startswith("test accuracy"):
            log(f"  fold {k + 1}/{folds}: held-out {message.split(';')[0]}")
    return fold_log


@torch.no_grad()
def embed(model_path: Path, images: np.ndarray) -> np.ndarray:
    """The features every photo gives the head of one model, centred on their mean and
    L2-normalised: one space in which near-duplicates are near, whichever fold held them out.
    (Uncentred, post-ReLU features of one class all point the same way: there, distinct
    photos of a small synthetic shop scored 0.995 cosine similarity, a planted copy 0.999;
    centred, 0.98 and 0.996.)"""
    ckpt = load_checkpoint(model_path)
    model = ckpt.build_model()
    features: list[torch.Tensor] = []
    hook = head_of(model).register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0].flatten(1).float()))
    try:
        predict_logits(model, torch.from_numpy(images), ckpt.contract.replace(tta="none"))
    finally:
        hook.remove()
    f = torch.cat(features) if features else torch.empty(0, 0)
    return torch.nn.functional.normalize(f - f.mean(0), dim=1).numpy()
