"""Cross-fitted calibration: every photo of a small set both teaches the final model and
calibrates it (``--calibration crossfit``, the default under ``config.SMALL_SET`` photos).

Carving a validation and a test split out of 50 photos a class leaves 35 to learn from and sets
the unknown-item threshold (the 5th percentile of validation scores) on 5 photos a class.
Cross-fitting instead trains ``CROSSFIT_FOLDS`` fold models, each on the other folds' photos
and exactly as the final model is trained (no validation split: the last epoch is kept), and
keeps every photo's answer from the fold model that did not learn it: the temperature and the
threshold are fitted on all of those out-of-sample answers, and their accuracy is the run's
estimate of accuracy on new photos; the final model then learns from every photo. There is no
held-out test split of the set any more: ``evaluate`` says so.

``resolve`` decides what ``auto`` means for a run; ``assign_folds`` makes stratified folds
(identical photos together; ``fashionclf audit`` uses it too); ``fold_data`` is a fold's
training view; ``CrossFit`` is what the run folder keeps of the answers (``crossfit.npz``),
read by the final evaluation. ``fashionclf.training.fit`` runs the folds.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fashionclf.data.fashion_mnist import Dataset, ImageSet
from fashionclf.errors import UsageError
from fashionclf.training.config import CROSSFIT_FOLDS, SMALL_SET, TrainConfig

FILE = "crossfit.npz"
SPLIT = "out-of-sample"  # the name the final evaluation gives the fold models' answers


def resolve(config: TrainConfig, plain: bool) -> TrainConfig:
    """``config`` with ``calibration`` decided: ``auto`` is ``crossfit`` for photo data under
    ``SMALL_SET`` labelled photos without splits of their own, trained ``plain``ly (one
    process, evaluated at its end: not a tuner's trial, nor a run to resume), else ``split``."""
    from fashionclf.data.sources import count_photos, is_fashion_mnist

    if config.calibration == "split":
        return config
    photos = not is_fashion_mnist(config.data)
    if config.calibration == "crossfit":
        if not photos:
            raise UsageError("--calibration crossfit is for photo data (--data DIR|CSV); Fashion-MNIST has a "
                             "test set of its own and 6,000 validation images")
        if not plain:
            raise UsageError("--calibration crossfit trains several models in one run: not in a tuning trial, "
                             "nor under torchrun; leave it out (auto) or pass --calibration split")
        return config
    use = False
    if photos and plain:
        count, has_splits = count_photos(config.data, config.classes)
        use = count < SMALL_SET and not has_splits
    return dataclasses.replace(config, calibration="crossfit" if use else "split")


def assign_folds(strata: np.ndarray, groups: list[str], folds: int, seed: int) -> np.ndarray:
    """Each item's fold: stratified by ``strata`` (a class index each), items of one group
    (identical photos) in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    if len(strata) < 2 * folds:
        raise UsageError(f"{folds} folds need at least {2 * folds} photos; the data has {len(strata)}")
    fold = np.zeros(len(strata), np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer photos than folds: some folds lack it, as they must
        warnings.filterwarnings("ignore", message="The least populated class")
        for k, (_, held) in enumerate(splitter.split(np.zeros(len(strata)), strata, groups)):
            fold[held] = k
    return fold


def folds_of(dataset: Dataset, seed: int) -> np.ndarray:
    """The fold of every photo of ``dataset.train`` (all of a cross-fitted run's photos)."""
    labels = dataset.train.labels
    strata = labels if dataset.schema is None else dataset.schema.category(labels)
    return assign_folds(strata, dataset.hashes["train"], CROSSFIT_FOLDS, seed)


def fold_data(dataset: Dataset, held: np.ndarray) -> Dataset:
    """A fold model's data: the photos not ``held`` out to learn from, no validation split (it
    is trained as the final model is), the held-out ones as its test split."""
    images, labels = dataset.train.images, dataset.train.labels
    hashes = dataset.hashes["train"]
    return dataclasses.replace(
        dataset, train=ImageSet(images[~held], labels[~held]), test=ImageSet(images[held], labels[held]),
        val=ImageSet(images[:0], labels[:0]),
        hashes={"train": [h for h, h_out in zip(hashes, held) if not h_out], "val": [],
                "test": [h for h, h_out in zip(hashes, held) if h_out]})


def fold_config(config: TrainConfig, out: Path, k: int, epochs: int | None) -> TrainConfig:
    """Fold ``k``'s settings: the run's, in ``out/folds/fold-K``; ``epochs`` as the first fold
    planned them when a time budget is spent over the folds and the final model."""
    budget = config.budget_seconds
    fold = dataclasses.replace(config, out=str(out / "folds" / f"fold-{k + 1}"), calibration="split")
    if budget is None:
        return fold
    if epochs is None:  # the first fold plans for its share: the final model learns from 1/(K-1) more photos
        return dataclasses.replace(fold, time_budget=f"{budget / (CROSSFIT_FOLDS + 1.25):.1f}s")
    return dataclasses.replace(fold, time_budget=None, epochs=epochs)


@dataclass
class CrossFit:
    """Each photo's answer from the fold model that did not learn from it, in the order of the
    run's training photos (``Dataset.train``)."""

    logits: np.ndarray  # (N, outputs)
    labels: np.ndarray  # (N,) or (N, width): the photos' labels
    fold: np.ndarray  # (N,) which fold held each photo out
    seconds: list[float]  # each fold's wall time
    epochs: int  # of the main phase, in every fold and the final model

    def save(self, path: Path) -> None:
        np.savez_compressed(path, logits=self.logits, labels=self.labels, fold=self.fold,
                            seconds=np.array(self.seconds), epochs=np.array(self.epochs))

    @classmethod
    def load(cls, path: Path) -> "CrossFit":
        if not path.is_file():
            raise UsageError(f"{path} is missing: this run's fold models did not finish; start the run again in a "
                             "new --out")
        with np.load(path) as z:
            return cls(z["logits"], z["labels"], z["fold"], z["seconds"].tolist(), int(z["epochs"]))

    def summary(self) -> dict:
        """metrics.json's ``crossfit`` entry (its accuracy is added by the final evaluation)."""
        return {"folds": int(self.fold.max()) + 1, "photos": len(self.fold), "epochs": self.epochs,
                "fold_seconds": [round(s, 1) for s in self.seconds]}


def every_photo(config: TrainConfig, log: Callable[[str], None]) -> Dataset:
    """Every labelled photo of ``config.data``, converted for the run's model, in the train split."""
    from fashionclf.data.sources import as_list, load_every_photo
    from fashionclf.training.run import planned_contract

    return load_every_photo(as_list(config.data), config.classes, log, planned_contract(config)[1])


def held_out_logits(model_path: Path, images: np.ndarray) -> np.ndarray:
    """A fold model's answers (logits) for the photos it did not learn from."""
    import torch

    from fashionclf.inference.checkpoint import load_checkpoint
    from fashionclf.models.contract import predict_logits

    ckpt = load_checkpoint(model_path)
    return predict_logits(ckpt.build_model(), torch.from_numpy(images), ckpt.contract).numpy()


def fold_log(log: Callable[[str], None]) -> Callable[[str], None]:
    """A fold run's log: its warnings only (the fold's own line says the rest)."""
    def log_warnings(message: str) -> None:
        if message.startswith("warning"):
            log(f"  {message}")
    return log_warnings
