"""The shape of the code: no import cycles, a torch-free command line, a training recipe that
fits on one screen, one source for settings, plots that draw where they are told."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import fashionclf

PACKAGE = Path(fashionclf.__file__).parent


def module_imports() -> dict[str, set[str]]:
    """Every fashionclf module -> the fashionclf modules it imports (at any depth in its code)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["fashionclf", *path.relative_to(PACKAGE).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    edges = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join(here + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_a_module_that_imports_it_back():
    edges = module_imports()
    assert "fashionclf.models._registry" in edges and edges["fashionclf.inference.checkpoint"]  # the walk sees the code
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


# What each subpackage may import, as its __init__ docstring says (the shared modules at the
# top, errors, fileio, device and _version, are open to all).
ALLOWED = {
    "data": {"evaluation"},  # plots: the sample grid of `fashionclf data --grid`
    "models": set(),
    "evaluation": {"data", "models"},
    "training": {"data", "models", "evaluation", "inference"},
    "inference": {"data", "models", "evaluation", "training", "scale"},
    "service": {"data", "models", "inference", "training"},
    "scale": {"training", "inference"},
    "quality": {"data", "models", "evaluation", "training", "inference"},
    "review": {"data", "inference", "service", "training"},
}
SHARED = {"fashionclf.errors", "fashionclf.fileio", "fashionclf.device", "fashionclf._version"}


def test_subpackages_import_only_what_they_say():
    def package(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 or module in (f"fashionclf.{p}" for p in ALLOWED) else None

    assert set(ALLOWED) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    wrong = [f"{a} -> {b}" for a, targets in module_imports().items() for b in targets
             if package(a) and b not in SHARED and package(b) != package(a)
             and package(b) not in ALLOWED[package(a)]]
    assert not wrong, wrong


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_command_line_starts_without_torch():
    code = ("import sys, fashionclf.cli as c; c.build_parser(); "
            "bad = [m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    version = subprocess.run([sys.executable, "-m", "fashionclf", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"fashionclf {fashionclf.__version__}"


def test_fit_reads_as_a_recipe_on_one_screen():
    from fashionclf.training.fit import _fit, fit

    assert len(inspect.getsource(fit).splitlines()) <= 40 and len(inspect.getsource(_fit).splitlines()) <= 40 and len(inspect.getsource(_fit).splitlines()) <= 40


def test_every_setting_has_help_and_a_flag():
    import argparse
    from dataclasses import fields

    from fashionclf.training.config import TrainConfig, add_flags, defaults

    parser = argparse.ArgumentParser()
    add_flags(parser)
    dests = {a.dest for a in parser._actions}
    for f in fields(TrainConfig):
        assert f.metadata["help"], f.name
        assert f.name in dests, f.name
    assert defaults()["epochs"] == 10 and defaults()["model"] == "one-block-cnn"
    help_text = parser.format_help()
    assert "Keras' default" in help_text  # the why travels into --help


def test_project_errors_exit_2_but_bugs_are_not_hidden(monkeypatch, capsys):
    from fashionclf.cli import main
    from fashionclf.data import sources as data
    from fashionclf.errors import DataError

    monkeypatch.setattr(data, "describe", lambda *a, **k: (_ for _ in ()).throw(DataError("no data here")))
    assert main(["data"]) == 2
    assert capsys.readouterr().err.strip() == "fashionclf: error: no data here"
    monkeypatch.setattr(data, "describe", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        main(["data"])


@pytest.mark.parametrize("version, fragment", [(99, "upgrade fashionclf"), (0, "version that wrote it")])
def test_a_checkpoint_of_another_format_version_is_refused_with_the_fix(tmp_path, version, fragment):
    import torch
    from helpers import save_untrained_checkpoint

    from fashionclf.errors import UsageError
    from fashionclf.inference.checkpoint import load_checkpoint

    path = save_untrained_checkpoint(tmp_path / "model.pt")
    ckpt = torch.load(path, weights_only=True)
    assert load_checkpoint(path).classes == ckpt["classes"] and ckpt["version"] == 1
    torch.save(dict(ckpt, version=version), path)
    with pytest.raises(UsageError, match=fragment):
        load_checkpoint(path)


def test_every_plot_draws_on_the_axes_it_is_given(tmp_path):
    import numpy as np
    from matplotlib.figure import Figure

    from fashionclf.evaluation import plots
    from fashionclf.evaluation.metrics import EvalResult

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 40)
    result = EvalResult("test", ["a", "b", "c"], rng.integers(0, 3, 40), probs.argmax(1), probs, 1.0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    history = [{"epoch": 1, "phase": "train", "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4},
               {"epoch": 2, "phase": "train", "train_loss": 0.8, "train_acc": 0.6, "val_loss": 0.9, "val_acc": 0.5}]
    calls = {"confusion": lambda ax: plots.plot_confusion_matrix(result, ax=ax),
             "mistakes": lambda ax: plots.plot_mistakes(result, images, ax=ax),
             "curves": lambda ax: plots.plot_curves(history, "loss", ax=ax),
             "grid": lambda ax: plots.plot_sample_grid(images, result.y_true, result.classes, 2, 4, ax=ax)}
    for name, call in calls.items():
        fig = Figure()
        ax = fig.subplots()
        assert call(ax) is ax, name
        assert ax.has_data() or ax.texts, name
        own = call(None)  # without an axes: a new figure of its own
        assert own is not ax and own.figure is not fig
        plots.save(own.figure, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_an_evaluation_computes_its_confusion_matrix_once(tmp_path, monkeypatch):
    import numpy as np
    import sklearn.metrics

    from fashionclf.evaluation.metrics import EvalResult, write_evaluation

    calls = []
    real = sklearn.metrics.confusion_matrix
    monkeypatch.setattr(sklearn.metrics, "confusion_matrix", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 30)
    result = EvalResult("test", ["a", "b", "c"], rng.integers(0, 3, 30), probs.argmax(1), probs, 1.0)
    accuracies = {"train": 0.9, "val": 0.5, "test": result.accuracy}
    write_evaluation(result, rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), tmp_path, accuracies,
                     {"model": "x"})
    result.summary()
    assert len(calls) == 1
    assert (tmp_path / "report.html").is_file()


def test_the_command_lines_choices_are_the_contracts():
    from fashionclf.models import contract
    from fashionclf.training import config

    assert config.TTA_CHOICES == contract.TTA_CHOICES
