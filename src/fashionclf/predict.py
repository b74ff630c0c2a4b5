"""Prediction on image files: one row per input, an error in its row never stops the batch."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UsageError
from .inference import load_classifier

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
SOURCE_SIZE = 28  # images must look like the dataset's: 28x28 grey, light garment on dark ground


@dataclass
class Prediction:
    path: str
    label: str = ""
    confidence: float | None = None
    error: str = ""
    top: list[tuple[str, float]] = field(default_factory=list)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, directories expanded (recursively, sorted) to their image files.
    A name that does not exist is kept, so that its row reports the error."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(p)
    return paths


def load_image(path: Path) -> np.ndarray:
    """A 28x28 uint8 grey array, or ValueError/OSError saying what is wrong with the file."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.size != (SOURCE_SIZE, SOURCE_SIZE):
                raise ValueError(
                    f"image is {img.size[0]}x{img.size[1]}, expected {SOURCE_SIZE}x{SOURCE_SIZE} "
                    "grey like Fashion-MNIST; resize it first"
                )
            return np.array(img.convert("L"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not an image file Pillow can read") from None
    except FileNotFoundError:
        raise ValueError("no such file") from None


def predict_paths(checkpoint: str | os.PathLike, inputs: list[str], top_k: int = 1, batch_size: int = 256,
                  device: str = "cpu", backend: str = "auto") -> list[Prediction]:
    """One row per input file; ``checkpoint`` is a model.pt (or run directory) or an ONNX file
    from ``fashionclf export``; ``backend`` as in ``fashionclf.inference.load_classifier``."""
    classifier = load_classifier(checkpoint, backend, device)
    classes = classifier.classes
    if not 1 <= top_k <= len(classes):
        raise UsageError(f"--top-k must be between 1 and {len(classes)} (the number of classes), got {top_k}")
    paths = expand_inputs(inputs)
    if not paths:
        raise UsageError(f"no image files found in {', '.join(inputs)}")
    rows = [Prediction(str(p)) for p in paths]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        good, arrays = [], []
        for row in chunk:
            try:
                arrays.append(load_image(Path(row.path)))
                good.append(row)
            except (ValueError, OSError) as exc:
                row.error = str(exc) or type(exc).__name__
        if not good:
            continue
        probs = torch.from_numpy(classifier.predict_proba(np.stack(arrays)))
        conf, idx = probs.topk(top_k, dim=1)
        for row, c, i in zip(good, conf.tolist(), idx.tolist()):
            row.top = [(classes[j], p) for j, p in zip(i, c)]
            row.label, row.confidence = row.top[0]
    return rows


def format_rows(rows: list[Prediction], fmt: str = "csv", top_k: int = 1) -> str:
    if fmt == "json":
        return json.dumps(
            [{"path": r.path, "label": r.label or None, "confidence": r.confidence, "error": r.error or None,
              "top": [{"label": l, "confidence": c} for l, c in r.top]} for r in rows],
            indent=2,
        ) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["path", "label", "confidence", "error"]
    for k in range(2, top_k + 1):
        header += [f"label_{k}", f"confidence_{k}"]
    writer.writerow(header)
    for r in rows:
        line = [r.path, r.label, "" if r.confidence is None else f"{r.confidence:.6f}", r.error]
        for k in range(1, top_k):
            line += [r.top[k][0], f"{r.top[k][1]:.6f}"] if k < len(r.top) else ["", ""]
        writer.writerow(line)
    return buf.getvalue()
