"""Training: ``train_one_epoch``, then ``fit`` which runs the epochs, keeps the best model by
validation accuracy, writes the run directory and evaluates the best model on the test set.

What ``--seed`` guarantees: the seed fixes the train/val split, the initial weights and the
order of every batch. The same seed, data, settings, thread count, device and torch version
give the same weights and figures, epoch for epoch; ``--resume`` restores every random state,
so an interrupted run continued with ``--resume`` ends with the same figures as one that was
never interrupted. Different machines or torch versions may differ in the last digits.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import __version__
from .checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_atomic
from .data import class_counts, load_dataset, make_splits
from .errors import UsageError
from .evaluate import evaluate, overfitting_check, write_evaluation, write_json
from .models import count_parameters, create_model, get_model_entry
from .transforms import GREY_28, augment, parse_augment, preprocess


@dataclass
class TrainConfig:
    """Every training setting, with its default and why."""

    model: str = "one-block-cnn"  # the retail-tagging reference: 694k parameters, ~1 min/epoch budget on 2 cores
    classes: str | None = None  # None: all ten classes; else names/aliases/indices, e.g. "tshirt,sneaker,bag"
    epochs: int = 10  # the reference programs' budget; the best epoch by val accuracy is kept
    batch_size: int = 32  # Keras' default, used by both reference programs
    lr: float = 1e-3  # Adam's usual default, as in the references
    optimizer: str = "adam"  # adam | adamw | sgd (SGD uses momentum 0.9, Nesterov)
    weight_decay: float = 0.0  # the references use none
    lr_schedule: str = "cosine"  # decays to 0 over the run: +0.8 pt test accuracy over constant (README); constant = the references
    augment: str = "none"  # training batches only: none, or a list of flip, shift
    seed: int = 0  # fixes split, initial weights and batch order (see module docstring)
    val_fraction: float = 0.1  # as reference 2; carved from train, stratified; test is never used to select
    data_dir: str | None = None  # None: search the usual places (see fashionclf.data)
    verify: bool = True  # check the SHA-256 of the decompressed IDX files
    threads: int | None = None  # None: all cores; fix it for bit-reproducible CPU runs across machines
    device: str = "auto"  # auto picks CUDA when available, else CPU
    out: str = "runs/default"  # run directory


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    raise UsageError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Learning rate for 1-based ``epoch``."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / config.epochs))
    return config.lr


def validate_config(config: TrainConfig) -> None:
    get_model_entry(config.model)  # raises on an unknown name, listing valid ones
    if config.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if config.lr_schedule not in SCHEDULES:
        raise UsageError(f"unknown --lr-schedule {config.lr_schedule!r}; valid: {', '.join(SCHEDULES)}")
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    parse_augment(config.augment)
    if not config.lr > 0:
        raise UsageError(f"--lr must be positive, got {config.lr}")


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                    preprocessing: dict, device: torch.device, augmentations: list[str] = (),
                    desc: str = "train") -> tuple[float, float]:
    """One pass over ``images`` (uint8, kept whole in memory) in a seeded random order.

    Batches are sliced from the in-memory tensor rather than drawn through a DataLoader:
    the whole training set is 47 MB of uint8, and per-sample ``__getitem__`` calls plus
    collation would cost more than the small models' forward pass on 2 cores.
    Returns (mean loss, accuracy) over the epoch, as measured during training.
    """
    model.train()
    order = torch.randperm(len(images), generator=generator)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, disable=None)
    for step, start in enumerate(bar):
        idx = order[start : start + batch_size]
        batch = images[idx].to(device, non_blocking=True)
        if augmentations:
            batch = augment(batch, augmentations, generator)
        x = preprocess(batch, preprocessing)
        y = labels[idx].to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        if step % 50 == 0:
            seen = min(start + batch_size, len(images))
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    return total_loss.item() / len(images), correct.item() / len(images)


HISTORY_FIELDS = ["epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def write_history(history: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})


def fit(config: TrainConfig, resume: str | os.PathLike | None = None, log=print) -> dict:
    """Train ``config.model`` and write the run directory ``config.out``; return metrics.

    With ``resume``, the run in that directory continues from its ``last.pt`` (its saved
    config is used, except ``epochs``, which may be raised to train longer).
    """
    state = None
    if resume is not None:
        state = load_checkpoint(Path(resume) / "last.pt")
        saved = TrainConfig(**{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__})
        config = dataclasses.replace(saved, epochs=max(config.epochs, saved.epochs), out=str(resume))
    validate_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    dataset = load_dataset(config.data_dir, config.classes, verify=config.verify)
    data = make_splits(dataset, config.val_fraction, config.seed)
    num_classes = len(dataset.classes)
    entry = get_model_entry(config.model)
    preprocessing = dict(GREY_28, image_size=entry.input_size)
    model_kwargs = {"in_chans": preprocessing["channels"]}

    torch.manual_seed(config.seed)
    model = create_model(config.model, num_classes=num_classes, **model_kwargs).to(device)
    optimizer = make_optimizer(config, model.parameters())
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    best = {"val_acc": -1.0, "epoch": 0}
    start_epoch = 1
    config_dict = dataclasses.asdict(config)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, best, start_epoch = list(state["history"]), dict(state["best"]), state["epoch"] + 1
        log(f"resuming {out} at epoch {start_epoch} of {config.epochs}")
    write_json(config_dict, out / "config.json")

    def checkpoint(**extra) -> dict:
        return make_checkpoint(model, config.model, model_kwargs, dataset.classes, dataset.class_indices,
                               preprocessing, config_dict, **extra)

    log(
        f"{config.model}: {count_parameters(model):,} parameters, {num_classes} classes, "
        f"{len(data.train_y)} train / {len(data.val_y)} val / {len(data.test_y)} test images, "
        f"device {device}, {torch.get_num_threads()} threads"
    )
    images_dev = {k: getattr(data, k).to(device) for k in ("train_x", "train_y")}
    for epoch in range(start_epoch, config.epochs + 1):
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, optimizer, images_dev["train_x"], images_dev["train_y"], config.batch_size, generator,
            preprocessing, device, parse_augment(config.augment), desc=f"epoch {epoch}/{config.epochs}",
        )
        val = evaluate(model, data.val_x, data.val_y, dataset.classes, preprocessing, "val", device)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "phase": "train", "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val.loss, "val_acc": val.accuracy, "lr": lr, "seconds": seconds}
        history.append(row)
        write_history(history, out / "history.csv")
        # Best by val accuracy; without a validation split the latest epoch is kept.
        improved = len(data.val_y) == 0 or val.accuracy > best["val_acc"]
        if improved:
            best = {"val_acc": val.accuracy if len(data.val_y) else float("nan"), "epoch": epoch}
            save_atomic(checkpoint(epoch=epoch), out / "model.pt")
        save_atomic(
            checkpoint(epoch=epoch, optimizer=optimizer.state_dict(), generator=generator.get_state(),
                       torch_rng=torch.get_rng_state(), history=history, best=best),
            out / "last.pt",
        )
        log(
            f"epoch {epoch:>3}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
            f"val loss {val.loss:.4f} acc {val.accuracy:.4f}  lr {lr:.2e}  {seconds:.1f}s"
            + ("  *best" if improved else "")
        )

    best_ckpt = load_checkpoint(out / "model.pt")
    model = model_from_checkpoint(best_ckpt).to(device)
    results = {
        split: evaluate(model, x, y, dataset.classes, preprocessing, split, device)
        for split, x, y in (("train", data.train_x, data.train_y), ("val", data.val_x, data.val_y),
                            ("test", data.test_x, data.test_y))
    }
    accuracies = {split: r.accuracy for split, r in results.items()}
    test = results["test"]
    metrics = {
        "model": config.model,
        "parameters": count_parameters(model),
        "classes": dataset.classes,
        "train_accuracy": accuracies["train"],
        "val_accuracy": accuracies["val"],
        "test_accuracy": accuracies["test"],
        "train_loss": results["train"].loss,
        "val_loss": results["val"].loss,
        "test_loss": test.loss,
        "best_epoch": best["epoch"],
        "epochs": config.epochs,
        "per_class": test.per_class(),
        "confusion_matrix": test.confusion_matrix().tolist(),
        "overfitting": overfitting_check(accuracies),
        # Wall time of the training loop including per-epoch validation; no data loading, no test.
        "train_seconds": sum(h["seconds"] for h in history),
        "median_epoch_seconds": statistics.median(h["seconds"] for h in history),
        "seed": config.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "data": {"source": str(dataset.source), "verification": dataset.verification,
                 "train_counts": class_counts(data.train_y.numpy(), num_classes),
                 "val_counts": class_counts(data.val_y.numpy(), num_classes),
                 "test_counts": class_counts(data.test_y.numpy(), num_classes)},
        "versions": {"fashionclf": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
    }
    save_atomic(dict(best_ckpt, metrics=metrics), out / "model.pt")
    write_json(metrics, out / "metrics.json")
    info = {"model": config.model, "parameters": metrics["parameters"], "classes": ", ".join(dataset.classes),
            **{k: v for k, v in config_dict.items() if k not in ("model", "classes")},
            "best_epoch": best["epoch"], "train_seconds": round(metrics["train_seconds"], 1),
            "data": f"{dataset.source} ({dataset.verification})"}
    write_evaluation(test, dataset.test.images, out, accuracies, info, history)
    log(f"test accuracy {test.accuracy:.4f} (loss {test.loss:.4f}), best epoch {best['epoch']}; "
        f"report: {out / 'report.html'}")
    return metrics
