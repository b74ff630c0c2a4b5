"""Hyper-parameter search with Optuna: ``fashionclf tune``.

Each trial is an ordinary training run in its own folder (``OUT/trial-NNNN``) with settings
drawn from the recipe's search space (``SPACES``, or a ``--space`` file); it reports its
validation accuracy after every epoch, and the median pruner stops a trial whose accuracy at
an epoch is below the median of earlier trials at the same epoch (median rather than
Hyperband: with tens of trials of a few epochs, Hyperband's brackets leave too few trials
per rung to compare). Trials never look at the test split: the study maximises the best
validation accuracy, and only the winner is evaluated on test, once, at the end.

Storage: a SQLite file in the output folder by default; ``journal:PATH`` for Optuna's
journal file (a shared file system); any SQLAlchemy URL, e.g. ``postgresql://...``, for
several machines. Workers started anywhere with the same ``--study`` and ``--storage`` join
one study and share its ``--n-trials`` (counted over finished and pruned trials). A killed
worker loses only its running trial: database storages notice the missing heartbeat and
retry the trial once; on any storage, a worker marks as failed the running trials of dead
processes of its own machine when it starts and when it ends.

Optuna is an optional dependency: ``pip install 'fashionclf[scale]'``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from fashionclf.errors import TrainingDiverged, UsageError
from fashionclf.fileio import write_bytes_atomic, write_json
from fashionclf.training.config import TrainConfig, flag_of

# A search space: setting -> {"log": [low, high]} | {"float": [low, high]} | {"int": [low, high]}
# | {"choice": [values]}. Ranges bracket each recipe's hand-tuned value.
SPACES: dict[str, dict] = {
    "fast": {
        "lr": {"log": [1e-3, 1e-2]},  # hand-tuned: 3e-3
        "weight_decay": {"log": [5e-3, 0.2]},  # 0.05
        "batch_size": {"choice": [64, 128, 256]},  # 128
        "label_smoothing": {"float": [0.0, 0.2]},  # 0.1
        "epochs": {"int": [2, 5]},  # 3
    },
    "strong": {
        "lr": {"log": [0.01, 0.2]},  # 0.05
        "weight_decay": {"log": [1e-4, 2e-3]},  # 5e-4
        "batch_size": {"choice": [64, 128, 256]},  # 128
        "label_smoothing": {"float": [0.0, 0.2]},  # 0.1
        "augment": {"choice": ["flip,shift,erase", "flip,shift", "flip,erase", "flip"]},
        "epochs": {"int": [8, 30]},  # the 10-minute budget buys 23-36, depending on the CPU
    },
    "model": {  # --model NAME without a recipe: the generic knobs around the table's defaults
        "lr": {"log": [1e-4, 1e-2]},
        "weight_decay": {"log": [1e-6, 1e-2]},
        "batch_size": {"choice": [32, 64, 128]},
        "label_smoothing": {"float": [0.0, 0.2]},
        "epochs": {"int": [3, 15]},
    },
}
KINDS = ("log", "float", "int", "choice")
HEARTBEAT_SECONDS = 30  # a database storage declares a trial dead after GRACE_SECONDS without one
GRACE_SECONDS = 120


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UsageError("fashionclf tune needs Optuna: pip install 'fashionclf[scale]'") from None
    return optuna


def load_space(recipe: str | None, path: str | os.PathLike | None = None) -> dict:
    """The recipe's search space, with ``path`` (JSON or TOML, same form as ``SPACES``)
    merged over it: its keys replace or add settings, a key set to null (JSON) removes one."""
    space = dict(SPACES[recipe if recipe in SPACES else "model"])
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--space {path}: cannot read it ({exc.strerror if isinstance(exc, OSError) else exc}); "
                             "pass a JSON or TOML file of settings and ranges") from None
        try:
            if str(path).endswith(".toml"):
                import tomllib

                override = tomllib.loads(text)
            else:
                override = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--space {path}: not valid {'TOML' if str(path).endswith('.toml') else 'JSON'} "
                             f"({exc})") from None
        for name, spec in override.items():
            if spec is None:
                space.pop(name, None)
            else:
                space[name] = spec
    settings = {f.name for f in dataclasses.fields(TrainConfig)} - {"out", "seed", "data", "recipe", "model", "init"}
    for name, spec in space.items():
        if name not in settings:
            raise UsageError(f"search space: {name!r} is not a training setting; valid: {', '.join(sorted(settings))}")
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
            raise UsageError(f"search space: {name}: expected one of {{{', '.join(KINDS)}: ...}}, got {spec!r}")
        kind, values = next(iter(spec.items()))
        if kind != "choice" and not (isinstance(values, list) and len(values) == 2 and values[0] < values[1]):
            raise UsageError(f"search space: {name}: {kind} takes [low, high] with low < high, got {values!r}")
        if kind == "log" and values[0] <= 0:
            raise UsageError(f"search space: {name}: a log range must be above 0, got {values!r}")
        if kind == "choice" and not (isinstance(values, list) and values):
            raise UsageError(f"search space: {name}: choice takes a non-empty list, got {values!r}")
    return space


def suggest(trial, space: dict) -> dict:
    """One value per setting of ``space``, drawn by ``trial``."""
    params = {}
    for name, spec in space.items():
        kind, values = next(iter(spec.items()))
        if kind == "choice":
            params[name] = trial.suggest_categorical(name, values)
        elif kind == "int":
            params[name] = trial.suggest_int(name, int(values[0]), int(values[1]))
        else:
            params[name] = trial.suggest_float(name, float(values[0]), float(values[1]), log=kind == "log")
    return params


def open_storage(url: str | None, out: Path):
    """``None`` -> SQLite in ``out``; ``journal:PATH`` -> a journal file; else a database URL."""
    optuna = _optuna()
    if url is None:
        url = f"sqlite:///{(out / 'study.db').resolve()}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.split(":", 1)[1]))
    if url.startswith(("postgresql://", "postgres://")):  # SQLAlchemy's default driver is psycopg2; ours is psycopg 3
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # workers wait for the lock

    def rdb():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))

    try:
        try:
            return rdb()
        except Exception:  # workers starting together race to create the tables: the loser tries again
            time.sleep(1 + random.random())
            return rdb()
    except Exception as exc:  # a bad URL, a missing driver, a server that does not answer
        raise UsageError(f"--storage {url}: cannot open it ({type(exc).__name__}: {exc})") from None


def fail_dead_local_trials(study) -> int:
    """Mark as failed the running trials of processes of this machine that no longer exist."""
    optuna = _optuna()
    host, failed = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and pid and pid != os.getpid() and not _alive(pid):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            failed += 1
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class TuneSettings:
    """What a tuning worker needs, parsed once (``fashionclf tune``'s flags; the training
    settings every trial starts from travel beside it as a ``TrainConfig``)."""

    recipe: str | None = None
    model: str | None = None
    space: dict = field(default_factory=dict)  # resolved: ``load_space``
    study: str = "fashionclf"
    storage: str | None = None  # None: SQLite in ``out``
    n_trials: int = 20  # over every worker
    timeout: float | None = None  # seconds; None: no limit
    jobs: int = 1  # worker processes on this machine
    out: Path = Path("runs/tune")

    def __post_init__(self):
        self.out = Path(self.out)


def run_worker(settings: TuneSettings, base: TrainConfig, log=print) -> None:
    """One worker: trials of the study until ``settings.n_trials`` have finished or been
    pruned in all (over every worker), or ``settings.timeout`` seconds."""
    optuna = _optuna()
    out = settings.out
    storage = open_storage(settings.storage, out)
    study = optuna.create_study(study_name=settings.study, storage=storage, direction="maximize",
                                load_if_exists=True,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
                                sampler=optuna.samplers.TPESampler(seed=None))
    fail_dead_local_trials(study)
    from fashionclf.training.fit import fit

    def objective(trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = suggest(trial, settings.space)
        folder = out / f"trial-{trial.number:04d}"
        config = dataclasses.replace(base, out=str(folder), **params,
                                     **({"time_budget": None} if "epochs" in params else {}))
        lines = []

        def report(epoch: int, val_accuracy: float) -> None:
            trial.report(val_accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {val_accuracy:.4f} at epoch {epoch}")

        trial.set_user_attr("run_dir", str(folder.resolve()))  # where the summary of any worker finds it
        try:
            result = fit(config, log=lines.append, after_epoch=report, final_evaluation=False)
        finally:
            if folder.is_dir():
                write_bytes_atomic(folder / "train.log", ("\n".join(lines) + "\n").encode())
            if (folder / "config.json").is_file():  # best.json, even where this folder cannot be read
                trial.set_user_attr("config", json.loads((folder / "config.json").read_text()))
        return float(result["best"]["val_acc"])

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    callback = optuna.study.MaxTrialsCallback(settings.n_trials, states=done)
    if len(study.get_trials(deepcopy=False, states=done)) < settings.n_trials:
        # A diverging trial (too high a learning rate) fails alone; the study goes on.
        study.optimize(objective, n_trials=settings.n_trials, timeout=settings.timeout, callbacks=[callback],
                       catch=(TrainingDiverged,))
    fail_dead_local_trials(study)


def tune(settings: TuneSettings, base: TrainConfig, log=print) -> dict:
    """``fashionclf tune``: ``settings.jobs`` workers on this machine (each with cores / jobs
    threads unless ``base.threads`` says), then the best trial evaluated on test once and the
    study's files written (``summarise``)."""
    if settings.recipe is None and settings.model is None:
        raise UsageError("fashionclf tune needs --recipe NAME or --model NAME (the settings to search around)")
    _optuna()
    settings.out.mkdir(parents=True, exist_ok=True)
    base = dataclasses.replace(base, recipe=settings.recipe, model=settings.model,
                               threads=base.threads or max(1, (os.cpu_count() or 1) // settings.jobs))
    log(f"study {settings.study!r} in {settings.storage or settings.out / 'study.db'}: {settings.n_trials} trials in "
        f"all, {settings.jobs} worker(s) here with {base.threads} thread(s) each; search space: "
        f"{', '.join(settings.space)}")
    # The other workers of this machine: processes of their own (each trains with its own threads),
    # handed the same two objects.
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=run_worker, args=(settings, base, _quiet)) for _ in range(settings.jobs - 1)]
    for w in workers:
        w.start()
    try:
        run_worker(settings, base, log=log)
    finally:
        for w in workers:
            w.join()
    return summarise(settings.study, settings.storage, settings.out, log)


def _quiet(*_) -> None:
    """The log of the extra workers: the first one speaks for this machine."""


def summarise(study_name: str, storage_url: str | None, out: Path, log=print) -> dict:
    """trials.csv, best.json (a config for ``fashionclf train --config``), the winner evaluated
    on test once (its run folder completed: metrics.json, report.html), plots and report.html."""
    optuna = _optuna()
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, out))
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    rows = [{"number": t.number, "state": t.state.name, "val_accuracy": t.value,
             "epochs_reported": len(t.intermediate_values),
             "seconds": t.duration.total_seconds() if t.duration else None,
             **{k: t.params.get(k) for k in names}} for t in trials]
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["number", "state", "val_accuracy", "epochs_reported", "seconds", *names])
        writer.writeheader()
        writer.writerows(rows)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    counts = {state: sum(r["state"] == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    if not complete:
        raise UsageError(f"study {study_name!r}: no trial has finished yet ({counts}); run more trials")
    best = study.best_trial
    best_dir = Path(best.user_attrs.get("run_dir") or out / f"trial-{best.number:04d}")
    where = f"{best.user_attrs['host']}:{best_dir}" if "host" in best.user_attrs else str(best_dir)
    metrics = evaluate_trial(best_dir)
    config = dict(best.user_attrs.get("config") or json.loads((best_dir / "config.json").read_text()))
    config.pop("out", None)
    write_json(config, out / "best.json")
    plots = plot_study(study, out)
    test = None if metrics is None else metrics["test_accuracy"]
    summary = {"study": study_name, "trials": counts, "best_trial": best.number, "best_params": best.params,
               "best_val_accuracy": best.value, "test_accuracy": test, "best_run": str(best_dir),
               "best_host": best.user_attrs.get("host"), "plots": plots}
    write_json(summary, out / "summary.json")
    write_study_report(summary, rows, out)
    again = (f"fashionclf tune --evaluate-best --study {study_name}"
             + (f" --storage {storage_url}" if storage_url else "") + f" --out {out}")
    log(f"{counts['COMPLETE']} trials finished, {counts['PRUNED']} pruned, {counts['FAIL']} failed; best: trial "
        f"{best.number}, val {best.value:.4f}, "
        + (f"test {test:.4f}" if test is not None else "test not evaluated") + f" ({_flags(best.params)}), "
        f"its run in {where}; fashionclf train --config {out / 'best.json'} repeats it; report: {out / 'report.html'}")
    if metrics is None:
        log(f"note: the winner's run folder {where} cannot be read from here; to evaluate it on test, run "
            f"'{again}' on that machine")
    return summary


def evaluate_trial(folder: Path) -> dict | None:
    """The winner's test figures: its metrics.json, or its run evaluated now (once: a worker
    that finds another evaluating it waits and reads the figures); None when its folder
    cannot be read from here (another machine's)."""
    from fashionclf.training.fit import fit
    from fashionclf.training.rundir import RunBusy, claim

    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    if not (folder / "last.pt").is_file():
        return None
    try:
        return fit(TrainConfig(), resume=folder, log=lambda *_: None)  # test, once, for the winner only
    except RunBusy:
        with claim(folder, resume=True, wait=True):
            return json.loads((folder / "metrics.json").read_text())


def _flags(params: dict) -> str:
    return " ".join(f"{flag_of(k)} {v:.3g}" if isinstance(v, float) else f"{flag_of(k)} {v}" for k, v in params.items())


def plot_study(study, out: Path) -> dict:
    """Optimisation history, parameter importances and parallel coordinates as PNGs (each only
    when the study has what it needs: importances take two finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    written = {}
    for name, plot in (("history", vis.plot_optimization_history), ("importances", vis.plot_param_importances),
                       ("parallel", vis.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's notes on its plotting API and on tiny studies
                ax = plot(study)
        except (ValueError, RuntimeError):  # too few finished trials for this plot
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        written[name] = f"{name}.png"
    return written


def write_study_report(summary: dict, rows: list[dict], out: Path) -> None:
    import html

    def cell(v) -> str:
        return "" if v is None else html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))

    test = ("test accuracy not evaluated yet" if summary["test_accuracy"] is None
            else f"test accuracy {summary['test_accuracy']:.4f}")
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    images = "".join(f'<h2>{html.escape(k)}</h2><img src="{html.escape(v)}" alt="{html.escape(k)}">'
                     for k, v in summary["plots"].items())
    page = (f"<!doctype html><meta charset=utf-8><title>fashionclf tune: {html.escape(summary['study'])}</title>"
            f"<h1>Study {html.escape(summary['study'])}</h1><p>Best: trial {summary['best_trial']}, validation "
            f"accuracy {summary['best_val_accuracy']:.4f}, {test} (the test split is evaluated for this trial "
            f"only; its run: <code>{html.escape(str(summary['best_host']))}:{html.escape(summary['best_run'])}"
            f"</code>); settings: <code>{html.escape(_flags(summary['best_params']))}</code>. Trials: "
            f"{html.escape(json.dumps(summary['trials']))}.</p>{images}"
            f"<h2>Trials</h2><table border=1 cellspacing=0 cellpadding=3><tr>{head}</tr>{body}</table>")
    write_bytes_atomic(out / "report.html", page.encode())


