"""Training. ``fit`` is the recipe and reads top to bottom: start (or restore) the run, then
per epoch: start the phase if it changes, ``train_one_epoch``, validate, keep the best; then
``finish_run`` evaluates the best model and writes the run directory. The pieces live by
concern: ``loop`` (one epoch: schedule, optimizer, ``train_one_epoch``), ``run`` (the run's
state, its phases and the files each epoch writes), ``budget`` (``--time-budget``),
``results`` (the final evaluation, shared with ``fashionclf evaluate``), ``rundir`` (the
run folder's claim).

What ``--seed`` guarantees: the seed fixes the train/val split, the initial weights, the
order of every batch and the augmentation draws. The same seed, data, settings, thread
count, device and torch version give the same weights and figures, epoch for epoch;
``--resume`` restores every random state, so an interrupted run continued with ``--resume``
ends with the same figures as one that was never interrupted. Different machines or torch
versions may differ in the last digits.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fashionclf.data.fashion_mnist import Dataset
from fashionclf.training import crossfit
from fashionclf.training.budget import plan_epochs, replan_epochs
from fashionclf.training.config import CROSSFIT_FOLDS, TrainConfig
from fashionclf.training.ddp import finish as finish_ranks
from fashionclf.training.ddp import from_env as world_from_env
from fashionclf.training.loop import phase_of
from fashionclf.training.results import finish_run
from fashionclf.training.run import keep_best, run_epoch, start_phase, start_run
from fashionclf.training.rundir import claim


def fit(config: TrainConfig, resume: str | os.PathLike | None = None, log: Callable[[str], None] = print,
        stop_after_epoch: int | None = None, after_epoch: Callable[[int, float], None] | None = None,
        final_evaluation: bool = True, exist_ok: bool = False, data: Dataset | None = None) -> dict:
    """Train ``config.model`` and write the run directory ``config.out``; return its metrics.

    ``config.out`` may not hold a run already (``fashionclf.training.rundir``) unless ``exist_ok``;
    the run locks its folder while it writes (rank 0 under torchrun).
    ``resume``: continue the run in that directory from its last.pt. ``stop_after_epoch``:
    stop once that epoch's checkpoints are written, as an interruption would (no final
    evaluation; continue with ``resume``); returns ``{"stopped_after_epoch": N}``.
    ``after_epoch(epoch, val_accuracy)`` is called once each epoch's checkpoints are written;
    an exception it raises ends the run there (a tuner stopping a poor trial).
    ``final_evaluation=False`` trains without evaluating the best model on train/val/test
    (a tuner's trial: the test split must not be looked at until a winner is chosen; ``fit``
    with ``resume`` on the directory evaluates it later) and returns ``{"best": ...}``.
    ``data``: train on this ``Dataset`` (already converted for the model's input) instead of
    loading ``config.data`` (``fashionclf audit``'s folds: the same photos, split otherwise).
    ``config.calibration``: ``crossfit`` (``auto`` on a small photo set) trains fold models first
    (``fashionclf.training.crossfit``).
    """
    world = world_from_env()
    if resume is None and data is None:
        plain = stop_after_epoch is None and after_epoch is None and final_evaluation and world.size == 1
        config = crossfit.resolve(config, plain)
    if not world.main:  # rank 0 alone checks and holds the folder
        return _fit(config, resume, log, stop_after_epoch, after_epoch, final_evaluation, data)
    with claim(resume if resume is not None else config.out, exist_ok, resume=resume is not None):
        if resume is None and data is None and config.calibration == "crossfit":
            return _fit_crossfit(config, log, exist_ok)
        return _fit(config, resume, log, stop_after_epoch, after_epoch, final_evaluation, data)


def _fit(config: TrainConfig, resume: str | os.PathLike | None, log: Callable[[str], None],
         stop_after_epoch: int | None, after_epoch: Callable[[int, float], None] | None,
         final_evaluation: bool, data: Dataset | None = None, started: float | None = None) -> dict:
    started = started or time.perf_counter()
    run = start_run(config, resume, log, data)
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
            replan_epochs(run, epoch, stats.get("val_seconds", 0.0))
        epoch += 1
    if not run.world.main:  # rank 0 evaluates and writes the run's results
        finish_ranks(run.world)
        return {"rank": run.world.rank, "best": dict(run.best)}
    result = finish_run(run) if final_evaluation else {"best": dict(run.best), "epochs": run.total_epochs,
                                                       "main_epochs": run.config.epochs}
    finish_ranks(run.world)
    return result


def _fit_crossfit(config: TrainConfig, log: Callable[[str], None], exist_ok: bool = False) -> dict:
    """``--calibration crossfit``: one model per fold on the other folds' photos, each photo's
    answer from the one that did not learn it (``crossfit.npz``), then the final model on
    every photo, calibrated on those answers by ``finish_run``."""
    started = time.perf_counter()
    out, dataset = Path(config.out), crossfit.every_photo(config, log)
    fold = crossfit.folds_of(dataset, config.seed)
    logits, seconds, epochs = [np.empty(0)] * len(fold), [], None
    log(f"calibration crossfit: {CROSSFIT_FOLDS} fold models, each learning from about "
        f"{len(fold) * (CROSSFIT_FOLDS - 1) // CROSSFIT_FOLDS} of the {len(fold)} photos, answer for the photos they "
        "did not learn from; then the final model learns from all of them")
    for k in range(CROSSFIT_FOLDS):
        t0, held = time.perf_counter(), fold == k
        fold_config = crossfit.fold_config(config, out, k, epochs)
        epochs = fit(fold_config, log=crossfit.fold_log(log), final_evaluation=False, exist_ok=exist_ok,
                     data=crossfit.fold_data(dataset, held))["main_epochs"]
        for i, row in zip(np.flatnonzero(held), crossfit.held_out_logits(Path(fold_config.out) / "model.pt",
                                                                         dataset.train.images[held])):
            logits[i] = row
        seconds.append(time.perf_counter() - t0)
        left = (CROSSFIT_FOLDS - k - 1 + 1.25) * statistics.fmean(seconds)
        log(f"fold {k + 1}/{CROSSFIT_FOLDS}: {len(fold) - held.sum()} photos learnt, {held.sum()} answered, in "
            f"{seconds[-1]:.0f} s; about {left:.0f} s left")
    crossfit.CrossFit(np.stack(logits), dataset.train.labels, fold, seconds, epochs).save(out / crossfit.FILE)
    final = dataclasses.replace(config, val_fraction=0.0, time_budget=None, epochs=epochs)
    return _fit(final, None, log, None, None, True, dataset, started)
