"""The results of a run's model, one sequence for both of their moments: training's final
evaluation (``finish_run``: the best epoch on train, val and test, calibration and the unknown
threshold, metrics.json, plots, report.html) and ``fashionclf evaluate`` later
(``evaluate_checkpoint``: any split of the run's data, or of other data, scored again).
The numbers themselves are computed by ``fashionclf.evaluation.metrics``."""

from __future__ import annotations

import collections
import dataclasses
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from fashionclf._version import __version__
from fashionclf.data.attributes import Schema
from fashionclf.data.fashion_mnist import CLASSES, Dataset, Splits, class_counts, load_dataset
from fashionclf.data.sources import PHOTO_VERIFICATION, first_labels
from fashionclf.device import cpu_info
from fashionclf.evaluation.attributes import AttributeResults, best_thresholds, results_of, write_attribute_figures
from fashionclf.evaluation.metrics import EvalResult, evaluate, overfitting_check, write_evaluation
from fashionclf.evaluation.ood import (
    calibrate,
    energy_score,
    far_ood_images,
    fit_temperature,
    ood_report,
    reliability,
    softmax,
)
from fashionclf.evaluation.report import ReportParts, attribute_sections
from fashionclf.fileio import write_json
from fashionclf.inference.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fashionclf.models import count_parameters
from fashionclf.models.contract import InputContract, predict_logits
from fashionclf.training import crossfit
from fashionclf.training.crossfit import CrossFit
from fashionclf.training.run import Run

MISTAKES_SHOWN = 16  # mistakes drawn with the model's heatmap in report.html
# The training split's accuracy (eval mode), which only the overfitting check reads, from a fixed
# sample of 10,000 images: +-0.2 pt, and 44,000 fewer images to score at the end of a Fashion-MNIST
# run (about 30 s of a 10-minute budget on 2 AVX2 cores, spent on training instead).
TRAIN_SCORED = 10_000


def sampled_train(data: Splits) -> Splits:
    """``data`` with its training split cut to a fixed sample of ``TRAIN_SCORED`` images (the same
    for every run and for ``fashionclf evaluate --with-train``): for scoring, never for training."""
    if len(data.train_y) <= TRAIN_SCORED:
        return data
    keep = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))[:TRAIN_SCORED].sort().values
    return dataclasses.replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep])


def score_splits(model: nn.Module, data, classes: list[str], contract: InputContract, splits, device,
                 schema: Schema | None = None) -> dict:
    """``{split: EvalResult}`` of ``model`` on each of ``splits`` of ``data`` (``Splits``): the one
    scoring step of training's final evaluation and of ``fashionclf evaluate``. A model of
    several attributes (``schema``) gets ``AttributeResults`` instead."""
    if schema is None:
        return {split: evaluate(model, *data.of(split), classes, contract, split, device) for split in splits}
    return {split: results_of(predict_logits(model, data.of(split)[0], contract, device), data.of(split)[1],
                              schema, split, thresholds_of(schema)) for split in splits}


def thresholds_of(schema: Schema) -> dict[str, np.ndarray]:
    return {a.name: np.array(a.thresholds) for a in schema.attributes if a.multi and a.thresholds}


def primary(result: EvalResult | AttributeResults) -> EvalResult:
    """The result that run-level figures come from: the first attribute's (its category)."""
    return result if isinstance(result, EvalResult) else result.first


def calibrate_heads(best: Checkpoint, results: dict[str, AttributeResults]) -> Checkpoint:
    """On validation: each multi-label value's probability cut (best F1), applied to every
    split's results, and a temperature per single-valued head after the first (whose
    temperature is the unknown score's, ``calibrate_run``); both kept in the checkpoint."""
    val = results["val"]
    labelled = [a for a in best.attributes.attributes if len(val.of(a.name).y_true)]
    cuts = {a.name: best_thresholds(val.of(a.name).y_true, val.of(a.name).probs) for a in labelled if a.multi}
    temperatures = {a.name: fit_temperature(val.of(a.name).logits, val.of(a.name).y_true)
                    for a in labelled if not a.multi and a.name != best.attributes.first.name}
    for r in results.values():
        for name, cut in cuts.items():
            r.of(name).thresholds = cut
    return best.replace(attributes=best.attributes.calibrated({k: v.tolist() for k, v in cuts.items()}, temperatures))


def finish_run(run: Run) -> dict:
    """Evaluate the best model on train (in eval mode), val and test (a cross-fitted run: on
    train, and the fold models' out-of-sample answers in place of val and test); calibrate;
    write metrics, plots, report."""
    config, data, dataset = run.config, run.data, run.dataset
    best = load_checkpoint(run.out / "model.pt")
    model = best.build_model().to(run.device)
    fits = CrossFit.load(run.out / crossfit.FILE) if config.calibration == "crossfit" else None
    every = score_splits(model, sampled_train(data), dataset.classes, best.contract,
                         ("train",) if fits else ("train", "val", "test"), run.device, best.attributes)
    if fits is not None:
        every["val"] = every["test"] = run.score(torch.from_numpy(fits.logits), torch.from_numpy(fits.labels),
                                                 crossfit.SPLIT)
    if best.attributes is not None:
        best = calibrate_heads(best, every)
    results = {split: primary(r) for split, r in every.items()}
    accuracies = {split: r.accuracy for split, r in results.items()}
    if fits is not None:
        accuracies = {"train": accuracies["train"], crossfit.SPLIT: accuracies["test"]}
    overfit = overfitting_check(accuracies)
    unknown = calibrate_run(run, model, best.contract, results)
    metrics = run_metrics(run, model, results, overfit)
    if fits is not None:
        metrics.update(crossfit_metrics(fits, results["test"]))
    if best.attributes is not None:
        metrics["attributes"] = attribute_metrics(every, best.attributes)
        log_attributes(metrics["attributes"], run.log)
    metrics["unknown"] = unknown
    metrics["run_seconds"] = time.perf_counter() - run.started  # this process: data, training, evaluation
    if run.budget is not None:
        metrics["time_budget"] = run.budget
    save_checkpoint(best.replace(metrics=metrics, unknown=unknown), run.out / "model.pt")
    write_json(metrics, run.out / "metrics.json")
    info = {"model": config.model, "parameters": metrics["parameters"], "classes": ", ".join(dataset.classes),
            **{k: v for k, v in dataclasses.asdict(config).items() if k not in ("model", "classes")},
            "best_epoch": run.best["epoch"], "train_seconds": round(metrics["train_seconds"], 1),
            "data": f"{dataset.source} ({dataset.verification})"}
    test = results["test"]
    test_images, sections = (dataset.train if fits else dataset.test).images, ""
    if best.attributes is not None:
        sections = attribute_sections(every["test"].summary(), write_attribute_figures(every["test"], test_images,
                                                                                       run.out))
        test_images = test_images[every["test"].masks[0]]
    write_evaluation(test, test_images, run.out, accuracies, info,
                     ReportParts(run.history, dataset.problems, unknown, sections,
                                 None if fits else mistake_heatmaps(model, best, test, test_images)))
    run.log(result_line(run, results, accuracies, overfit, fits))
    elapsed = time.perf_counter() - run.started
    run.log(f"run took {elapsed:.0f} s" + (f" of its {run.budget['budget_seconds']:.0f} s budget"
                                           if run.budget is not None else ""))
    return metrics


def mistake_heatmaps(model: nn.Module, ckpt: Checkpoint, result: EvalResult, images: np.ndarray,
                     limit: int = MISTAKES_SHOWN) -> np.ndarray:
    """Grad-CAM overlays of ``result``'s most confident mistakes (the report draws them beside
    the mistakes themselves), each for the class the model wrongly chose."""
    from fashionclf.models.explain import grad_cam, overlay

    picks = result.mistakes(limit)
    if not len(picks):
        return np.zeros((0, 1, 1, 3), np.uint8)
    outputs = slice(None) if ckpt.attributes is None else ckpt.attributes.logit_slices[0]
    heat, _ = grad_cam(model.cpu(), images[picks], ckpt.contract, result.y_pred[picks], outputs)
    return np.stack([overlay(image, h, scale=2) for image, h in zip(images[picks], heat)])


def result_line(run: Run, results: dict[str, EvalResult], accuracies: dict[str, float], overfit: dict,
                fits: CrossFit | None) -> str:
    test = results["test"]
    hint = (f"; warning: {overfit['hint']}" if overfit["flag"] else "") + f"; report: {run.out / 'report.html'}"
    if fits is not None:
        return (f"out-of-sample accuracy {test.accuracy:.4f} (loss {test.loss:.4f}): the answers of {fits.summary()['folds']} "
                f"fold models for the {len(test.y_true)} photos each did not learn from, the estimate of accuracy on "
                f"new photos (no test split is held out: the model learnt from every photo); train "
                f"{accuracies['train']:.4f}" + hint)
    return (f"test accuracy {test.accuracy:.4f} (loss {test.loss:.4f}), best epoch {run.best['epoch']}; "
            f"train {accuracies['train']:.4f} / val {accuracies['val']:.4f} / test {test.accuracy:.4f}" + hint)


def crossfit_metrics(fits: CrossFit, answers: EvalResult) -> dict:
    """metrics.json of a cross-fitted run: no val or test split of its own (null), the fold
    models' out-of-sample answers instead (``per_class`` and ``confusion_matrix`` are theirs)."""
    return {"val_accuracy": None, "val_loss": None, "test_accuracy": None, "test_loss": None,
            "crossfit": {**fits.summary(), "accuracy": answers.accuracy, "loss": answers.loss}}


def calibrate_run(run: Run, model: nn.Module, contract: InputContract, results: dict[str, EvalResult]) -> dict | None:
    """Fit the temperature and the unknown threshold on the validation split (``fashionclf.evaluation.ood``)
    and measure them: ECE, and AUROC and the flagged share for images that are not garments
    (far) and, for a Fashion-MNIST class subset, the held-out classes' test images (near)."""
    val, test = results["val"], results["test"]
    if len(val.y_true) == 0:
        run.log("no validation split, so no calibration and no unknown threshold (--val-fraction above 0 gives both)")
        return None
    unknown = calibrate(val.logits, val.y_true)
    unknown["fitted_on"] = ("the out-of-sample answers of every photo (cross-fitted)" if val.split == crossfit.SPLIT
                            else "the validation split")
    t = unknown["temperature"]
    unknown["reliability"] = {"before": reliability(softmax(val.logits), val.y_true),
                              "after": reliability(softmax(val.logits, t), val.y_true)}

    first = slice(None) if run.dataset.schema is None else run.dataset.schema.logit_slices[0]

    def scores(images: np.ndarray) -> np.ndarray:  # the first attribute's head says "unknown"
        return energy_score(predict_logits(model, torch.from_numpy(images), contract, run.device)[:, first].numpy(), t)

    far_images = far_ood_images(run.config.seed, contract)
    sets = {f"far: {name}": scores(images) for name, images in far_images.items()}
    near = held_out_classes(run.dataset)
    if near is not None:
        sets["near: held-out Fashion-MNIST classes"] = scores(near)
    unknown["ood"] = ood_report(unknown, energy_score(test.logits, t), sets)
    far = [v for k, v in unknown["ood"].items() if k.startswith("far")]
    run.log(f"calibration: temperature {t:.3f}, validation ECE {unknown['val_ece_before']:.3f} -> "
            f"{unknown['val_ece_after']:.3f}; unknown below score {unknown['threshold']:.3f}: "
            f"{unknown['ood']['in_distribution_flagged']:.1%} of {'test images' if test.split == 'test' else 'photos'}, "
            f"{statistics.fmean(v['flagged'] for v in far):.1%} of non-garment images "
            f"(AUROC {statistics.fmean(v['auroc'] for v in far):.3f})")
    return unknown


def held_out_classes(dataset: Dataset) -> np.ndarray | None:
    """Fashion-MNIST's test images of the classes a subset run left out (near out-of-distribution)."""
    if dataset.verification == PHOTO_VERIFICATION or len(dataset.class_indices) == len(CLASSES):
        return None
    full = load_dataset(dataset.source, None, verify=False).test
    return full.images[~np.isin(full.labels, dataset.class_indices)]


def run_metrics(run: Run, model: nn.Module, results: dict[str, EvalResult], overfit: dict) -> dict:
    """metrics.json: accuracy and loss per split, per-class figures on test, timing, data, versions."""
    config, data, k = run.config, run.data, len(run.dataset.classes)
    test = results["test"]
    return {
        "model": config.model,
        "parameters": count_parameters(model),
        "weights": config.weights,
        "image_size": config.image_size,
        "classes": run.dataset.classes,
        **{f"{split}_accuracy": r.accuracy for split, r in results.items()},
        **{f"{split}_loss": r.loss for split, r in results.items()},
        "train_scored_images": len(results["train"].y_true),  # a fixed sample (``sampled_train``)
        "best_epoch": run.best["epoch"],
        "total_epochs": run.total_epochs,  # head phase + main phase (config.json's "epochs" is the main phase)
        "phases": dict(collections.Counter(h["phase"] for h in run.history)),  # epochs per phase, in order
        "per_class": test.per_class,
        "confusion_matrix": test.confusion.tolist(),
        "overfitting": overfit,
        # Wall time of the training loop including per-epoch validation (and, in phase 1, the
        # one-off feature extraction); no data loading, no final evaluation.
        "train_seconds": sum(h["seconds"] for h in run.history),
        "median_epoch_seconds": statistics.median(h["seconds"] for h in run.history),
        "seed": config.seed,
        "device": str(run.device),
        "world_size": run.world.size,  # processes that trained it (torchrun), and their backend
        "backend": run.world.backend,
        "cpu": cpu_info()["label"],  # the figures above depend on it: the same run is 2-3x slower on some CPUs
        "threads": torch.get_num_threads(),
        "data": {"source": str(run.dataset.source), "verification": run.dataset.verification,
                 **{f"{split}_counts": class_counts(first_labels(run.dataset, data.of(split)[1].numpy()), k)
                    for split in ("train", "val", "test")},
                 **({"problems": run.dataset.problems} if run.dataset.problems else {})},
        "versions": {"fashionclf": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
    }


def attribute_metrics(every: dict[str, AttributeResults], schema: Schema) -> dict:
    """metrics.json's section per attribute: its test figures (per value, confusion matrix or
    average precision) and its score on each split (accuracy, or mAP for a multi-label one);
    a head's temperature (the first head's is ``unknown``'s) or a multi-label one's thresholds."""
    out = {}
    for attr, (name, test) in zip(schema.attributes, every["test"].summary().items()):
        key = "mAP" if test["kind"] == "multi-label" else "accuracy"
        calibration = {"thresholds": list(attr.thresholds)} if attr.multi else {"temperature": attr.temperature}
        out[name] = {**{f"{split}_{key}": r.of(name).accuracy for split, r in every.items()},
                     **(calibration if attr is not schema.first else {}), "test": test}
    return out


def log_attributes(attributes: dict, log: Callable[[str], None]) -> None:
    log("per attribute (test): " + "; ".join(
        f"{name} {'mAP' if a['test']['kind'] == 'multi-label' else 'accuracy'} "
        f"{a['test'].get('accuracy', a['test'].get('mAP')):.4f} on {a['test']['samples']} photos"
        for name, a in attributes.items()))


def dataset_of_checkpoint(ckpt: Checkpoint, data: list[str] | str | None = None, verify: bool = True,
                          log: Callable[[str], None] | None = print):
    """The data a checkpoint was trained on (or ``data``), converted for its input and
    labelled in its class order. Fashion-MNIST is split as the run split it (seed, fraction);
    photos are all scored: the ones the model trained or validated on (by SHA-256, as its
    checkpoint records them) form the train and val splits, every other photo the test split,
    whatever folder or manifest column holds it."""
    from fashionclf.data.sources import as_list, is_fashion_mnist, load_data, load_photos_to_score, relabel
    from fashionclf.training.config import TrainConfig

    config = TrainConfig.from_dict(ckpt.config)
    sources = as_list(data) or config.data
    if is_fashion_mnist(sources):
        dataset = load_data(sources, ckpt.class_indices, verify, config.split, log=log, contract=ckpt.contract)
        return relabel(dataset, ckpt.classes, ckpt.attributes)
    seen = ckpt.seen_photos()
    if seen is None:
        seen = {"train": set(), "val": set()}
        if config.data and not _is_idx_folder(config.data) and log:
            log("warning: this model.pt does not record which photos it trained on (it was written by an earlier "
                "fashionclf): every photo is scored as test, those it trained on included; retrain to record them")
    return relabel(load_photos_to_score(sources, seen, ckpt.contract, log), ckpt.classes, ckpt.attributes)


def _is_idx_folder(paths: list[str]) -> bool:
    """Whether a run's --data was a Fashion-MNIST folder (False when it cannot be told any more)."""
    from fashionclf.data.fashion_mnist import holds_fashion_mnist

    return len(paths) == 1 and Path(paths[0]).is_dir() and holds_fashion_mnist(Path(paths[0]))


@dataclass
class Evaluation:
    """A model scored on one split (``evaluate_checkpoint``): the predictions (``result``), the
    images they were made on, and ``summary``, what metrics.json holds (accuracy side by side,
    per-class figures, what was left out, the files written)."""

    result: EvalResult
    images: np.ndarray  # uint8, as the model's input contract takes them
    summary: dict

    @property
    def accuracy(self) -> float:
        return self.result.accuracy

    def plot_confusion_matrix(self, normalize: bool = True, ax=None):
        from fashionclf.evaluation.plots import plot_confusion_matrix

        return plot_confusion_matrix(self.result, normalize, ax=ax)

    def plot_mistakes(self, limit: int = 24, ax=None):
        from fashionclf.evaluation.plots import plot_mistakes

        return plot_mistakes(self.result, self.images, limit, ax=ax)


def evaluate_checkpoint(checkpoint: str | os.PathLike, split: str = "test", out: str | os.PathLike | None = None,
                        data: list[str] | str | None = None, verify: bool = True, device: str = "auto",
                        tta: str | None = None, score_train: bool = False) -> dict:
    """Evaluate a saved model on ``split``, with val and test accuracy side by side, and write
    the evaluation artefacts to ``out`` (default: ``<checkpoint dir>/eval-<split>``).

    The validation split is rebuilt from the checkpoint's own seed and fraction, so it is the
    very split the model was selected on. The training split (54,000 images) is scored only
    when asked (``score_train``) or when it is ``split``; otherwise the train accuracy that
    training recorded is shown, if the test-time augmentation is unchanged. ``tta`` ("none"
    or "flip") overrides the test-time augmentation the checkpoint was trained with."""
    from fashionclf.data.fashion_mnist import make_splits
    from fashionclf.device import resolve_device
    from fashionclf.errors import UsageError
    from fashionclf.models.contract import TTA_CHOICES
    from fashionclf.training.config import SPLITS, TrainConfig

    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if tta not in (None, *TTA_CHOICES):
        raise UsageError(f"unknown --tta {tta!r}; valid: {', '.join(TTA_CHOICES)}")
    ckpt = load_checkpoint(checkpoint)
    contract = ckpt.contract.replace(tta=tta or ckpt.contract.tta)
    config = TrainConfig.from_dict(ckpt.config)
    dev = resolve_device(device)
    model = ckpt.build_model().to(dev)
    dataset = dataset_of_checkpoint(ckpt, data, verify)
    data = make_splits(dataset, config.val_fraction, config.seed)
    left_out = photos_left_out(dataset, split, ckpt.metrics if config.calibration == "crossfit" else None)
    scored = [s for s in SPLITS if s != "train" or score_train or split == "train"]
    every = score_splits(model, data if split == "train" else sampled_train(data), ckpt.classes, contract, scored,
                         dev, ckpt.attributes)
    results = {name: primary(r) for name, r in every.items()}
    accuracies = {name: results[name].accuracy for name in ("train", "val", "test")
                  if name in results and len(results[name].y_true)}
    recorded = (ckpt.metrics or {}).get("train_accuracy")
    train_note = ""
    if "train" not in accuracies and recorded is not None and contract == ckpt.contract:
        accuracies = {"train": recorded, **accuracies}
        train_note = "train accuracy as recorded at the end of training (--with-train scores it again)"
    overfit = overfitting_check(accuracies)
    result = results[split]
    run_dir = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    out = Path(out) if out else run_dir / f"eval-{split}"
    info = {"checkpoint": str(checkpoint), "model": ckpt.model, "classes": ", ".join(ckpt.classes),
            **{k: v for k, v in ckpt.config.items() if k not in ("model", "classes", "out")},
            "tta": contract.tta, "data": f"{dataset.source} ({dataset.verification})",
            **({"note": train_note} if train_note else {})}
    images, sections = data.of(split)[0].numpy(), ""
    if ckpt.attributes is not None:  # the first attribute's figures, on the photos labelled for it
        out.mkdir(parents=True, exist_ok=True)
        sections = attribute_sections(every[split].summary(), write_attribute_figures(every[split], images, out))
        images = images[every[split].masks[0]]
    paths = write_evaluation(result, images, out, accuracies, info, ReportParts(
        problems=dataset.problems, sections=sections, heatmaps=mistake_heatmaps(model, ckpt, result, images)))
    summary = dict(result.summary(), model=ckpt.model, classes=ckpt.classes,
                   **({"attributes": every[split].summary()} if ckpt.attributes is not None else {}),
                   accuracies=accuracies, overfitting=overfit, files=paths,
                   **({"left_out": left_out} if left_out else {}),
                   **({"data_problems": dataset.problems} if dataset.problems else {}))
    write_json(summary, out / "metrics.json")
    summary["files"]["metrics_json"] = str(out / "metrics.json")
    return Evaluation(result, images, summary)


def photos_left_out(dataset, split: str, crossfit_metrics: dict | None = None) -> dict | None:
    """Photo data scored by a model (``dataset_of_checkpoint``): how many photos were left out
    of the test split because the model trained or validated on them; a split with no photo
    is a usage error that says why (``crossfit_metrics``: the metrics of a model that learnt
    from every photo of its set, whose estimate the error quotes)."""
    from fashionclf.errors import UsageError

    if not dataset.hashes:
        return None  # Fashion-MNIST: its own splits
    counts = {s: len(getattr(dataset, s).labels) for s in ("train", "val", "test")}
    if not counts[split] and crossfit_metrics is not None and split != "train":
        estimate = (crossfit_metrics or {}).get("crossfit", {}).get("accuracy")
        raise UsageError(
            f"--split {split}: nothing to score: this model learnt from every photo of {dataset.source} "
            f"({counts['train']}; --calibration crossfit), so no split of it is held out"
            + (f"; its fold models' out-of-sample accuracy, the estimate for new photos, is {estimate:.4f} "
               "(metrics.json: crossfit)" if estimate is not None else "")
            + "; pass --data with photos it has not seen to score it")
    if not counts[split]:
        why = (f"every photo of {dataset.source} is one the model trained on ({counts['train']}) or validated on "
               f"({counts['val']}); score it on photos it has not seen" if split == "test" else
               f"none of the photos of {dataset.source} is one the model was "
               f"{'trained' if split == 'train' else 'validated'} on (--split test scores the others)")
        raise UsageError(f"--split {split}: nothing to score: {why}")
    return {"trained_on": counts["train"], "validated_on": counts["val"]} if split == "test" else None
