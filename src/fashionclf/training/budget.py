"""``--time-budget``: a few timed steps fix the number of epochs before training
(``plan_epochs``), and after each epoch the run is re-planned on its measured pace
(``replan_epochs``): shorter when it would end late, longer when it would end early; config.json
records the epochs and the re-plans, which repeat the run."""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch

from fashionclf.evaluation.metrics import evaluate
from fashionclf.training.config import TrainConfig
from fashionclf.training.ddp import broadcast_int
from fashionclf.training.loop import ONECYCLE_WARMUP, make_ema, make_optimizer, phase_of, train_one_epoch
from fashionclf.training.results import TRAIN_SCORED
from fashionclf.training.run import Run, save_last, start_phase, write_config

# ---------------------------------------------------------------- a time budget

BUDGET_WARMUP_STEPS = 3  # not timed: the first steps build the CPU kernels and warm the caches
BUDGET_TIMED_STEPS = 10  # about 1-2 s of a strong-recipe run; the mean of 10 steps varies by a few %
# Plan to end at 92% of the budget: over a whole run, steps took up to 7% longer than the
# timed ones (2-core AMD EPYC Zen 4, strong recipe: 45 ms against 42 ms), and the process's
# start-up (imports) comes before the budget's clock starts.
BUDGET_MARGIN = 0.92
# The final evaluation: a 10,000-image sample of train, val and test, plus ~5,000 non-garment and
# held-out images for the unknown threshold; then plots, report and checkpoint saves, measured at
# 3-4 s on 2 cores (AMD EPYC Zen 4), so 5 s.
FINISH_EXTRA_IMAGES = 5000
FINISH_FIXED_SECONDS = 5.0
# Evaluation speed: the faster of two passes over 512 images. A fresh install's first pass ran
# 2-3x slower than later ones (a 10-minute plan foresaw a 64 s final evaluation that took 25 s).
EVAL_TIMED_IMAGES = 512
EVAL_TIMINGS = 2


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
        images, classes = images[:EVAL_TIMED_IMAGES], run.dataset.classes
        labels = torch.zeros(len(images), dtype=torch.long)
        timed = []
        for _ in range(EVAL_TIMINGS):  # the first pass of a fresh process runs cold (2-3x slower): the faster one
            t0 = time.perf_counter()
            evaluate(trial.evaluated, images, labels, classes, run.contract, "val", run.device)
            timed.append(time.perf_counter() - t0)
        return {"step_seconds": seconds / count, "image_seconds": min(timed) / len(images)}
    finally:
        torch.set_rng_state(rng)


# A re-planned run aims here: 3% of the budget for what the last epochs' times do not foresee.
REPLAN_MARGIN = 0.97
# A run lengthened aims lower, so that an epoch a few % slower than the last ones does not
# cut it again: 5% of the budget, about one epoch of a 10-minute run on 2 cores.
LENGTHEN_MARGIN = 0.95


def epochs_that_fit(budget: float, spent: float, epoch: float, final: float, head_epochs: int = 0) -> int:
    """Main-phase epochs that end, with ``head_epochs`` before them (counted at a main epoch's
    cost, an upper bound) and the final evaluation after, by ``BUDGET_MARGIN`` of ``budget``
    seconds, ``spent`` of which are gone; at least 1."""
    return max(1, int((BUDGET_MARGIN * budget - spent - final) // epoch) - head_epochs)


def plan_epochs(run: Run) -> None:
    """``--time-budget``: time a few steps, fix ``run.config.epochs`` (so the one-cycle schedule
    spans exactly the steps that will run), record it in config.json and the plan in ``run.budget``."""
    config, data = run.config, run.data
    budget = config.budget_seconds
    speed = time_steps(run)
    steps = math.ceil(len(data.train_y) / config.batch_size)
    epoch = speed["step_seconds"] * steps + speed["image_seconds"] * len(data.val_y)
    final_images = min(len(data.train_y), TRAIN_SCORED) + len(data.val_y) + len(data.test_y) + FINISH_EXTRA_IMAGES
    final = speed["image_seconds"] * final_images + FINISH_FIXED_SECONDS
    spent = time.perf_counter() - run.started
    epochs = broadcast_int(epochs_that_fit(budget, spent, epoch, final, config.head_epochs), run.world)
    planned = spent + (config.head_epochs + epochs) * epoch + final
    # From here on the run is an ordinary run of that many epochs: config.json (and a resumed
    # run, or --config) say epochs, and metrics.json's "time_budget" says how they were chosen.
    run.config = dataclasses.replace(config, epochs=epochs, time_budget=None)
    if run.world.main:
        write_config(run)
    run.epoch_ends = [time.perf_counter()]
    run.budget = {"budget": config.time_budget, "budget_seconds": budget, "spent_before_training": spent, **speed,
                  "steps_per_epoch": steps, "epoch_seconds": epoch, "final_seconds": final,
                  "final_images": final_images, "epochs": epochs, "planned_seconds": planned}
    run.log(f"time budget {config.time_budget} ({budget:.0f} s): {1000 * speed['step_seconds']:.0f} ms per step x "
            f"{steps} steps + {speed['image_seconds'] * len(data.val_y):.1f} s validation = {epoch:.1f} s per "
            f"epoch; final evaluation ~{final:.0f} s; {config.head_epochs + epochs} epochs, planned to end at "
            f"{planned:.0f} s (repeat with --epochs {epochs})"
            + (f"; warning: even 1 epoch needs about {planned:.0f} s" if planned > budget else ""))


def replan_epochs(run: Run, epoch: int, val_seconds: float = 0.0) -> None:
    """``--time-budget``, after each epoch of the main phase: the run's end projected from its
    pace (wall clock between epoch ends, checkpoints included) and the final evaluation scaled
    from this epoch's validation. When it would end after the budget, fewer epochs; when it
    would end before ``LENGTHEN_MARGIN`` of it with room for at least one more epoch, more
    (once a one-cycle schedule has passed its warm-up). Either way the learning rate goes from
    where it is linearly to 0 at the new last epoch (``schedule_cut``, which config.json
    records so that ``--epochs`` with it repeats the run exactly)."""
    config, plan = run.config, run.budget
    phase, i, n = phase_of(config, epoch)
    run.epoch_ends.append(time.perf_counter())
    keep, pace, projected = n, plan["epoch_seconds"], 0.0
    if phase != "head" and i < n:
        ends = run.epoch_ends[-3:]
        paces = [b - a for a, b in zip(ends, ends[1:])]  # the last two epochs' wall time
        pace = paces[-1]  # a slowdown is answered at once (under another process: epochs 42 -> 121 s)
        final = final_seconds(run, plan, val_seconds)
        elapsed = time.perf_counter() - run.started
        projected = elapsed + (n - i) * pace + final
        if projected > plan["budget_seconds"]:
            room = REPLAN_MARGIN * plan["budget_seconds"] - elapsed - final
            keep = i + max(0, min(n - i - 1, int(room // pace)))
        elif may_lengthen(config, i, n):
            pace = max(paces)  # lengthened on the slower of the last two epochs: one fast epoch is no trend
            projected = elapsed + (n - i) * pace + final
            more = i + int((LENGTHEN_MARGIN * plan["budget_seconds"] - elapsed - final) // pace)
            keep = max(n, more)
    keep = broadcast_int(keep, run.world)  # rank 0's clock decides for every rank
    if keep == n:
        return
    cut = f"{n}@{i}"
    run.config = dataclasses.replace(config, epochs=keep,
                                     schedule_cut=f"{config.schedule_cut},{cut}" if config.schedule_cut else cut)
    plan.setdefault("replanned", []).append({"after_epoch": epoch, "epochs_from": n, "epochs_to": keep,
                                             "epoch_seconds": pace, "projected_seconds": projected})
    if run.world.main:  # a run resumed from here goes on with the new plan
        write_config(run)
        save_last(run, epoch)
    ending = "end" if keep > n else "end late"
    run.log(f"time budget: at this pace ({pace:.1f} s an epoch, {plan['epoch_seconds']:.1f} s planned) the run "
            f"would {ending} at {projected:.0f} s of {plan['budget_seconds']:.0f}: {config.head_epochs + n} -> "
            f"{config.head_epochs + keep} epochs, the learning rate going linearly to 0 by the last (repeat with "
            f"--epochs {keep} --schedule-cut {run.config.schedule_cut})")


def may_lengthen(config: TrainConfig, i: int, n: int) -> bool:
    """Whether main epoch ``i`` of ``n`` may be followed by more epochs than planned: not in a
    one-cycle warm-up (the rate would turn down before reaching its peak)."""
    return config.lr_schedule != "onecycle" or i >= ONECYCLE_WARMUP * n


def final_seconds(run: Run, plan: dict, val_seconds: float) -> float:
    """The final evaluation's expected seconds: the planned images at the speed of this
    epoch's validation (``val_seconds``; the plan's timed speed when there is no validation)."""
    per_image = val_seconds / len(run.data.val_y) if val_seconds and len(run.data.val_y) else plan["image_seconds"]
    return per_image * plan.get("final_images", 0) + FINISH_FIXED_SECONDS
