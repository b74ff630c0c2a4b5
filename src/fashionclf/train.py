"""Training: ``train_one_epoch``, then ``fit`` which runs the epochs, keeps the best model by
validation accuracy, writes the run directory and evaluates the best model on the test set.

What ``--seed`` guarantees: the seed fixes the train/val split, the initial weights and the
order of every batch. The same seed, data, settings, thread count, device and torch version
give the same weights and figures, epoch for epoch; ``--resume`` restores every random state,
so an interrupted run continued with ``--resume`` ends with the same figures as one that was
never interrupted. Different machines or torch versions may differ in the last digits.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import functools
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import __version__
from .checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_atomic
from .data import class_counts, load_dataset, make_splits
from .errors import UsageError
from .evaluate import EVAL_BATCH, TTA_CHOICES, evaluate, overfitting_check, result_from_logits, write_evaluation, write_json
from .models import count_parameters, create_model, get_model_entry, list_models
from .transforms import augment, parse_augment, preprocess


@dataclass
class TrainConfig:
    """Every training setting. ``None`` means "the default for this model": ``resolve_config``
    fills it from the model's registry entry, then from ``DEFAULTS``; the run's config.json
    records the resolved values."""

    model: str = "one-block-cnn"  # the retail-tagging reference; `fashionclf models` lists all; see RECIPES
    classes: str | None = None  # None: all ten classes; else names/aliases/indices, e.g. "tshirt,sneaker,bag"
    weights: str | None = None  # imagenet | none | PATH of a state-dict file (models that have weights)
    image_size: int | None = None  # input side after resizing the 28x28 source (models that accept sizes)
    epochs: int | None = None  # epochs of the main phase (the fine-tuning phase after a head phase)
    batch_size: int | None = None
    lr: float | None = None  # peak learning rate of the main phase
    optimizer: str | None = None  # adam | adamw | sgd (SGD uses momentum 0.9, Nesterov)
    weight_decay: float | None = None
    lr_schedule: str | None = None  # constant | cosine (per epoch, to 0) | onecycle (per step: warm-up, linear to 0)
    augment: str | None = None  # training batches only: none, or a list of flip, shift, rotate, erase
    head_epochs: int | None = None  # phase 1: train only the new head on the frozen base (0: no phase 1)
    head_lr: float | None = None  # learning rate of phase 1
    unfreeze: str | None = None  # main phase trains "all" of the base, or only its last N blocks
    bn_policy: str | None = None  # main phase: "frozen" keeps BatchNorm in inference mode, "train" updates it
    label_smoothing: float | None = None  # cross-entropy against (1 - s) one-hot + s uniform targets
    ema: float | None = None  # decay of an exponential moving average of the weights per step; 0: off
    tta: str | None = None  # test-time augmentation stored in the model's input contract: none | flip
    precision: str | None = None  # training arithmetic: fp32 | bf16 | auto (bf16 where the hardware has it)
    cache_features: bool = True  # phase 1 without augmentation: compute the frozen base's features once
    seed: int = 0  # fixes split, initial weights and batch order (see module docstring)
    val_fraction: float = 0.1  # as reference 2; carved from train, stratified; test is never used to select
    data_dir: str | None = None  # None: search the usual places (see fashionclf.data)
    verify: bool = True  # check the SHA-256 of the decompressed IDX files
    threads: int | None = None  # None: all cores; fix it for bit-reproducible CPU runs across machines
    device: str = "auto"  # auto picks CUDA when available, else CPU
    out: str = "runs/default"  # run directory


# Defaults for every model, unless its registry entry says otherwise; any flag overrides both.
DEFAULTS = {
    "weights": "none",  # a model with pretrained weights defaults to its first named weights instead
    "epochs": 10,  # the reference programs' budget; the best epoch by val accuracy is kept
    "batch_size": 32,  # Keras' default, used by both reference programs
    "lr": 1e-3,  # Adam's usual default, as in the references
    "optimizer": "adam",  # as the references
    "weight_decay": 0.0,  # the references use none
    "lr_schedule": "cosine",  # +0.8 pt median test accuracy over constant for one-block-cnn (README)
    "augment": "none",  # flips narrow the train/test gap of the CNNs but do not raise test accuracy (README)
    "head_epochs": 0,  # one phase: every parameter trains from the first epoch
    "head_lr": 1e-3,
    "unfreeze": "all",
    "label_smoothing": 0.0,  # the references use none
    "ema": 0.0,  # off: the reference CNNs end on a decayed learning rate anyway
    "tta": "none",  # flip averaging doubles inference cost; a model opts in
    "bn_policy": "train",  # BatchNorm trained from scratch must learn its statistics; pretrained bases say "frozen"
    "precision": "fp32",  # bit-for-bit repeatable everywhere; the recipes say "auto"
}

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
ONECYCLE_WARMUP = 0.25  # share of a phase spent rising linearly from 0 to the peak learning rate

# ``--recipe NAME`` is ``--model RECIPES[NAME]``: the model's registry entry carries the recipe.
RECIPES = {"fast": "fast-cnn", "strong": "strong-cnn"}
BN_POLICIES = ("frozen", "train")
PRECISIONS = ("fp32", "bf16", "auto")


@functools.lru_cache(maxsize=None)  # asked at config resolution and again at training start
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: CUDA that supports it, or a CPU with
    AMX or AVX512-BF16 (measured on one: a training step in 0.5-0.7x the fp32 time; without
    them bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(config: "TrainConfig", device: torch.device) -> torch.dtype | None:
    """The dtype training's forward pass runs in under autocast; None for plain fp32."""
    if config.precision == "bf16" or (config.precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill every ``None`` setting: the flag if given, else the model's default, else ``DEFAULTS``."""
    entry = get_model_entry(config.model)  # raises on an unknown name, listing valid ones
    weights = config.weights or (entry.weights[0] if entry.weights else DEFAULTS["weights"])
    defaults = {**DEFAULTS, "image_size": entry.input_size, **entry.train_defaults(weights), "weights": weights}
    given = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
    resolved = TrainConfig(**{**defaults, **given})
    if isinstance(resolved.epochs, dict):  # a recipe sized in time: epochs per training precision
        fast_arithmetic = autocast_dtype(resolved, resolve_device(resolved.device)) is not None
        resolved.epochs = resolved.epochs["bf16" if fast_arithmetic else "fp32"]
    return resolved


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay applies to weight matrices and kernels only: decaying biases and
    BatchNorm scales only fights the normalisation (the usual exemption, as in timm)."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    params = [{"params": weights}, {"params": others, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    raise UsageError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


def phase_of(config: TrainConfig, epoch: int) -> tuple[str, int, int]:
    """(phase name, epoch within the phase, epochs in the phase) for 1-based run ``epoch``.
    Phases: "head" (phase 1, frozen base), then "finetune"; "train" when there is no phase 1."""
    if epoch <= config.head_epochs:
        return "head", epoch, config.head_epochs
    return ("finetune" if config.head_epochs else "train"), epoch - config.head_epochs, config.epochs


def learning_rate(config: TrainConfig, epoch: int, fraction: float = 0.0) -> float:
    """Learning rate ``fraction`` of the way through 1-based run ``epoch``; the schedule
    restarts with each phase. ``cosine`` changes once per epoch, ``onecycle`` every step."""
    phase, i, n = phase_of(config, epoch)
    peak = config.head_lr if phase == "head" else config.lr
    if config.lr_schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * (i - 1) / n))
    if config.lr_schedule == "onecycle":
        t = (i - 1 + fraction) / n
        return peak * (t / ONECYCLE_WARMUP if t < ONECYCLE_WARMUP else (1 - t) / (1 - ONECYCLE_WARMUP))
    return peak


def validate_config(config: TrainConfig) -> None:
    """Check a resolved config; every problem is a UsageError that names the flag and the fix."""
    entry = get_model_entry(config.model)
    if config.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if config.lr_schedule not in SCHEDULES:
        raise UsageError(f"unknown --lr-schedule {config.lr_schedule!r}; valid: {', '.join(SCHEDULES)}")
    if not 0 <= config.label_smoothing < 1 or not 0 <= config.ema < 1:
        raise UsageError(f"--label-smoothing and --ema take values in [0, 1), got {config.label_smoothing} "
                         f"and {config.ema}")
    if config.tta not in TTA_CHOICES:
        raise UsageError(f"unknown --tta {config.tta!r}; valid: {', '.join(TTA_CHOICES)}")
    if config.precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {config.precision!r}; valid: {', '.join(PRECISIONS)}")
    if config.bn_policy not in BN_POLICIES:
        raise UsageError(f"unknown --bn-policy {config.bn_policy!r}; valid: {', '.join(BN_POLICIES)}")
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.head_epochs < 0:
        raise UsageError(f"--head-epochs must be 0 or more, got {config.head_epochs}")
    parse_augment(config.augment)
    if not (config.lr > 0 and config.head_lr > 0):
        raise UsageError(f"--lr and --head-lr must be positive, got {config.lr} and {config.head_lr}")
    if config.unfreeze != "all" and not (str(config.unfreeze).isdigit() and int(config.unfreeze) > 0):
        raise UsageError(f"--unfreeze takes 'all' or a number of blocks (1 or more), got {config.unfreeze!r}")
    if config.weights != "none" and not entry.weights:
        with_weights = [m for m in list_models() if get_model_entry(m).weights]
        raise UsageError(f"model {config.model} has no pretrained weights; --weights applies to: "
                         f"{', '.join(with_weights)}")
    size = config.image_size
    if entry.min_image_size is None and size != entry.input_size:
        raise UsageError(f"model {config.model} takes {entry.input_size}x{entry.input_size} input only, "
                         f"got --image-size {size}")
    if entry.min_image_size is not None and size < entry.min_image_size:
        raise UsageError(f"--image-size {size} is too small for {config.model}: at least {entry.min_image_size}")


def configure_phase(model: nn.Module, phase: str, config: TrainConfig) -> list[nn.Module]:
    """Set which parameters train in ``phase``; return the modules that stay in inference mode
    while training (their BatchNorm running statistics are left untouched)."""
    if phase == "head" or (config.unfreeze != "all" and hasattr(model, "blocks")):
        if not hasattr(model, "head"):
            raise UsageError(f"model {config.model} has no separate head; --head-epochs and --unfreeze N "
                             "apply to transfer models such as mobilenet_v2")
        model.requires_grad_(False)
        model.head.requires_grad_(True)
    else:
        model.requires_grad_(True)
    if phase == "head":
        return [model.base]
    frozen = []
    if config.unfreeze != "all" and hasattr(model, "blocks"):
        blocks = model.blocks
        n = min(int(config.unfreeze), len(blocks))
        for block in blocks[len(blocks) - n:]:
            block.requires_grad_(True)
        frozen = blocks[: len(blocks) - n]
    if config.bn_policy == "frozen":
        frozen += [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return frozen


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and BatchNorm buffers, updated after
    every step; its decay ramps up as (1 + n) / (10 + n) so the random start is soon forgotten."""

    def ema_update(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1 + float(num_averaged)) / (10 + float(num_averaged)))
        return averaged * d + current * (1 - d)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=ema_update, use_buffers=True)


def make_prepare(preprocessing: dict, augmentations: list[str], generator: torch.Generator
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training batches: uint8 source -> augmentations (if any) -> the shared ``preprocess``,
    the very function that evaluate and predict use."""

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return preprocess(augment(batch, augmentations, generator) if augmentations else batch, preprocessing)

    return prepare


@torch.no_grad()
def extract_features(base: nn.Module, images: torch.Tensor, preprocessing: dict, device: torch.device,
                     desc: str) -> torch.Tensor:
    """The frozen base's output for every image, computed once (phase 1 without augmentation)."""
    base.eval()
    out = []
    for start in tqdm(range(0, len(images), EVAL_BATCH), desc=desc, unit="batch", leave=False, disable=None):
        out.append(base(preprocess(images[start : start + EVAL_BATCH].to(device), preprocessing)))
    return torch.cat(out) if out else torch.empty(0, 0, device=device)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                    labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                    prepare: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                    eval_modules: list[nn.Module] = (), desc: str = "train", label_smoothing: float = 0.0,
                    after_step: Callable[[], None] | None = None,
                    lr_at: Callable[[float], float] | None = None,
                    autocast: torch.dtype | None = None) -> tuple[float, float]:
    """One pass over ``inputs`` in a seeded random order; ``prepare`` turns a slice of
    ``inputs`` into the model's input (augment + preprocess for images, nothing for cached
    features); ``eval_modules`` stay in inference mode; ``after_step`` runs after every
    optimizer step (the weight average's update); ``lr_at(fraction of the epoch done)``, if
    given, sets the learning rate before every step; ``autocast`` (e.g. ``torch.bfloat16``)
    runs the forward pass in that precision, with fp32 weights and optimizer state.

    Batches are sliced from the in-memory tensor rather than drawn through a DataLoader:
    the whole training set is 47 MB of uint8, and per-sample ``__getitem__`` calls plus
    collation would cost more than the small models' forward pass on 2 cores.
    Returns (mean loss, accuracy) over the epoch, as measured during training.
    """
    model.train()
    for module in eval_modules:
        module.eval()
    order = torch.randperm(len(inputs), generator=generator)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch", leave=False, disable=None)
    for step, start in enumerate(bar):
        idx = order[start : start + batch_size]
        x = prepare(inputs[idx].to(device, non_blocking=True))
        y = labels[idx].to(device, non_blocking=True)
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(start / len(inputs))
        with torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        if step % 50 == 0:
            seen = min(start + batch_size, len(inputs))
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    return total_loss.item() / len(inputs), correct.item() / len(inputs)


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
        config = dataclasses.replace(saved, epochs=max(config.epochs or 0, saved.epochs), out=str(resume))
    config = resolve_config(config)
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
    preprocessing = dict(entry.preprocessing, image_size=config.image_size, tta=config.tta)
    model_kwargs = {"in_chans": preprocessing["channels"]}  # weights are not needed to rebuild the model

    torch.manual_seed(config.seed)
    weights = {"weights": config.weights} if entry.weights and state is None else {}
    model = create_model(config.model, num_classes=num_classes, **model_kwargs, **weights).to(device)
    optimizer = make_optimizer(config, model)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    best = {"val_acc": -1.0, "epoch": 0}
    start_epoch = 1
    total_epochs = config.head_epochs + config.epochs
    config_dict = dataclasses.asdict(config)
    ema = make_ema(model, config.ema) if config.ema else None
    evaluated = ema.module if ema is not None else model  # what is validated and kept as model.pt
    if state is not None:
        model.load_state_dict(state["state_dict"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, best, start_epoch = list(state["history"]), dict(state["best"]), state["epoch"] + 1
        log(f"resuming {out} at epoch {start_epoch} of {total_epochs}")
    write_json(config_dict, out / "config.json")

    def checkpoint(weights_of: nn.Module, **extra) -> dict:
        return make_checkpoint(weights_of, config.model, model_kwargs, dataset.classes, dataset.class_indices,
                               preprocessing, config_dict, **extra)

    autocast = autocast_dtype(config, device)
    log(
        f"{config.model}: {count_parameters(model):,} parameters, weights {config.weights}, "
        f"{config.image_size}x{config.image_size} input, {num_classes} classes, "
        f"{len(data.train_y)} train / {len(data.val_y)} val / {len(data.test_y)} test images, "
        f"device {device}, {torch.get_num_threads()} threads, training in "
        f"{'bf16' if autocast else 'fp32'}"
    )
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    augmentations = parse_augment(config.augment)
    prepare_images = make_prepare(preprocessing, augmentations, generator)

    after_step = (lambda: ema.update_parameters(model)) if ema is not None else None
    phase, eval_modules, features = None, [], None
    for epoch in range(start_epoch, total_epochs + 1):
        t0 = time.perf_counter()
        epoch_phase = phase_of(config, epoch)[0]
        if epoch_phase != phase:
            phase = epoch_phase
            eval_modules = configure_phase(model, phase, config)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log(f"phase {phase}: {trainable:,} trainable parameters")
            features = None
            if phase == "head" and config.cache_features and not augmentations:
                features = {"train": extract_features(model.base, train_x, preprocessing, device, "features train"),
                            "val": extract_features(model.base, data.val_x, preprocessing, device, "features val")}
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lr_at = (lambda f, e=epoch: learning_rate(config, e, f)) if config.lr_schedule == "onecycle" else None
        desc = f"epoch {epoch}/{total_epochs} {phase}"
        if features is not None:  # phase 1 on cached features: only the head runs
            train_loss, train_acc = train_one_epoch(
                model.head, optimizer, features["train"], train_y, config.batch_size, generator, lambda f: f,
                device, desc=desc, label_smoothing=config.label_smoothing, after_step=after_step, lr_at=lr_at,
                autocast=autocast)
            with torch.no_grad():
                logits = evaluated.head.eval()(features["val"])
                val = result_from_logits(logits.float().cpu(), data.val_y, dataset.classes, "val")
        else:
            train_loss, train_acc = train_one_epoch(
                model, optimizer, train_x, train_y, config.batch_size, generator, prepare_images, device,
                eval_modules, desc, config.label_smoothing, after_step, lr_at, autocast)
            val = evaluate(evaluated, data.val_x, data.val_y, dataset.classes, preprocessing, "val", device)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "phase": phase, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val.loss, "val_acc": val.accuracy, "lr": lr, "seconds": seconds}
        history.append(row)
        write_history(history, out / "history.csv")
        # Best by val accuracy; without a validation split the latest epoch is kept.
        improved = len(data.val_y) == 0 or val.accuracy > best["val_acc"]
        if improved:
            best = {"val_acc": val.accuracy if len(data.val_y) else float("nan"), "epoch": epoch}
            save_atomic(checkpoint(evaluated, epoch=epoch), out / "model.pt")
        save_atomic(
            checkpoint(model, epoch=epoch, optimizer=optimizer.state_dict(), generator=generator.get_state(),
                       torch_rng=torch.get_rng_state(), history=history, best=best,
                       **({"ema": ema.state_dict()} if ema is not None else {})),
            out / "last.pt",
        )
        log(
            f"epoch {epoch:>3}/{total_epochs} {phase:<8} train loss {train_loss:.4f} acc {train_acc:.4f}  "
            f"val loss {val.loss:.4f} acc {val.accuracy:.4f}  lr {lr:.2e}  {seconds:.1f}s"
            + ("  *best" if improved else "")
        )
    return finish_run(config, out, data, dataset, device, history, best, log)


def finish_run(config: TrainConfig, out: Path, data, dataset, device: torch.device, history: list[dict],
               best: dict, log) -> dict:
    """Evaluate the best model on train (in eval mode), val and test; write metrics, plots, report."""
    best_ckpt = load_checkpoint(out / "model.pt")
    model = model_from_checkpoint(best_ckpt).to(device)
    preprocessing = best_ckpt["preprocessing"]
    num_classes = len(dataset.classes)
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
        "weights": config.weights,
        "image_size": config.image_size,
        "classes": dataset.classes,
        "train_accuracy": accuracies["train"],
        "val_accuracy": accuracies["val"],
        "test_accuracy": accuracies["test"],
        "train_loss": results["train"].loss,
        "val_loss": results["val"].loss,
        "test_loss": test.loss,
        "best_epoch": best["epoch"],
        "epochs": config.head_epochs + config.epochs,
        "phases": dict(collections.Counter(h["phase"] for h in history)),  # epochs per phase, in order
        "per_class": test.per_class(),
        "confusion_matrix": test.confusion_matrix().tolist(),
        "overfitting": overfitting_check(accuracies),
        # Wall time of the training loop including per-epoch validation (and, in phase 1, the
        # one-off feature extraction); no data loading, no final evaluation.
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
    config_dict = dataclasses.asdict(config)
    info = {"model": config.model, "parameters": metrics["parameters"], "classes": ", ".join(dataset.classes),
            **{k: v for k, v in config_dict.items() if k not in ("model", "classes")},
            "best_epoch": best["epoch"], "train_seconds": round(metrics["train_seconds"], 1),
            "data": f"{dataset.source} ({dataset.verification})"}
    write_evaluation(test, dataset.test.images, out, accuracies, info, history)
    log(f"test accuracy {test.accuracy:.4f} (loss {test.loss:.4f}), best epoch {best['epoch']}; "
        f"train {accuracies['train']:.4f} / val {accuracies['val']:.4f} / test {test.accuracy:.4f}"
        + (f"; warning: {metrics['overfitting']['hint']}" if metrics["overfitting"]["flag"] else "")
        + f"; report: {out / 'report.html'}")
    return metrics
