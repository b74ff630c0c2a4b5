"""A training run: ``Run`` (what is fixed for it, and the state last.pt saves), ``start_run``
(settings resolved, data loaded, model built, or all of it restored for ``--resume``), its
phases (head on a frozen body, then fine-tuning) and what each epoch writes (model.pt of the
best epoch, last.pt, history.csv, config.json)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from fashionclf.data.fashion_mnist import Dataset, Splits, make_splits
from fashionclf.data.sources import as_list, is_fashion_mnist, load_data, load_every_photo
from fashionclf.device import autocast_dtype, cpu_info, resolve_device
from fashionclf.errors import UsageError
from fashionclf.evaluation.attributes import AttributeResults, results_of
from fashionclf.evaluation.metrics import EvalResult, result_from_logits
from fashionclf.fileio import write_bytes_atomic, write_json
from fashionclf.inference.checkpoint import (
    SEEN_SPLITS,
    Checkpoint,
    ResumeState,
    load_checkpoint,
    record_seen,
    save_checkpoint,
)
from fashionclf.models import body_of, count_parameters, create_model, get_model_entry, head_of
from fashionclf.models.contract import InputContract, predict_logits, preprocess
from fashionclf.training.config import TrainConfig, config_warnings, resolve_config
from fashionclf.training.ddp import World, check_batch
from fashionclf.training.ddp import from_env as world_from_env
from fashionclf.training.ddp import start as start_ranks
from fashionclf.training.ddp import wrap as wrap_ranks
from fashionclf.training.loop import (
    TrainStep,
    learning_rate,
    make_ema,
    make_loss,
    make_optimizer,
    make_prepare,
    train_one_epoch,
)

HISTORY_FIELDS = ["epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]

# ---------------------------------------------------------------- the run and its phases


@dataclass
class Run:
    """A training run: what is fixed for it, and the state that last.pt saves and restores."""

    config: TrainConfig
    out: Path
    device: torch.device
    dataset: Dataset
    data: Splits
    contract: InputContract
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
    world: World = World()  # torchrun's ranks; rank 0 alone writes files
    # Photos this model saw before this run's data (SHA-256 per split): an --init body's, or
    # those last.pt recorded when resuming; the checkpoint records them with this run's own.
    seen_before: dict[str, set[str]] = field(default_factory=dict)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # ``loop.make_loss``; None: cross-entropy

    @property
    def evaluated(self) -> nn.Module:
        """What is validated and kept as model.pt: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def total_epochs(self) -> int:
        return self.config.head_epochs + self.config.epochs

    def checkpoint(self, weights_of: nn.Module, epoch: int, resume: ResumeState | None = None) -> Checkpoint:
        hashes = {split: sorted(set(self.dataset.hashes.get(split, [])) | self.seen_before.get(split, set()))
                  for split in SEEN_SPLITS}
        return Checkpoint.of(weights_of, model=self.config.model, model_kwargs=self.model_kwargs,
                             classes=self.dataset.classes, class_indices=self.dataset.class_indices,
                             contract=self.contract, config=dataclasses.asdict(self.config), epoch=epoch,
                             photos_seen=record_seen(hashes) if any(hashes.values()) else None, resume=resume,
                             attributes=self.dataset.schema)

    def score(self, logits: torch.Tensor, labels: torch.Tensor, split: str) -> EvalResult | AttributeResults:
        """A split's figures from the model's logits: per attribute when the data has several."""
        if self.dataset.schema is None:
            return result_from_logits(logits, labels, self.dataset.classes, split)
        return results_of(logits, labels, self.dataset.schema, split)


def start_run(config: TrainConfig, resume: str | os.PathLike | None, log: Callable[[str], None],
              data: Dataset | None = None) -> Run:
    """Resolve the settings, load the data, build the model, optimizer and weight average;
    with ``resume``, restore them and every random state from the run's last.pt (its saved
    settings are used, except ``epochs``, which may be raised to train longer). ``data``: this
    dataset (converted for the run's input contract) instead of ``config.data``'s."""
    state = None
    if resume is not None:
        state = load_checkpoint(Path(resume) / "last.pt")
        saved = TrainConfig.from_dict(state.config)
        config = dataclasses.replace(saved, epochs=max(config.epochs or 0, saved.epochs), out=str(resume))
    init = load_checkpoint(config.init) if config.init and state is None else None
    if init is not None:
        config = config_from_init(config, init)
    config, asked = resolve_config(config), config.weights  # asked: the --weights given, before "auto" resolves
    world, device = start_ranks(world_from_env(), resolve_device(config.device))
    if not world.main:
        log = _quiet
    entry = get_model_entry(config.model)
    log_weights_fallback(asked, config, entry, log)
    check_batch(config.batch_size, world)
    if config.threads or world.local_size > 1:  # processes of one machine share its cores
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // world.local_size))
    contract, model_kwargs = input_contract(config, state, init)
    dataset = data if data is not None else run_data(config, contract, log)
    torch.manual_seed(config.seed)
    weights = {"weights": config.weights} if entry.weights and state is None and init is None else {}
    outputs = len(dataset.classes) if dataset.schema is None else dataset.schema.outputs
    model = create_model(config.model, num_classes=outputs, **model_kwargs, **weights)
    if init is not None:
        kept = init.load_body_into(model)
        log(f"--init {config.init}: {kept.copied} tensors of the body kept from {init.model} ({len(init.classes)} "
            f"classes), " + (f"a new head for {len(dataset.classes)} classes" if dataset.schema is None else
                             f"new heads for {', '.join(dataset.schema.names)}"))
        for name in kept.adapted:
            log(f"--init: {name} adapted from {init.contract.channels} to {contract.channels} input channel(s) "
                "(the filters spread evenly, so an image with equal channels gives what it gave)")
        if kept.fresh:
            log(f"--init: {', '.join(kept.fresh)} started fresh: their shape depends on the input size "
                f"({init.contract.image_size} -> {contract.image_size})")
    model = model.to(device)
    run = Run(config, Path(config.out), device, dataset, make_splits(dataset, config.val_fraction, config.seed),
              contract, model_kwargs, model, make_optimizer(config, model),
              make_ema(model, config.ema) if config.ema else None, torch.Generator().manual_seed(config.seed), log)
    run.world = world
    run.seen_before = ((state or init).seen_photos() if (state or init) else None) or {}
    run.loss, note = make_loss(config, dataset.schema, dataset.classes, run.data.train_y, device)
    if note:
        log(note)
    for warning in config_warnings(config):
        log(f"warning: {warning}")
    if config.stem_init == "whiten" and state is None:
        from fashionclf.training.whitening import whiten_first_conv

        pairs = whiten_first_conv(run.model, run.data.train_x, contract, config.model)
        log(f"--stem-init whiten: the first convolution starts as {pairs} whitened patch directions and their negatives")
    if state is not None:
        run.model.load_state_dict(state.state_dict)
        saved = state.resume
        if run.ema is not None:
            run.ema.load_state_dict(saved.ema)
        run.optimizer.load_state_dict(saved.optimizer)
        run.generator.set_state(saved.generator)
        torch.set_rng_state(saved.torch_rng)
        run.history, run.best, run.start_epoch = list(saved.history), dict(saved.best), state.epoch + 1
        run.budget = saved.budget
        log(f"resuming {run.out} at epoch {run.start_epoch} of {run.total_epochs}")
    if world.main:
        run.out.mkdir(parents=True, exist_ok=True)
        for stale in run.out.glob(".*.tmp"):  # left by a process killed mid-write (fileio.write_atomic's names)
            stale.unlink(missing_ok=True)
        write_config(run)
    data = run.data
    where = f"{device} ({cpu_info()['label']})" if device.type == "cpu" else str(device)
    log(f"{config.model}: {count_parameters(model):,} parameters, weights {config.weights}, "
        f"{config.image_size}x{config.image_size} input, {describe_outputs(dataset)}, "
        f"{len(data.train_y)} train / {len(data.val_y)} val / {len(data.test_y)} test images, device {where}, "
        f"{torch.get_num_threads()} threads, training in {'bf16' if autocast_dtype(config.precision, device) else 'fp32'}"
        + (f"; {world.size} processes ({world.backend}), global batch {config.batch_size}" if world.size > 1 else ""))
    return run


def log_weights_fallback(asked: str | None, config: TrainConfig, entry, log: Callable[[str], None]) -> None:
    """``--weights auto`` (or the default) that found no pretrained weights says so, and why."""
    if asked in (None, "auto") and entry.weights and config.weights == "none":
        log(f"--weights auto: {entry.unavailable(entry.weights[0])} So {config.model} starts from random weights "
            "(--weights none) with the training settings for that start.")


def run_data(config: TrainConfig, contract: InputContract, log: Callable[[str], None]) -> Dataset:
    """``config.data`` converted for ``contract``: split, or every photo in train for a
    cross-fitted run (its final model, resumed)."""
    if config.calibration == "crossfit":
        return load_every_photo(as_list(config.data), config.classes, log, contract)
    return load_data(config.data, config.classes, config.verify, config.split, log=log, contract=contract)


def describe_outputs(dataset: Dataset) -> str:
    if dataset.schema is None:
        return f"{len(dataset.classes)} classes"
    return "heads " + ", ".join(f"{a.name} ({len(a.values)}{' values, several per photo' if a.multi else ''})"
                                for a in dataset.schema.attributes)


def _quiet(*_) -> None:
    """The log of ranks other than 0: one voice per run."""


def write_config(run: Run) -> None:
    """config.json: every setting used, and the number of processes that trained."""
    write_json({**dataclasses.asdict(run.config), "world_size": run.world.size, "backend": run.world.backend},
               run.out / "config.json")


def input_contract(config: TrainConfig, state: Checkpoint | None, init: Checkpoint | None = None
                   ) -> tuple[InputContract, dict]:
    """The run's input contract and model arguments: last.pt's when resuming; else the model's
    normalisation for ``config.input``'s channels at ``config.image_size``. Colour models see
    Fashion-MNIST's grey images with equal channels and photos in colour, in the form the model
    takes (``ModelEntry.photo_source``). ``--init`` keeps the checkpoint's other arguments."""
    import inspect

    if state is not None:
        return state.contract.replace(tta=config.tta), dict(state.model_kwargs)
    entry = get_model_entry(config.model)
    channels = 3 if config.input == "rgb" else 1
    source = entry.photo_source if channels == 3 and not is_fashion_mnist(config.data) else "grey"
    contract = entry.contract.with_channels(channels).replace(image_size=config.image_size, tta=config.tta,
                                                               source=source)
    kwargs = {**(init.model_kwargs if init is not None else {}), "in_chans": channels}
    if "image_size" in inspect.signature(entry.builder).parameters:  # its dense layer's size depends on it
        kwargs["image_size"] = config.image_size
    return contract, kwargs  # weights are not needed to rebuild the model


def planned_contract(config: TrainConfig) -> tuple[TrainConfig, InputContract]:
    """The settings a new run of ``config`` resolves to and its input contract, before it starts
    (an ``--init`` checkpoint is read for both): what its photos are converted for."""
    init = load_checkpoint(config.init) if config.init else None
    resolved = resolve_config(config_from_init(config, init) if init is not None else config)
    return resolved, input_contract(resolved, None, init)[0]


def config_from_init(config: TrainConfig, init: Checkpoint) -> TrainConfig:
    """``--init``: the model is the checkpoint's (naming another is a usage error), and so is
    the input size unless one is given."""
    name = init.model
    if config.model not in (None, name):
        raise UsageError(f"--init {config.init} is a {name}; leave out --model or give {name} "
                         f"({config.model} given)")
    return dataclasses.replace(config, model=name, image_size=config.image_size or init.contract.image_size,
                               weights="none")


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
def extract_features(base: nn.Module, images: torch.Tensor, contract: InputContract, device: torch.device,
                     desc: str) -> torch.Tensor:
    """The frozen base's output for every image, computed once (phase 1 without augmentation)."""
    base.eval()
    out = []
    n = contract.eval_batch
    for start in tqdm(range(0, len(images), n), desc=desc, unit="batch", leave=False, disable=None):
        out.append(base(preprocess(images[start : start + n].to(device), contract)))
    return torch.cat(out) if out else torch.empty(0, 0, device=device)


@dataclass
class Phase:
    """A training phase: its step settings, its training inputs, and how it validates."""

    name: str
    step: TrainStep
    inputs: torch.Tensor  # uint8 images, or the frozen base's cached features, on the device
    labels: torch.Tensor  # on the device
    validate: Callable[[], EvalResult | AttributeResults]


def start_phase(run: Run, name: str) -> Phase:
    """Freeze what the phase leaves alone; in a head phase without augmentation, train the
    head on the frozen base's features, computed once."""
    config, data, model = run.config, run.data, run.model
    labels = data.train_y.to(run.device)
    eval_modules = configure_phase(model, name, config)
    run.log(f"phase {name}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters")
    augmentations = config.augmentations
    step = TrainStep(wrap_ranks(model, run.world, run.device), run.optimizer,
                     make_prepare(run.contract, augmentations, run.generator),
                     run.device, eval_modules, config.label_smoothing,
                     (lambda: run.ema.update_parameters(model)) if run.ema is not None else None,
                     autocast=autocast_dtype(config.precision, run.device), world=run.world,
                     schema=run.dataset.schema, loss=run.loss)
    if name == "head" and config.cache_features and not augmentations and hasattr(model, "base"):
        train = extract_features(model.base, data.train_x.to(run.device), run.contract, run.device, "features")
        val = extract_features(model.base, data.val_x, run.contract, run.device, "features val")

        def validate_head() -> EvalResult:
            with torch.no_grad():
                logits = run.evaluated.head.eval()(val).float().cpu()
            return run.score(logits, data.val_y, "val")

        return Phase(name, dataclasses.replace(step, model=wrap_ranks(model.head, run.world, run.device),
                                               prepare=lambda f: f, eval_modules=[]),
                     train, labels, validate_head)
    return Phase(name, step, data.train_x.to(run.device), labels, lambda: run.score(
        predict_logits(run.evaluated, data.val_x, run.contract, run.device), data.val_y, "val"))


def run_epoch(run: Run, phase: Phase, epoch: int) -> tuple[dict, EvalResult | AttributeResults]:
    """Train one epoch at the schedule's learning rate, then validate."""
    config = run.config
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(config, epoch)
    lr_at = (lambda f: learning_rate(config, epoch, f)) if config.lr_schedule == "onecycle" else None
    stats = train_one_epoch(dataclasses.replace(phase.step, lr_at=lr_at), phase.inputs, phase.labels,
                            config.batch_size, run.generator, f"epoch {epoch}/{run.total_epochs} {phase.name}")
    t0 = time.perf_counter()
    val = phase.validate()
    stats["val_seconds"] = time.perf_counter() - t0  # a time budget re-estimates the final evaluation from it
    return stats, val


def keep_best(run: Run, epoch: int, phase: str, stats: dict, val: EvalResult | AttributeResults,
              seconds: float) -> None:
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
    state = ResumeState(run.optimizer.state_dict(), run.generator.get_state(), torch.get_rng_state(), run.history,
                        run.best, run.budget, run.ema.state_dict() if run.ema is not None else None)
    save_checkpoint(run.checkpoint(run.model, epoch, state), run.out / "last.pt")


def write_history(history: list[dict], path: Path) -> None:
    """history.csv: one row per epoch; ``lr`` is the mean learning rate over the epoch's steps.
    Written atomically, as every file of a run directory."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})
    write_bytes_atomic(path, buf.getvalue().encode())


