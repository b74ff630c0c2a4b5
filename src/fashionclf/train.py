"""Training. ``fit`` is the recipe and reads top to bottom: start (or restore) the run, then
per epoch: start the phase if it changes, ``train_one_epoch``, validate, keep the best; then
``finish_run`` evaluates the best model and writes the run directory.

What ``--seed`` guarantees: the seed fixes the train/val split, the initial weights, the
order of every batch and the augmentation draws. The same seed, data, settings, thread
count, device and torch version give the same weights and figures, epoch for epoch;
``--resume`` restores every random state, so an interrupted run continued with ``--resume``
ends with the same figures as one that was never interrupted. Different machines or torch
versions may differ in the last digits.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import csv
import dataclasses
import io
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import __version__, ddp, ood
from .checkpoint import (load_body, load_checkpoint, make_checkpoint, model_from_checkpoint, record_seen,
                         save_checkpoint)
from .config import (TrainConfig, config_warnings, parse_augment, parse_duration, parse_schedule_cut,
                     resolve_config)
from .contract import eval_batch, predict_logits, preprocess
from .data import CLASSES, Dataset, Splits, class_counts, load_dataset, make_splits
from .device import autocast_dtype, cpu_info, resolve_device
from .evaluate import EvalResult, evaluate, overfitting_check, result_from_logits, write_evaluation
from .fileio import write_bytes_atomic, write_json
from .errors import TrainingDiverged, UsageError
from .models import body_of, count_parameters, create_model, get_model_entry, head_of
from .rundir import claim
from .sources import PHOTO_VERIFICATION, is_fashion_mnist, load_data
from .transforms import augment

ONECYCLE_WARMUP = 0.25  # share of a phase spent rising linearly from 0 to the peak learning rate
HISTORY_FIELDS = ["epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


# ---------------------------------------------------------------- schedule and optimizer


def phase_of(config: TrainConfig, epoch: int) -> tuple[str, int, int]:
    """(phase name, epoch within the phase, epochs in the phase) for 1-based run ``epoch``.
    Phases: "head" (phase 1, frozen base), then "finetune"; "train" when there is no phase 1."""
    if epoch <= config.head_epochs:
        return "head", epoch, config.head_epochs
    return ("finetune" if config.head_epochs else "train"), epoch - config.head_epochs, config.epochs


def learning_rate(config: TrainConfig, epoch: int, fraction: float = 0.0,
                  cuts: list[tuple[int, int]] | None = None) -> float:
    """Learning rate ``fraction`` of the way through 1-based run ``epoch``; the schedule
    restarts with each phase. ``cosine`` changes once per epoch, ``onecycle`` every step."""
    phase, i, n = phase_of(config, epoch)
    peak = config.head_lr if phase == "head" else config.lr
    cuts = parse_schedule_cut(config.schedule_cut) if cuts is None else cuts
    if phase != "head" and cuts and config.lr_schedule != "constant":
        # A time budget shortened the run after epoch k: the planned schedule up to there, then
        # from the rate it had reached straight down to 0 at the new last epoch (no jump).
        (planned, k), earlier = cuts[-1], cuts[:-1]
        before = dataclasses.replace(config, epochs=planned)
        if i <= k:
            return learning_rate(before, epoch, fraction, earlier)
        return learning_rate(before, config.head_epochs + k + 1, 0.0, earlier) * (1 - (i - 1 + fraction - k) / (n - k))
    if config.lr_schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * (i - 1) / n))
    if config.lr_schedule == "onecycle":
        t = (i - 1 + fraction) / n
        return peak * (t / ONECYCLE_WARMUP if t < ONECYCLE_WARMUP else (1 - t) / (1 - ONECYCLE_WARMUP))
    return peak


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay applies to weight matrices and kernels only: decaying biases and
    BatchNorm scales only fights the normalisation (the usual exemption, as in timm)."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    params = [{"params": weights}, {"params": others, "weight_decay": 0.0}]
    # Adam's fused kernel: one pass over all parameters instead of a dozen small ops per tensor
    # (fast-cnn, 2 cores: AdamW's step 690 -> 250 µs). Not SGD's: it gains 0.2 ms of strong-cnn's
    # 41 ms step, and torch 2.14's fused SGD fails once a frozen body (no momentum yet) is unfrozen.
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in model.parameters()) else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)


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
    the very function that evaluate, predict, serve and the ONNX export use."""

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return preprocess(augment(batch, augmentations, generator) if augmentations else batch, preprocessing)

    return prepare


# ---------------------------------------------------------------- one epoch


@dataclass
class TrainStep:
    """What every optimizer step of a phase needs (``train_one_epoch``'s settings)."""

    model: nn.Module  # what trains: the network, or only its head on cached features
    optimizer: torch.optim.Optimizer
    prepare: Callable[[torch.Tensor], torch.Tensor]  # a slice of the inputs -> model input
    device: torch.device
    eval_modules: list[nn.Module] = field(default_factory=list)  # kept in inference mode
    label_smoothing: float = 0.0
    after_step: Callable[[], None] | None = None  # e.g. the weight average's update
    lr_at: Callable[[float], float] | None = None  # fraction of the epoch done -> learning rate
    autocast: torch.dtype | None = None  # e.g. torch.bfloat16: forward pass in that precision
    world: ddp.World = ddp.World()  # torchrun's ranks: each trains on its shard of every batch


def train_one_epoch(step: TrainStep, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    generator: torch.Generator, desc: str = "train") -> dict:
    """One pass over ``inputs`` in a seeded random order. Returns the epoch's mean loss and
    accuracy as measured during training, and its mean learning rate.

    Batches are sliced from the in-memory tensor rather than drawn through a DataLoader:
    the whole training set is 47 MB of uint8, and per-sample ``__getitem__`` calls plus
    collation would cost more than the small models' forward pass on 2 cores.
    """
    model, optimizer, device = step.model, step.optimizer, step.device
    model.train()
    for module in step.eval_modules:
        module.eval()
    order = torch.randperm(len(inputs), generator=generator)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    lrs = []
    bar = tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch", leave=False, disable=None)
    for i, start in enumerate(bar):
        idx = ddp.shard(order[start : start + batch_size], step.world)
        x = step.prepare(inputs[idx].to(device, non_blocking=True))
        y = labels[idx].to(device, non_blocking=True)
        if step.lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = step.lr_at(start / len(inputs))
        lrs.append(optimizer.param_groups[0]["lr"])
        with torch.autocast(device.type, dtype=step.autocast) if step.autocast else contextlib.nullcontext():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=step.label_smoothing)
        if not torch.isfinite(loss):
            seen = max(start, 1)
            last = f"mean loss so far {total_loss.item() / seen:.4f}" if start else "at the first step"
            raise TrainingDiverged(f"{desc}: the loss became {loss.item()} at step {i + 1} ({last}); the learning "
                                   f"rate is probably too high for this model: lower --lr (and --head-lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step.after_step is not None:
            step.after_step()
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        if i % 50 == 0:
            seen = min(start + batch_size, len(inputs))
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    ddp.all_sum(total_loss, correct)  # the ranks' shards together are the epoch
    n = max(len(inputs), 1)
    return {"loss": total_loss.item() / n, "acc": correct.item() / n, "lr": statistics.fmean(lrs) if lrs else 0.0}


# ---------------------------------------------------------------- the run and its phases


@dataclass
class Run:
    """A training run: what is fixed for it, and the state that last.pt saves and restores."""

    config: TrainConfig
    out: Path
    device: torch.device
    dataset: Dataset
    data: Splits
    preprocessing: dict
    model_kwargs: dict
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: torch.optim.swa_utils.AveragedModel | None
    generator: torch.Generator
    log: Callable[[str], None]
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    start_epoch: int = 1
    started: float = field(default_factory=time.perf_counter)  # this process's start of the run
    budget: dict | None = None  # how a --time-budget was turned into epochs (``plan_epochs``)
    epoch_ends: list[float] = field(default_factory=list)  # budgeted: training's start, then each epoch's end
    world: ddp.World = ddp.World()  # torchrun's ranks; rank 0 alone writes files

    @property
    def evaluated(self) -> nn.Module:
        """What is validated and kept as model.pt: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def total_epochs(self) -> int:
        return self.config.head_epochs + self.config.epochs

    def checkpoint(self, weights_of: nn.Module, **extra) -> dict:
        seen = {"photos_seen": record_seen(self.dataset.hashes)} if self.dataset.hashes else {}
        return make_checkpoint(weights_of, self.config.model, self.model_kwargs, self.dataset.classes,
                               self.dataset.class_indices, self.preprocessing, dataclasses.asdict(self.config),
                               **seen, **extra)


def start_run(config: TrainConfig, resume: str | os.PathLike | None, log: Callable[[str], None]) -> Run:
    """Resolve the settings, load the data, build the model, optimizer and weight average;
    with ``resume``, restore them and every random state from the run's last.pt (its saved
    settings are used, except ``epochs``, which may be raised to train longer)."""
    state = None
    if resume is not None:
        state = load_checkpoint(Path(resume) / "last.pt")
        saved = TrainConfig.from_dict(state["config"])
        config = dataclasses.replace(saved, epochs=max(config.epochs or 0, saved.epochs), out=str(resume))
    init = load_checkpoint(config.init) if config.init and state is None else None
    if init is not None:
        config = config_from_init(config, init)
    config = resolve_config(config)
    world, device = ddp.start(ddp.from_env(), resolve_device(config.device))
    if not world.main:
        log = _quiet
    ddp.check_batch(config.batch_size, world)
    if config.threads or world.local_size > 1:  # processes of one machine share its cores
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // world.local_size))
    entry = get_model_entry(config.model)
    preprocessing, model_kwargs = input_contract(config, state or init)
    dataset = load_data(config.data, config.classes, config.verify, config.val_fraction, config.test_fraction,
                        config.seed, log=log, preprocessing=preprocessing)
    torch.manual_seed(config.seed)
    weights = {"weights": config.weights} if entry.weights and state is None and init is None else {}
    model = create_model(config.model, num_classes=len(dataset.classes), **model_kwargs, **weights)
    if init is not None:
        log(f"--init {config.init}: {load_body(model, init)} tensors of the body kept from {init['model']['name']} "
            f"({len(init['classes'])} classes), a new head for {len(dataset.classes)} classes")
    model = model.to(device)
    run = Run(config, Path(config.out), device, dataset, make_splits(dataset, config.val_fraction, config.seed),
              preprocessing, model_kwargs, model, make_optimizer(config, model),
              make_ema(model, config.ema) if config.ema else None, torch.Generator().manual_seed(config.seed), log)
    run.world = world
    for warning in config_warnings(config):
        log(f"warning: {warning}")
    if config.stem_init == "whiten" and state is None:
        from .whitening import whiten_first_conv

        pairs = whiten_first_conv(run.model, run.data.train_x, preprocessing, config.model)
        log(f"--stem-init whiten: the first convolution starts as {pairs} whitened patch directions and their negatives")
    if state is not None:
        run.model.load_state_dict(state["state_dict"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        run.history, run.best, run.start_epoch = list(state["history"]), dict(state["best"]), state["epoch"] + 1
        run.budget = state.get("budget")
        log(f"resuming {run.out} at epoch {run.start_epoch} of {run.total_epochs}")
    if world.main:
        run.out.mkdir(parents=True, exist_ok=True)
        for stale in run.out.glob(".*.tmp"):  # left by a process killed mid-write (fileio.write_atomic's names)
            stale.unlink(missing_ok=True)
        write_config(run)
    data = run.data
    where = f"{device} ({cpu_info()['label']})" if device.type == "cpu" else str(device)
    log(f"{config.model}: {count_parameters(model):,} parameters, weights {config.weights}, "
        f"{config.image_size}x{config.image_size} input, {len(dataset.classes)} classes, "
        f"{len(data.train_y)} train / {len(data.val_y)} val / {len(data.test_y)} test images, device {where}, "
        f"{torch.get_num_threads()} threads, training in {'bf16' if autocast_dtype(config.precision, device) else 'fp32'}"
        + (f"; {world.size} processes ({world.backend}), global batch {config.batch_size}" if world.size > 1 else ""))
    return run


def _quiet(*_) -> None:
    """The log of ranks other than 0: one voice per run."""


def write_config(run: Run) -> None:
    """config.json: every setting used, and the number of processes that trained."""
    write_json({**dataclasses.asdict(run.config), "world_size": run.world.size, "backend": run.world.backend},
               run.out / "config.json")


def input_contract(config: TrainConfig, ckpt: dict | None) -> tuple[dict, dict]:
    """The run's preprocessing and model arguments: a checkpoint's (``--init``, or last.pt when
    resuming), else the model's defaults at ``config.image_size``; colour models learn from
    photos in colour at their size (``"source": "rgb"``)."""
    if ckpt is not None:
        return dict(ckpt["preprocessing"], tta=config.tta), dict(ckpt["model"]["kwargs"])
    preprocessing = dict(get_model_entry(config.model).preprocessing, image_size=config.image_size, tta=config.tta)
    if preprocessing["channels"] == 3 and not is_fashion_mnist(config.data):
        preprocessing["source"] = "rgb"
    return preprocessing, {"in_chans": preprocessing["channels"]}  # weights are not needed to rebuild the model


def config_from_init(config: TrainConfig, init: dict) -> TrainConfig:
    """``--init``: the model and input size are the checkpoint's; naming others is a usage error."""
    name, size = init["model"]["name"], init["preprocessing"]["image_size"]
    if config.model not in (None, name) or config.image_size not in (None, size):
        raise UsageError(f"--init {config.init} is a {name} at {size}x{size}; leave out --model/--image-size "
                         f"or give those ({config.model or name}, {config.image_size or size} given)")
    return dataclasses.replace(config, model=name, image_size=size, weights="none")


def configure_phase(model: nn.Module, phase: str, config: TrainConfig) -> list[nn.Module]:
    """Set which parameters train in ``phase``; return the modules that stay in inference mode
    while training (their BatchNorm running statistics are left untouched). Models without
    phases (``validate_config`` refuses phase settings for them) train every parameter."""
    partial = phase == "head" or config.unfreeze != "all"
    model.requires_grad_(not partial)
    if phase == "head":
        head_of(model).requires_grad_(True)
        return body_of(model)
    frozen = []
    if config.unfreeze != "all":
        model.head.requires_grad_(True)
        blocks = model.blocks
        n = min(int(config.unfreeze), len(blocks))
        for block in blocks[len(blocks) - n:]:
            block.requires_grad_(True)
        frozen = blocks[: len(blocks) - n]
    if config.bn_policy == "frozen":
        frozen += [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return frozen


@torch.no_grad()
def extract_features(base: nn.Module, images: torch.Tensor, preprocessing: dict, device: torch.device,
                     desc: str) -> torch.Tensor:
    """The frozen base's output for every image, computed once (phase 1 without augmentation)."""
    base.eval()
    out = []
    n = eval_batch(preprocessing)
    for start in tqdm(range(0, len(images), n), desc=desc, unit="batch", leave=False, disable=None):
        out.append(base(preprocess(images[start : start + n].to(device), preprocessing)))
    return torch.cat(out) if out else torch.empty(0, 0, device=device)


@dataclass
class Phase:
    """A training phase: its step settings, its training inputs, and how it validates."""

    name: str
    step: TrainStep
    inputs: torch.Tensor  # uint8 images, or the frozen base's cached features, on the device
    labels: torch.Tensor  # on the device
    validate: Callable[[], EvalResult]


def start_phase(run: Run, name: str) -> Phase:
    """Freeze what the phase leaves alone; in a head phase without augmentation, train the
    head on the frozen base's features, computed once."""
    config, data, model = run.config, run.data, run.model
    labels = data.train_y.to(run.device)
    eval_modules = configure_phase(model, name, config)
    run.log(f"phase {name}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters")
    augmentations = parse_augment(config.augment)
    step = TrainStep(ddp.wrap(model, run.world, run.device), run.optimizer,
                     make_prepare(run.preprocessing, augmentations, run.generator),
                     run.device, eval_modules, config.label_smoothing,
                     (lambda: run.ema.update_parameters(model)) if run.ema is not None else None,
                     autocast=autocast_dtype(config.precision, run.device), world=run.world)
    if name == "head" and config.cache_features and not augmentations and hasattr(model, "base"):
        train = extract_features(model.base, data.train_x.to(run.device), run.preprocessing, run.device, "features")
        val = extract_features(model.base, data.val_x, run.preprocessing, run.device, "features val")

        def validate_head() -> EvalResult:
            with torch.no_grad():
                logits = run.evaluated.head.eval()(val).float().cpu()
            return result_from_logits(logits, data.val_y, run.dataset.classes, "val")

        return Phase(name, dataclasses.replace(step, model=ddp.wrap(model.head, run.world, run.device),
                                               prepare=lambda f: f, eval_modules=[]),
                     train, labels, validate_head)
    return Phase(name, step, data.train_x.to(run.device), labels, lambda: evaluate(
        run.evaluated, data.val_x, data.val_y, run.dataset.classes, run.preprocessing, "val", run.device))


def run_epoch(run: Run, phase: Phase, epoch: int) -> tuple[dict, EvalResult]:
    """Train one epoch at the schedule's learning rate, then validate."""
    config = run.config
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(config, epoch)
    lr_at = (lambda f: learning_rate(config, epoch, f)) if config.lr_schedule == "onecycle" else None
    stats = train_one_epoch(dataclasses.replace(phase.step, lr_at=lr_at), phase.inputs, phase.labels,
                            config.batch_size, run.generator, f"epoch {epoch}/{run.total_epochs} {phase.name}")
    return stats, phase.validate()


def keep_best(run: Run, epoch: int, phase: str, stats: dict, val: EvalResult, seconds: float) -> None:
    """Record the epoch; write model.pt when validation improved: higher accuracy, or the same
    accuracy at a lower loss (a small validation split of easy classes reaches 100% early, and
    the first epoch to get there is rarely the best); without a validation split, every epoch
    (the latest is kept). last.pt always; log one line."""
    row = {"epoch": epoch, "phase": phase, "train_loss": stats["loss"], "train_acc": stats["acc"],
           "val_loss": val.loss, "val_acc": val.accuracy, "lr": stats["lr"], "seconds": seconds}
    run.history.append(row)
    no_val = len(run.data.val_y) == 0
    best_acc, best_loss = run.best["val_acc"], run.best.get("val_loss", math.inf)
    improved = no_val or val.accuracy > best_acc or (val.accuracy == best_acc and val.loss < best_loss)
    if improved:
        run.best = {"val_acc": float("nan") if no_val else val.accuracy, "val_loss": val.loss, "epoch": epoch}
    if not run.world.main:  # every rank keeps the same record; rank 0 alone writes it
        return
    write_history(run.history, run.out / "history.csv")
    if improved:
        save_checkpoint(run.checkpoint(run.evaluated, epoch=epoch), run.out / "model.pt")
    save_last(run, epoch)
    run.log(f"epoch {epoch:>3}/{run.total_epochs} {phase:<8} train loss {stats['loss']:.4f} acc {stats['acc']:.4f}"
            f"  val loss {val.loss:.4f} acc {val.accuracy:.4f}  mean lr {stats['lr']:.2e}  {seconds:.1f}s"
            + ("  *best" if improved else ""))


def save_last(run: Run, epoch: int) -> None:
    """last.pt: the weights, optimizer and random states and the record after ``epoch``."""
    save_checkpoint(run.checkpoint(run.model, epoch=epoch, optimizer=run.optimizer.state_dict(),
                                   generator=run.generator.get_state(), torch_rng=torch.get_rng_state(),
                                   history=run.history, best=run.best, budget=run.budget,
                                   **({"ema": run.ema.state_dict()} if run.ema is not None else {})),
                    run.out / "last.pt")


def write_history(history: list[dict], path: Path) -> None:
    """history.csv: one row per epoch; ``lr`` is the mean learning rate over the epoch's steps.
    Written atomically, as every file of a run directory."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})
    write_bytes_atomic(path, buf.getvalue().encode())


# ---------------------------------------------------------------- a time budget

BUDGET_WARMUP_STEPS = 3  # not timed: the first steps build the CPU kernels and warm the caches
BUDGET_TIMED_STEPS = 10  # about 1-2 s of a strong-recipe run; the mean of 10 steps varies by a few %
# Plan to end at 92% of the budget: over a whole run, steps took up to 7% longer than the
# timed ones (2-core AMD EPYC Zen 4, strong recipe: 45 ms against 42 ms), and the process's
# start-up (imports) comes before the budget's clock starts.
BUDGET_MARGIN = 0.92
# The final evaluation: train, val and test images, plus up to ~5,000 non-garment and held-out
# images for the unknown threshold; then plots, report and checkpoint saves, measured at
# 3-4 s on 2 cores (AMD EPYC Zen 4), so 5 s.
FINISH_EXTRA_IMAGES = 5000
FINISH_FIXED_SECONDS = 5.0


def time_steps(run: Run) -> dict:
    """Seconds per optimizer step of the main phase and per evaluated image, measured on copies
    of the model and optimizer with their own random generator, so the run itself (weights,
    batch order, augmentation draws) is exactly as if it had been started with ``--epochs``."""
    config = run.config
    model = copy.deepcopy(run.model)
    trial = dataclasses.replace(run, model=model, optimizer=make_optimizer(config, model),
                                ema=make_ema(model, config.ema) if config.ema else None,
                                generator=torch.Generator().manual_seed(config.seed + 1), log=lambda _: None)
    rng = torch.get_rng_state()
    try:
        phase = start_phase(trial, phase_of(config, config.head_epochs + 1)[0])
        step = dataclasses.replace(phase.step, lr_at=lambda _: 0.0)  # the same arithmetic, weights left alone
        bs = config.batch_size

        def steps(n: int) -> tuple[int, float]:
            n = min(n * bs, len(phase.inputs))
            t0 = time.perf_counter()
            train_one_epoch(step, phase.inputs[:n], phase.labels[:n], bs, trial.generator, "timing")
            return math.ceil(n / bs), time.perf_counter() - t0

        steps(BUDGET_WARMUP_STEPS)
        count, seconds = steps(BUDGET_TIMED_STEPS)
        images = run.data.val_x if len(run.data.val_x) else run.data.train_x
        images, classes = images[:1024], run.dataset.classes
        labels = torch.zeros(len(images), dtype=torch.long)
        evaluate(trial.evaluated, images[:128], labels[:128], classes, run.preprocessing, "val", run.device)
        t0 = time.perf_counter()
        evaluate(trial.evaluated, images, labels, classes, run.preprocessing, "val", run.device)
        return {"step_seconds": seconds / count, "image_seconds": (time.perf_counter() - t0) / len(images)}
    finally:
        torch.set_rng_state(rng)


# A re-planned run aims here: 3% of the budget for what the last epochs' times do not foresee.
REPLAN_MARGIN = 0.97


def epochs_that_fit(budget: float, spent: float, epoch: float, final: float, head_epochs: int = 0) -> int:
    """Main-phase epochs that end, with ``head_epochs`` before them (counted at a main epoch's
    cost, an upper bound) and the final evaluation after, by ``BUDGET_MARGIN`` of ``budget``
    seconds, ``spent`` of which are gone; at least 1."""
    return max(1, int((BUDGET_MARGIN * budget - spent - final) // epoch) - head_epochs)


def plan_epochs(run: Run) -> None:
    """``--time-budget``: time a few steps, fix ``run.config.epochs`` (so the one-cycle schedule
    spans exactly the steps that will run), record it in config.json and the plan in ``run.budget``."""
    config, data = run.config, run.data
    budget = parse_duration(config.time_budget)
    speed = time_steps(run)
    steps = math.ceil(len(data.train_y) / config.batch_size)
    epoch = speed["step_seconds"] * steps + speed["image_seconds"] * len(data.val_y)
    final = speed["image_seconds"] * (len(data.train_y) + len(data.val_y) + len(data.test_y) + FINISH_EXTRA_IMAGES) \
        + FINISH_FIXED_SECONDS
    spent = time.perf_counter() - run.started
    epochs = ddp.broadcast_int(epochs_that_fit(budget, spent, epoch, final, config.head_epochs), run.world)
    planned = spent + (config.head_epochs + epochs) * epoch + final
    # From here on the run is an ordinary run of that many epochs: config.json (and a resumed
    # run, or --config) say epochs, and metrics.json's "time_budget" says how they were chosen.
    run.config = dataclasses.replace(config, epochs=epochs, time_budget=None)
    if run.world.main:
        write_config(run)
    run.epoch_ends = [time.perf_counter()]
    run.budget = {"budget": config.time_budget, "budget_seconds": budget, "spent_before_training": spent, **speed,
                  "steps_per_epoch": steps, "epoch_seconds": epoch, "final_seconds": final, "epochs": epochs,
                  "planned_seconds": planned}
    run.log(f"time budget {config.time_budget} ({budget:.0f} s): {1000 * speed['step_seconds']:.0f} ms per step x "
            f"{steps} steps + {speed['image_seconds'] * len(data.val_y):.1f} s validation = {epoch:.1f} s per "
            f"epoch; final evaluation ~{final:.0f} s; {config.head_epochs + epochs} epochs, planned to end at "
            f"{planned:.0f} s (repeat with --epochs {epochs})"
            + (f"; warning: even 1 epoch needs about {planned:.0f} s" if planned > budget else ""))


def replan_epochs(run: Run, epoch: int) -> None:
    """``--time-budget``, after each epoch: when the run has fallen so far behind its plan (the
    machine got slower: other work on it, a noisy neighbour) that it would end late, fewer main
    epochs, with the learning rate
    going from where it is straight down to 0 at the new last epoch (``schedule_cut``, which
    config.json records so the run can be repeated). Never more epochs: a run ahead of its plan
    keeps the plan, so its result does not depend on the machine's mood."""
    config, plan = run.config, run.budget
    phase, i, n = phase_of(config, epoch)
    keep, per_epoch, projected = n, plan["epoch_seconds"], 0.0
    run.epoch_ends.append(time.perf_counter())
    if phase != "head" and i < n:
        # The pace now: wall clock between the last two epoch ends (checkpoints included). The
        # faster of the last two epochs was tried: under a lasting slowdown (another process on
        # one of 2 cores: epochs 42 -> 121 s, AVX2, fp32) it reacted an epoch late and cut the
        # schedule off instead of bringing it down to 0.
        per_epoch = max(run.epoch_ends[-1] - run.epoch_ends[-2], plan["epoch_seconds"])
        final = plan["final_seconds"] * per_epoch / plan["epoch_seconds"]
        elapsed = time.perf_counter() - run.started
        projected = elapsed + (n - i) * per_epoch + final
        if projected > plan["budget_seconds"]:
            room = REPLAN_MARGIN * plan["budget_seconds"] - elapsed - final
            keep = i + max(0, min(n - i - 1, int(room // per_epoch)))
    keep = ddp.broadcast_int(keep, run.world)  # rank 0's clock decides for every rank
    if keep == n:
        return
    cut = f"{n}@{i}"
    run.config = dataclasses.replace(config, epochs=keep,
                                     schedule_cut=f"{config.schedule_cut},{cut}" if config.schedule_cut else cut)
    plan.setdefault("replanned", []).append({"after_epoch": epoch, "epochs_from": n, "epochs_to": keep,
                                             "epoch_seconds": per_epoch, "projected_seconds": projected})
    if run.world.main:  # a run resumed from here goes on with the new plan
        write_config(run)
        save_last(run, epoch)
    run.log(f"time budget: at this pace ({per_epoch:.1f} s an epoch, {plan['epoch_seconds']:.1f} s planned) the run "
            f"would end at {projected:.0f} s of {plan['budget_seconds']:.0f}: {config.head_epochs + n} -> "
            f"{config.head_epochs + keep} epochs, the learning rate going straight to 0 by the last (repeat with "
            f"--epochs {keep} --schedule-cut {run.config.schedule_cut})")


# ---------------------------------------------------------------- the recipe


def fit(config: TrainConfig, resume: str | os.PathLike | None = None, log: Callable[[str], None] = print,
        stop_after_epoch: int | None = None, after_epoch: Callable[[int, float], None] | None = None,
        final_evaluation: bool = True, exist_ok: bool = False) -> dict:
    """Train ``config.model`` and write the run directory ``config.out``; return its metrics.

    ``config.out`` may not hold a run already (``fashionclf.rundir``) unless ``exist_ok``;
    the run locks its folder while it writes (rank 0 under torchrun).
    ``resume``: continue the run in that directory from its last.pt. ``stop_after_epoch``:
    stop once that epoch's checkpoints are written, as an interruption would (no final
    evaluation; continue with ``resume``); returns ``{"stopped_after_epoch": N}``.
    ``after_epoch(epoch, val_accuracy)`` is called once each epoch's checkpoints are written;
    an exception it raises ends the run there (a tuner stopping a poor trial).
    ``final_evaluation=False`` trains without evaluating the best model on train/val/test
    (a tuner's trial: the test split must not be looked at until a winner is chosen; ``fit``
    with ``resume`` on the directory evaluates it later) and returns ``{"best": ...}``.
    """
    if not ddp.from_env().main:  # rank 0 alone checks and holds the folder
        return _fit(config, resume, log, stop_after_epoch, after_epoch, final_evaluation)
    with claim(resume if resume is not None else config.out, exist_ok, resume=resume is not None):
        return _fit(config, resume, log, stop_after_epoch, after_epoch, final_evaluation)


def _fit(config: TrainConfig, resume: str | os.PathLike | None, log: Callable[[str], None],
         stop_after_epoch: int | None, after_epoch: Callable[[int, float], None] | None,
         final_evaluation: bool) -> dict:
    started = time.perf_counter()
    run = start_run(config, resume, log)
    run.started = started
    budgeted = bool(run.config.time_budget) and resume is None
    if budgeted:
        plan_epochs(run)
    phase, epoch = None, run.start_epoch
    while epoch <= run.total_epochs:  # a time budget may re-plan the run shorter as it goes
        t0 = time.perf_counter()  # a phase's one-off feature extraction counts in its first epoch
        if phase is None or phase.name != phase_of(run.config, epoch)[0]:
            phase = start_phase(run, phase_of(run.config, epoch)[0])
        stats, val = run_epoch(run, phase, epoch)
        keep_best(run, epoch, phase.name, stats, val, time.perf_counter() - t0)
        if after_epoch is not None:
            after_epoch(epoch, val.accuracy)
        if epoch == stop_after_epoch:
            return {"stopped_after_epoch": epoch}
        if budgeted:
            replan_epochs(run, epoch)
        epoch += 1
    if not run.world.main:  # rank 0 evaluates and writes the run's results
        ddp.finish(run.world)
        return {"rank": run.world.rank, "best": dict(run.best)}
    result = finish_run(run) if final_evaluation else {"best": dict(run.best), "epochs": run.total_epochs}
    ddp.finish(run.world)
    return result


def finish_run(run: Run) -> dict:
    """Evaluate the best model on train (in eval mode), val and test; write metrics, plots, report."""
    config, data, dataset = run.config, run.data, run.dataset
    best_ckpt = load_checkpoint(run.out / "model.pt")
    model = model_from_checkpoint(best_ckpt).to(run.device)
    results = {split: evaluate(model, *data.of(split), dataset.classes, best_ckpt["preprocessing"], split, run.device)
               for split in ("train", "val", "test")}
    accuracies = {split: r.accuracy for split, r in results.items()}
    overfit = overfitting_check(accuracies)
    unknown = calibrate_run(run, model, best_ckpt["preprocessing"], results)
    metrics = run_metrics(run, model, results, overfit)
    metrics["unknown"] = unknown
    metrics["run_seconds"] = time.perf_counter() - run.started  # this process: data, training, evaluation
    if run.budget is not None:
        metrics["time_budget"] = run.budget
    save_checkpoint(dict(best_ckpt, metrics=metrics, unknown=unknown), run.out / "model.pt")
    write_json(metrics, run.out / "metrics.json")
    info = {"model": config.model, "parameters": metrics["parameters"], "classes": ", ".join(dataset.classes),
            **{k: v for k, v in dataclasses.asdict(config).items() if k not in ("model", "classes")},
            "best_epoch": run.best["epoch"], "train_seconds": round(metrics["train_seconds"], 1),
            "data": f"{dataset.source} ({dataset.verification})"}
    test = results["test"]
    write_evaluation(test, dataset.test.images, run.out, accuracies, overfit, info, run.history, dataset.problems,
                     unknown)
    run.log(f"test accuracy {test.accuracy:.4f} (loss {test.loss:.4f}), best epoch {run.best['epoch']}; "
            f"train {accuracies['train']:.4f} / val {accuracies['val']:.4f} / test {test.accuracy:.4f}"
            + (f"; warning: {overfit['hint']}" if overfit["flag"] else "") + f"; report: {run.out / 'report.html'}")
    elapsed = time.perf_counter() - run.started
    run.log(f"run took {elapsed:.0f} s" + (f" of its {run.budget['budget_seconds']:.0f} s budget"
                                           if run.budget is not None else ""))
    return metrics


def calibrate_run(run: Run, model: nn.Module, preprocessing: dict, results: dict[str, EvalResult]) -> dict | None:
    """Fit the temperature and the unknown threshold on the validation split (``fashionclf.ood``)
    and measure them: ECE, and AUROC and the flagged share for images that are not garments
    (far) and, for a Fashion-MNIST class subset, the held-out classes' test images (near)."""
    val, test = results["val"], results["test"]
    if len(val.y_true) == 0:
        run.log("no validation split, so no calibration and no unknown threshold (--val-fraction above 0 gives both)")
        return None
    unknown = ood.calibrate(val.logits, val.y_true)
    t = unknown["temperature"]
    unknown["reliability"] = {"before": ood.reliability(ood.softmax(val.logits), val.y_true),
                              "after": ood.reliability(ood.softmax(val.logits, t), val.y_true)}

    def scores(images: np.ndarray) -> np.ndarray:
        return ood.energy_score(predict_logits(model, torch.from_numpy(images), preprocessing, run.device).numpy(), t)

    far_images = ood.far_ood_images(run.config.seed, preprocessing)
    sets = {f"far: {name}": scores(images) for name, images in far_images.items()}
    near = held_out_classes(run.dataset)
    if near is not None:
        sets["near: held-out Fashion-MNIST classes"] = scores(near)
    unknown["ood"] = ood.ood_report(unknown, ood.energy_score(test.logits, t), sets)
    far = [v for k, v in unknown["ood"].items() if k.startswith("far")]
    run.log(f"calibration: temperature {t:.3f}, validation ECE {unknown['val_ece_before']:.3f} -> "
            f"{unknown['val_ece_after']:.3f}; unknown below score {unknown['threshold']:.3f}: "
            f"{unknown['ood']['in_distribution_flagged']:.1%} of test images, "
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
                 **{f"{split}_counts": class_counts(data.of(split)[1].numpy(), k) for split in ("train", "val", "test")},
                 **({"problems": run.dataset.problems} if run.dataset.problems else {})},
        "versions": {"fashionclf": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
    }
