"""The Python API, for notebooks and scripts: the same work as the command line, with results
as objects that draw inline and show a summary table in Jupyter.

``train(**settings)`` trains and returns a ``TrainedRun`` (its folder, metrics, history,
``plot_*``); ``load(path)`` returns a ``Model`` with ``predict`` (paths, Pillow images or
arrays) and ``evaluate`` (a split of its data, or other labelled photos); ``load_dataset`` and
``plot_sample_grid`` look at the data first. Every setting is a field of
``fashionclf.training.config.TrainConfig`` (``fashionclf train --help`` lists them with their why).

Plots draw on the ``ax`` given, or on a new pyplot figure, which Jupyter shows inline.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from fashionclf.data.photos import PhotoError
from fashionclf.errors import UsageError
from fashionclf.inference.tagging import answers
from fashionclf.training.config import TrainConfig
from fashionclf.training.results import Evaluation

DEFAULT_OUT = "runs/train"  # a new run goes to the first free folder of runs/train, runs/train-2, ...


def train(*, out: str | os.PathLike | None = None, exist_ok: bool = False, resume: str | os.PathLike | None = None,
          log: Callable[[str], None] | None = print, **settings) -> "TrainedRun":
    """Train a model, as ``fashionclf train`` does, and return its run.

    ``settings`` are ``TrainConfig``'s fields (``recipe="fast"``, ``model="fast-cnn"``,
    ``epochs=3``, ``data="shop/"`` or a list of paths, ...). ``out``: the run folder (default:
    the first free one of runs/train, runs/train-2, ...); a folder that holds a run is refused
    unless ``exist_ok``. ``resume``: continue that run folder instead. ``log=None`` trains quietly."""
    from fashionclf.training.fit import fit
    from fashionclf.training.rundir import is_run

    settings = checked_settings(settings)
    if out is None and resume is None:
        out, n = DEFAULT_OUT, 2
        while is_run(out):
            out, n = f"{DEFAULT_OUT}-{n}", n + 1
    config = TrainConfig(**settings, out=str(out or resume))
    fit(config, resume=resume, log=log or (lambda _: None), exist_ok=exist_ok)
    return TrainedRun(Path(resume or out))


def checked_settings(settings: dict) -> dict:
    """Keyword settings as ``TrainConfig`` takes them: unknown names refused (listing the valid
    ones), ``data`` as a list of path strings."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "out"]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise UsageError(f"unknown setting {unknown[0]!r}; valid: {', '.join(names)}")
    data = settings.get("data")
    if data is not None:
        settings = {**settings, "data": [str(data)] if isinstance(data, (str, os.PathLike)) else [str(p) for p in data]}
    return settings


def audit(*, output: str | os.PathLike, out: str | os.PathLike = "runs/audit", folds: int = 5,
          rank: str = "self_confidence", log: Callable[[str], None] | None = print, **settings):
    """Find the photos whose label is probably wrong, near-duplicates and outliers, as
    ``fashionclf audit`` does: K-fold out-of-sample answers (``folds`` training runs in
    ``out``), then confident learning. ``settings`` are ``TrainConfig``'s fields (``data=``
    the photos, default Fashion-MNIST's training set; ``init=`` a model to start each fold
    from). Returns the ``AuditResult``: ``suspects`` (as written to ``output``, a CSV that
    must not exist yet), ``noise_table()`` and the files written."""
    from fashionclf.quality.find import AuditSettings
    from fashionclf.quality.find import audit as run_audit

    return run_audit(TrainConfig(**checked_settings(settings)), AuditSettings(str(output), str(out), folds, rank),
                     log=log or (lambda _: None))


@dataclass
class TrainedRun:
    """A run folder written by ``train`` (or ``fashionclf train``): its figures, and plots of them."""

    folder: Path

    def __post_init__(self):
        self.folder = Path(self.folder)
        if not (self.folder / "metrics.json").is_file():
            raise UsageError(f"{self.folder}: no metrics.json; pass a folder written by fashionclf train")

    @cached_property
    def metrics(self) -> dict:
        return json.loads((self.folder / "metrics.json").read_text())

    @cached_property
    def config(self) -> dict:
        return json.loads((self.folder / "config.json").read_text())

    @cached_property
    def history(self) -> list[dict]:
        """Per epoch: phase, train/val loss and accuracy, learning rate, seconds (numbers as floats)."""
        with open(self.folder / "history.csv", newline="") as f:
            return [{k: v if k == "phase" else float(v) for k, v in row.items()} for row in csv.DictReader(f)]

    @property
    def test_accuracy(self) -> float | None:
        """Accuracy on the held-out test split; None for a run that learnt from every photo
        (``calibration="crossfit"``: see ``estimated_accuracy``)."""
        return self.metrics["test_accuracy"]

    @property
    def estimated_accuracy(self) -> float:
        """What to expect on new photos: the test accuracy, or for a cross-fitted run (no test
        split) the fold models' accuracy on the photos each did not learn from."""
        crossfit = self.metrics.get("crossfit")
        return crossfit["accuracy"] if crossfit else self.metrics["test_accuracy"]

    @cached_property
    def model(self) -> "Model":
        return load(self.folder / "model.pt")

    @cached_property
    def evaluation(self) -> Evaluation:
        """The best model on the test split (computed once; also written to FOLDER/eval-test)."""
        return self.model.evaluate("test", verify=self.config.get("verify", True))

    def plot_curves(self, metric: str = "acc", ax=None):
        from fashionclf.evaluation.plots import plot_curves

        return plot_curves(self.history, metric, ax=_axes(ax, (6, 4)))

    def plot_confusion_matrix(self, normalize: bool = True, ax=None):
        k = len(self.metrics["classes"])
        return self.evaluation.plot_confusion_matrix(normalize, ax=_axes(ax, (1.0 + 0.75 * k,) * 2))

    def plot_mistakes(self, limit: int = 24, ax=None):
        return self.evaluation.plot_mistakes(limit, ax=_axes(ax, (12, 2.3 * max(1, -(-limit // 8)))))

    def _repr_html_(self) -> str:
        m = self.metrics
        rows = [("folder", str(self.folder)), ("model", f"{m['model']} ({m['parameters']:,} parameters)"),
                ("classes", ", ".join(m["classes"])),
                ("accuracy", " / ".join(f"{s} {m[f'{s}_accuracy']:.4f}" for s in ("train", "val", "test"))
                 if not m.get("crossfit") else f"train {m['train_accuracy']:.4f} / out-of-sample "
                 f"{m['crossfit']['accuracy']:.4f} ({m['crossfit']['folds']} folds, every photo learnt from)"),
                ("epochs", f"{m['total_epochs']} (best: {m['best_epoch']})"),
                ("training", f"{m['train_seconds']:.1f} s on {m['cpu']}"), ("report", str(self.folder / "report.html"))]
        return _table(rows)


class Model:
    """A trained model (model.pt, its run folder, or model.onnx) ready to tag photos."""

    def __init__(self, path: str | os.PathLike, backend: str = "auto", device: str = "cpu", graph: str = "fp32"):
        from fashionclf.inference.checkpoint import checkpoint_file
        from fashionclf.inference.classifier import load_classifier

        self.path = checkpoint_file(path)
        self.classifier = load_classifier(self.path, backend, device, graph=graph, batch=256)
        self.device = device

    @property
    def classes(self) -> list[str]:
        """The classes (a model of several attributes: its first attribute's values)."""
        return list(self.classifier.classes)

    @property
    def attributes(self) -> list[str] | None:
        """A model of several attributes: their names (first: the one ``classes`` and ``label``
        are of); None for a model of one."""
        return None if self.classifier.schema is None else self.classifier.schema.names

    def predict(self, inputs, top_k: int = 1) -> "Predictions":
        """One row per input: a path (str or Path), a Pillow image, or a uint8 array (H x W grey
        or H x W x 3 colour; a 28x28 Fashion-MNIST image as it is). An input that cannot be
        read gets its row with the error; the others are tagged."""
        from PIL import Image

        from fashionclf.models.contract import top_k as top

        stack = isinstance(inputs, np.ndarray) and (inputs.ndim == 4 or inputs.ndim == 3 and inputs.shape[-1] != 3)
        single = isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray)) and not stack
        items = [inputs] if single else list(inputs)
        rows, arrays, good = [], [], []
        for item in items:
            name = str(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__}>"
            row = {"input": name, "label": "", "confidence": None, "unknown": None, "error": "", "top": []}
            try:
                source = Image.fromarray(np.asarray(item, np.uint8)) if isinstance(item, np.ndarray) else item
                arrays.append(self.classifier.to_input(source))
                good.append(row)
            except PhotoError as exc:
                row["error"] = str(exc)
            rows.append(row)
        if good:
            every, scores = self.classifier.predict_attributes(np.stack(arrays))
            unknown = self.classifier.unknown(scores)
            for i, (row, best) in enumerate(zip(good, top(every[0], self.classes, top_k))):
                row.update(label=best[0][0], confidence=best[0][1], top=best, image=arrays[i],
                           unknown=None if unknown is None else bool(unknown[i]))
                if self.classifier.schema is not None:  # {attribute: (values, confidences)}
                    row["attributes"] = {a.name: (a.values, a.confidences)
                                         for a in answers(self.classifier.schema, every, i)}
        return Predictions(rows)

    def evaluate(self, split: str = "test", data: str | os.PathLike | list | None = None,
                 out: str | os.PathLike | None = None, verify: bool = True) -> Evaluation:
        """Score ``split`` of the model's own data, or of ``data`` (labelled photos: every photo
        the model did not train or validate on), as ``fashionclf evaluate`` does; the report goes
        to ``out`` (default: MODEL_FOLDER/eval-SPLIT). ``verify=False`` accepts a modified
        copy of Fashion-MNIST (no SHA-256 check)."""
        from fashionclf.training.results import evaluate_checkpoint

        if self.path.suffix.lower() == ".onnx":
            raise UsageError(f"{self.path}: evaluate needs the model.pt (its data and splits are recorded there)")
        return evaluate_checkpoint(self.path, split, out, data, verify, device=self.device)

    def _repr_html_(self) -> str:
        info = self.classifier.info
        rows = [("file", str(self.path)), ("model", info.get("model", "")),
                ("backend", self.classifier.backend + (", int8 graph" if self.classifier.graph == "int8" else "")),
                ("classes", ", ".join(self.classes)),
                ("test accuracy", "" if info.get("test_accuracy") is None else f"{info['test_accuracy']:.4f}"),
                ("unknown items", "flagged" if self.classifier.threshold is not None else "not calibrated")]
        return _table(rows)


class Predictions(list):
    """``Model.predict``'s rows (dicts: input, label, confidence, unknown, error, top k; a model
    of several attributes adds ``attributes``: {name: (values, confidences)}), shown in Jupyter
    as a table with the image each was made from."""

    def labels(self, attribute: str | None = None) -> list[str]:
        """Each row's label, or its value of ``attribute`` (several values ``;``-joined)."""
        if attribute is None:
            return [row["label"] for row in self]
        return [";".join(row["attributes"][attribute][0]) if "attributes" in row else "" for row in self]

    def _repr_html_(self) -> str:
        names = next((list(row["attributes"])[1:] for row in self if "attributes" in row), [])
        head = ("<tr><th></th><th>input</th><th>label</th><th>confidence</th>"
                + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "<th>unknown</th><th>error</th></tr>")

        def answer(row, name) -> str:
            values, confidences = row.get("attributes", {}).get(name, ([], []))
            return html.escape(", ".join(f"{v} ({c:.0%})" for v, c in zip(values, confidences)))

        body = "".join(
            f"<tr><td>{_thumbnail(row.get('image'))}</td><td>{html.escape(row['input'])}</td>"
            f"<td>{html.escape(row['label'])}</td>"
            f"<td>{'' if row['confidence'] is None else format(row['confidence'], '.1%')}</td>"
            + "".join(f"<td>{answer(row, n)}</td>" for n in names)
            + f"<td>{'' if row['unknown'] is None else row['unknown']}</td><td>{html.escape(row['error'])}</td></tr>"
            for row in self)
        return f"<table>{head}{body}</table>"


def load(path: str | os.PathLike, backend: str = "auto", device: str = "cpu", graph: str = "fp32") -> Model:
    """A trained model: model.pt, its run folder, or model.onnx (``backend``: auto, torch, onnx;
    ``graph``, for a model.pt through ONNX Runtime: fp32, int8 or fastest, as ``predict --graph``)."""
    return Model(path, backend, device, graph)


def load_dataset(data: str | os.PathLike | Iterable | None = None, classes: str | list | None = None,
                 verify: bool = True):
    """Fashion-MNIST (found or fetched, verified) or a shop's labelled photos, as a ``Dataset``
    (``.train``/``.test`` images and labels, ``.classes``)."""
    from fashionclf.data.sources import load_data

    return load_data(data, classes, verify, log=print)


def plot_sample_grid(dataset, rows: int = 4, cols: int = 8, seed: int = 0, ax=None):
    """A labelled grid of random training images of ``dataset`` (``load_dataset``)."""
    from fashionclf.evaluation.plots import plot_sample_grid as draw

    return draw(dataset.train.images, dataset.train.labels, dataset.classes, rows, cols, seed,
                ax=_axes(ax, (cols * 1.3, rows * 1.5)))


def _axes(ax, figsize: tuple[float, float]):
    """``ax``, or the axes of a new pyplot figure (Jupyter draws those inline)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained").subplots()


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                               f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _thumbnail(image: np.ndarray | None) -> str:
    """The model's input image as an inline PNG (what the model saw)."""
    if image is None:
        return ""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}' width='56'>"
