"""One epoch of training and what it needs: the phases' learning-rate schedule, the
optimizer, the weight average, the batch preparation (augmentation, then the shared
preprocessing) and ``train_one_epoch``, which runs them over a seeded order of the images."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fashionclf.data.attributes import Schema
from fashionclf.errors import TrainingDiverged, UsageError
from fashionclf.evaluation.attributes import attribute_loss, balanced_weights, first_hits
from fashionclf.models.contract import InputContract, preprocess
from fashionclf.training.config import TrainConfig
from fashionclf.training.ddp import World, all_sum, shard
from fashionclf.training.transforms import augment

ONECYCLE_WARMUP = 0.25  # share of a phase spent rising linearly from 0 to the peak learning rate
BALANCE_POWERS = {"weights": 1.0, "sqrt": 0.5}  # --balance: the power the inverse-frequency weights are raised to


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
    cuts = config.cuts if cuts is None else cuts
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

    def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # One fused pass per dtype instead of a few ops per tensor: MobileNetV2's 314 tensors
        # 22.6 -> ~2 ms a step on 2 cores. Integer buffers (BatchNorm's batch count) are copied.
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        d = min(decay, (1 + float(num_averaged)) / (10 + float(num_averaged)))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)


def make_prepare(contract: InputContract, augmentations: list[str], generator: torch.Generator
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training batches: uint8 source -> augmentations (if any) -> the shared ``preprocess``,
    the very function that evaluate, predict, serve and the ONNX export use."""

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return preprocess(augment(batch, augmentations, generator) if augmentations else batch, contract)

    return prepare


def make_loss(config: TrainConfig, schema: Schema | None, classes: list[str], labels: torch.Tensor,
              device: torch.device) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, str]:
    """The training loss of a run, and a line for the log ("" when it is plain cross-entropy):
    one head per attribute with masked losses, weighted by ``--attribute-weights``; with
    ``--balance``, each class (or multi-label value) weighted from the training counts."""
    if schema is None and config.loss_weights:
        raise UsageError("--attribute-weights weighs the attributes of a manifest with several attribute "
                         "columns; this data has one (its classes): leave it out")
    unknown = [n for n in config.loss_weights if schema is not None and n not in schema.names]
    if unknown:
        raise UsageError(f"--attribute-weights names {', '.join(map(repr, unknown))}; the data's attributes are: "
                         f"{', '.join(schema.names)}")
    balanced = None
    if config.balance in BALANCE_POWERS:
        counted = schema or Schema.one(classes)
        balanced = [torch.as_tensor(w, dtype=torch.float32, device=device)
                    for w in balanced_weights(counted, labels.cpu().numpy(), BALANCE_POWERS[config.balance])]
    note = "" if balanced is None else f"--balance {config.balance}: " + "; ".join(
        f"{a.name} " + ", ".join(f"{v} {w:.2f}" for v, w in zip(a.values, ws.tolist()))
        for a, ws in zip((schema or Schema.one(classes)).attributes, balanced))
    if schema is None:
        weight = None if balanced is None else balanced[0]
        return (None if weight is None else
                lambda z, y: F.cross_entropy(z, y, weight=weight, label_smoothing=config.label_smoothing)), note
    weights = [config.loss_weights.get(n, 1.0) for n in schema.names]
    return (lambda z, y: attribute_loss(z, y, schema, config.label_smoothing, weights, balanced)), note


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
    world: World = World()  # torchrun's ranks: each trains on its shard of every batch
    schema: Schema | None = None  # several attributes: one head each (the first one's hits are counted)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # None: cross-entropy (``make_loss``)


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
        idx = shard(order[start : start + batch_size], step.world)
        x = step.prepare(inputs[idx].to(device, non_blocking=True))
        y = labels[idx].to(device, non_blocking=True)
        if step.lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = step.lr_at(start / len(inputs))
        lrs.append(optimizer.param_groups[0]["lr"])
        with torch.autocast(device.type, dtype=step.autocast) if step.autocast else contextlib.nullcontext():
            logits = model(x)
            if step.loss is None:
                loss = F.cross_entropy(logits, y, label_smoothing=step.label_smoothing)
            else:
                loss = step.loss(logits, y)
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
        correct += (logits.argmax(1) == y).sum() if step.schema is None else first_hits(logits, y, step.schema)
        if i % 50 == 0:
            seen = min(start + batch_size, len(inputs))
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    all_sum(total_loss, correct)  # the ranks' shards together are the epoch
    n = max(len(inputs), 1)
    return {"loss": total_loss.item() / n, "acc": correct.item() / n, "lr": statistics.fmean(lrs) if lrs else 0.0}


