"""Batch tagging: photos in, one row per input out; an error in one row never stops the batch.

Inputs are files, directories (searched recursively for image suffixes) and glob patterns
(``photos/**/*.jpg``). Each image goes through the model's photo conversion
(``fashionclf.data.photos.photo_converter``: ``photo_to_28`` for the grey models, so shop photos and
the dataset's own 28x28 images both work), batches go through a ``Classifier``
(PyTorch or ONNX Runtime) and rows are written as soon as their batch is done: memory stays
bounded by the batch size, whatever the number of files.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from tqdm import tqdm

from fashionclf.data.attributes import Schema
from fashionclf.data.photos import IMAGE_SUFFIXES
from fashionclf.errors import UsageError
from fashionclf.fileio import csv_cell, fsync_dir
from fashionclf.inference.classifier import Classifier, load_classifier
from fashionclf.inference.tagging import Prediction, classify
from fashionclf.training.config import PREDICT_BATCH_SIZE


def iter_inputs(inputs: Iterable[str]) -> Iterator[Path]:
    """Files as given; directories walked recursively (sorted) to every entry with an image
    suffix; glob patterns expanded (``**`` included). Every path gets its row, links included:
    two products may share one photo through a link, and each is a row of the catalogue; only
    the very same path reached twice (``photos/`` and ``photos/a.jpg`` both given) gives one.
    Walks never follow links to directories (a ``loop -> .`` link would repeat every file, two
    would explode). Names that do not exist, directories named like images, dangling links and
    FIFOs are kept, so that their rows say what is wrong."""
    seen: set[str] = set()
    for path in _expand(inputs):
        key = os.path.normpath(path)
        if key not in seen:
            seen.add(key)
            yield path


def _expand(inputs: Iterable[str]) -> Iterator[Path]:
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            yield from _walk(p)
        elif not p.exists() and not p.is_symlink() and glob.has_magic(item):
            base, pattern = _split_pattern(p)
            matches = sorted(base.glob(pattern)) if pattern else []  # pathlib: links to directories not followed
            if not matches:
                yield p  # reported as "no such file"
            for q in matches:
                if q.is_dir() and not q.is_symlink():
                    yield from _walk(q)
                else:
                    yield q
        else:
            yield p


def _walk(directory: Path) -> list[Path]:
    return sorted(q for q in directory.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)


def _split_pattern(pattern: Path) -> tuple[Path, str]:
    """``photos/2026/**/*.jpg`` -> (``photos/2026``, ``**/*.jpg``): the fixed start and the rest."""
    parts = pattern.parts
    i = next(k for k, part in enumerate(parts) if glob.has_magic(part))
    return Path(*parts[:i]) if i else Path("."), "/".join(parts[i:])




def display_path(path: str) -> str:
    """A path as text that any output can carry: bytes that are not UTF-8 (kept by Python as
    lone surrogates) are shown as ``\\xNN`` instead of crashing the writer."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class RowWriter:
    """CSV ``path,label,confidence,error`` (+ ``label_K,confidence_K`` for ``--top-k``, +
    ``low_confidence`` with ``--min-confidence``) + ``unknown``, or a JSON list, written row by row.
    ``unknown`` is true for an item of none of the model's classes (its label is still the
    most likely class), empty where the model has no calibrated threshold.

    Every CSV field is quoted (a ``\\r`` or newline in a file name stays inside its row) and
    text cells that would start a spreadsheet formula get a leading apostrophe; paths whose
    bytes are not UTF-8 are written with ``\\xNN`` escapes."""

    def __init__(self, out: TextIO, fmt: str = "csv", top_k: int = 1, flag_low: bool = False,
                 schema: Schema | None = None):
        self.out, self.fmt, self.top_k, self.flag_low, self.schema = out, fmt, top_k, flag_low, schema
        self.count = 0
        if schema is not None and top_k > 1:
            raise UsageError("--top-k is for models of one attribute; this model answers per attribute "
                             f"({', '.join(schema.names)}): leave --top-k out")
        if fmt == "csv" and schema is not None:
            self.csv = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
            columns = [c for name in schema.names for c in (name, f"{name}_confidence")]
            self.csv.writerow(["path", *columns] + (["low_confidence"] if flag_low else []) + ["unknown", "error"])
        elif fmt == "csv":
            self.csv = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
            header = ["path", "label", "confidence", "error"]
            for k in range(2, top_k + 1):
                header += [f"label_{k}", f"confidence_{k}"]
            self.csv.writerow(header + (["low_confidence"] if flag_low else []) + ["unknown"])
        else:
            out.write("[")

    def write(self, r: Prediction) -> None:
        if self.schema is not None:
            self.write_attributes(r)
        elif self.fmt == "json":
            item = {"path": display_path(r.path), "label": r.label or None, "confidence": r.confidence, "unknown": r.unknown,
                    "error": r.error or None,
                    "top": [{"label": lab, "confidence": c} for lab, c in r.top]}
            if self.flag_low:
                item["low_confidence"] = r.low_confidence
            self.out.write(("," if self.count else "") + "\n  " + json.dumps(item))
        else:
            line = [csv_cell(display_path(r.path)), csv_cell(r.label), "" if r.confidence is None else f"{r.confidence:.6f}",
                    csv_cell(r.error)]
            for k in range(1, self.top_k):
                line += [csv_cell(r.top[k][0]), f"{r.top[k][1]:.6f}"] if k < len(r.top) else ["", ""]
            if self.flag_low:
                line.append("" if r.error else str(r.low_confidence).lower())
            line.append("" if r.unknown is None else str(r.unknown).lower())
            self.csv.writerow(line)
        self.count += 1

    def write_attributes(self, r: Prediction) -> None:
        """A row of a model of several attributes: CSV ``path``, ``<attribute>`` and
        ``<attribute>_confidence`` per attribute (a multi-label one's values and confidences
        ``;``-joined), [``low_confidence``], ``unknown``, ``error``; JSON nested per attribute."""
        if self.fmt == "json":
            item = {"path": display_path(r.path), "attributes": {
                a.name: ({"values": a.values, "confidences": a.confidences} if a.multi
                         else {"value": a.values[0], "confidence": a.confidences[0]}) for a in r.attributes} or None,
                "unknown": r.unknown, "error": r.error or None}
            if self.flag_low:
                item["low_confidence"] = r.low_confidence
            self.out.write(("," if self.count else "") + "\n  " + json.dumps(item))
        else:
            cells = [c for a in r.attributes for c in (csv_cell(";".join(a.values)),
                                                         ";".join(f"{c:.6f}" for c in a.confidences))]
            line = [csv_cell(display_path(r.path)), *(cells or [""] * (2 * len(self.schema.attributes)))]
            if self.flag_low:
                line.append("" if r.error else str(r.low_confidence).lower())
            self.csv.writerow(line + ["" if r.unknown is None else str(r.unknown).lower(), csv_cell(r.error)])
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "]\n")


REVIEW_CSV = "review.csv"
REVIEW_FIELDS = ["source", "copy", "label", "confidence", "unknown", "low_confidence"]


def folder_name(label: str) -> str:
    """A class name as a folder name: path separators become "_", and a leading "." or "_"
    (folders the data loader ignores) is dropped."""
    name = label.replace("/", "_").replace(os.sep, "_").replace("\0", "_").lstrip("._")
    return name or "_unnamed"


class ReviewFolder:
    """``--review DIR``: every photo that is unknown or below ``--min-confidence`` is hard-linked
    (copied across file systems) into ``DIR/<predicted label>/`` and listed in ``DIR/review.csv``.
    A person moves the misplaced ones to the right folder (or to ``DIR/_unknown``, which
    training ignores); ``fashionclf train --data LABELLED --data DIR`` then learns from both."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.file = open(self.root / REVIEW_CSV, "a", newline="", encoding="utf-8")
        self.csv = csv.writer(self.file, lineterminator="\n", quoting=csv.QUOTE_ALL)
        if self.file.tell() == 0:
            self.csv.writerow(REVIEW_FIELDS)
        self.count = 0

    def add(self, row: Prediction, label: str, confidence: float, low: bool) -> None:
        """File ``row``'s photo under ``label`` (the first attribute's value, or the attribute's
        that ``--review-attribute`` names, with its ``confidence`` and whether it is ``low``)."""
        source = Path(row.path)
        folder = self.root / folder_name(label)
        folder.mkdir(exist_ok=True)
        target = folder / source.name
        n = 1
        while target.exists():  # another photo of the same name: keep both
            if target.is_file() and os.path.samefile(target, source):
                break
            target = folder / f"{source.stem}-{n}{source.suffix}"
            n += 1
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:  # another file system, or links not allowed: a copy
                shutil.copy2(source, target)
        self.csv.writerow([csv_cell(display_path(str(source))), csv_cell(display_path(str(target))),
                           csv_cell(label), f"{confidence:.6f}",
                           "" if row.unknown is None else str(row.unknown).lower(), str(low).lower()])
        self.count += 1

    def close(self) -> None:
        self.file.close()


def load_checked(checkpoint: str | os.PathLike, backend: str, device: str, top_k: int, graph: str = "fp32",
                 batch: int = PREDICT_BATCH_SIZE) -> Classifier:
    classifier = load_classifier(checkpoint, backend, device, graph=graph, batch=batch)
    if classifier.graph_note:
        print(classifier.graph_note, file=sys.stderr)
    if not 1 <= top_k <= len(classifier.classes):
        raise UsageError(f"--top-k must be between 1 and {len(classifier.classes)} (the number of classes), "
                         f"got {top_k}")
    return classifier


@dataclass
class TagSettings:
    """How ``fashionclf predict`` tags (its flags, parsed once)."""

    fmt: str = "csv"  # or "json"
    top_k: int = 1
    batch_size: int = PREDICT_BATCH_SIZE
    min_confidence: float | None = None  # given: a low_confidence column, true below it
    backend: str = "auto"  # the file's own kind; or torch, onnx
    device: str = "cpu"
    progress: bool | None = None  # None: a bar on a terminal only
    review: str | os.PathLike | None = None  # a folder for the photos a person should check
    review_attribute: str | None = None  # a model of several attributes: review this one's answers (default: the first)
    dask: str | None = None  # a Dask scheduler address, or local:N
    explain: str | os.PathLike | None = None  # a folder for a heatmap per photo (``inference.explain``)
    graph: str = "fp32"  # a model.pt's ONNX graph: fp32, int8 or fastest (``classifier.load_classifier``)


def tag_files(checkpoint: str | os.PathLike, inputs: list[str], out: TextIO = sys.stdout,
              settings: TagSettings = TagSettings()) -> dict:
    """Tag every input and write its row to ``out``; return counts (rows, failed, low_confidence,
    unknown, review). ``settings.review``: a folder for the photos a person should check
    (``ReviewFolder``). ``settings.dask``: tag on a Dask cluster (``fashionclf.scale.cluster``;
    ONNX Runtime unless ``backend`` says otherwise), with the same rows in the same order."""
    s = settings
    backend = s.backend
    if s.dask and backend == "auto" and Path(checkpoint).suffix.lower() != ".onnx":
        backend = "onnx"  # one graph per worker process, exported once and kept beside the checkpoint
    # checked here, before any worker starts
    classifier = load_checked(checkpoint, backend, s.device, s.top_k, s.graph, s.batch_size)
    if classifier.graph == "int8" and Path(checkpoint).suffix.lower() != ".onnx":
        from fashionclf.inference.classifier import int8_file

        checkpoint = int8_file(Path(checkpoint))  # the graph chosen, for Dask's workers too
    if s.min_confidence is not None and not 0 <= s.min_confidence <= 1:
        raise UsageError(f"--min-confidence takes a probability between 0 and 1, got {s.min_confidence}")
    paths = iter_inputs(inputs)
    first = next(paths, None)
    if first is None:
        raise UsageError(f"no image files found in {', '.join(inputs)}")
    writer = RowWriter(out, s.fmt, s.top_k, flag_low=s.min_confidence is not None, schema=classifier.schema)
    review_index = review_attribute(classifier, s.review_attribute)
    counts = {"rows": 0, "failed": 0, "low_confidence": 0, "unknown": 0, "review": 0}
    reviewer = ReviewFolder(s.review) if s.review is not None else None
    explainer = None
    if s.explain is not None:
        from fashionclf.inference.explain import ExplainFolder

        explainer = ExplainFolder(s.explain, checkpoint, list(classifier.classes))
    bar = tqdm(desc="tagging", unit="img", disable=None if s.progress is None else not s.progress, file=sys.stderr)
    if s.dask:
        from fashionclf.scale.cluster import dask_classify

        rows = dask_classify(s.dask, checkpoint, backend, _chain(first, paths), s.top_k, s.batch_size,
                             s.min_confidence or 0.0)
    else:
        rows = classify(classifier, _chain(first, paths), s.top_k, s.batch_size, s.min_confidence or 0.0)
    for row in rows:
        writer.write(row)
        counts["rows"] += 1
        counts["failed"] += bool(row.error)
        counts["low_confidence"] += row.low_confidence
        counts["unknown"] += bool(row.unknown)
        if reviewer is not None and not row.error:
            label, confidence, low = reviewed_answer(row, review_index, s.min_confidence)
            if row.unknown or low:
                reviewer.add(row, label, confidence, low)
        if explainer is not None and not row.error:
            explainer.add(row.path, row.label)
        bar.update()
    bar.close()
    writer.close()
    if explainer is not None:
        explainer.close()
        counts["explained"] = explainer.count
    if reviewer is not None:
        reviewer.close()
        counts["review"] = reviewer.count
    return counts


def review_attribute(classifier: Classifier, name: str | None) -> int:
    """The index of the attribute ``--review-attribute`` names (0, the first, by default)."""
    if name is None:
        return 0
    if classifier.schema is None:
        raise UsageError(f"--review-attribute {name}: this model answers one question (its classes); "
                         "leave the flag out")
    try:
        return classifier.schema.attribute(name)
    except ValueError as exc:
        raise UsageError(f"--review-attribute: {exc}") from None


def reviewed_answer(row: Prediction, index: int, min_confidence: float | None) -> tuple[str, float, bool]:
    """(label, confidence, below --min-confidence) of the answer a person reviews: the first
    attribute's, or attribute ``index``'s (a multi-label one: its values joined, its least
    confident value's confidence; "(none)" where no value reached its threshold)."""
    if index == 0 or not row.attributes:
        return row.label, row.confidence, row.low_confidence
    answer = row.attributes[index]
    confidence = min(answer.confidences) if answer.confidences else 0.0
    return ";".join(answer.values) or "(none)", confidence, min_confidence is not None and confidence < min_confidence


def tag_to_file(output: str | os.PathLike, checkpoint: str | os.PathLike, inputs: list[str],
                settings: TagSettings = TagSettings()) -> dict:
    """``tag_files`` into ``output``, which is replaced only when every row is written: rows go
    to a temporary file beside it, renamed over it at the end. A run that fails or is
    interrupted leaves ``output`` as it was and its rows so far in ``output.partial`` (said on
    stderr); one that fails before any row leaves nothing."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            counts = tag_files(checkpoint, inputs, f, settings)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
        fsync_dir(output.parent)
        return counts
    except BaseException:
        if tmp.exists() and tmp.stat().st_size:
            partial = output.with_name(output.name + ".partial")
            os.replace(tmp, partial)
            print(f"fashionclf: the rows written before the failure are in {partial}; {output} is unchanged",
                  file=sys.stderr)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _chain(first: Path, rest: Iterator[Path]) -> Iterator[Path]:
    yield first
    yield from rest


def predict_paths(checkpoint: str | os.PathLike, inputs: list[str], top_k: int = 1, batch_size: int = PREDICT_BATCH_SIZE,
                  device: str = "cpu", backend: str = "auto") -> list[Prediction]:
    """All rows as a list (for a library caller with a modest number of files)."""
    classifier = load_checked(checkpoint, backend, device, top_k)
    rows = list(classify(classifier, iter_inputs(inputs), top_k, batch_size))
    if not rows:
        raise UsageError(f"no image files found in {', '.join(inputs)}")
    return rows


def format_rows(rows: list[Prediction], fmt: str = "csv", top_k: int = 1, schema: Schema | None = None) -> str:
    buf = io.StringIO()
    writer = RowWriter(buf, fmt, top_k, schema=schema)
    for r in rows:
        writer.write(r)
    writer.close()
    return buf.getvalue()
