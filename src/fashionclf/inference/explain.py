"""Heatmaps of where a model looked, for photos: ``Explainer`` (a checkpoint's network, ready
to explain an answer: used by ``serve``'s ``/explain`` and the review page) and
``ExplainFolder`` (``predict --explain DIR``: a PNG per tagged photo). The Grad-CAM itself is
``fashionclf.models.explain``; this module loads torch, so its users import it only when a
heatmap is asked for."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fashionclf.errors import UsageError
from fashionclf.fileio import csv_cell
from fashionclf.inference.checkpoint import checkpoint_file, load_checkpoint
from fashionclf.models.explain import grad_cam, overlay, png

EXPLAINED_CSV = "explained.csv"
BATCH = 64  # photos explained per backward pass


class Explainer:
    """A model.pt's network, explaining the answers of any of its attributes."""

    def __init__(self, checkpoint: str | os.PathLike):
        path = checkpoint_file(checkpoint)
        if path.suffix.lower() == ".onnx":
            raise UsageError(f"{path}: heatmaps need the model.pt the graph was exported from (they follow the "
                             "network's gradients); pass the model.pt")
        self.ckpt = load_checkpoint(path)
        self.model = self.ckpt.build_model().eval()
        self.contract = self.ckpt.contract

    def outputs(self, attribute: int = 0) -> slice:
        schema = self.ckpt.attributes
        return slice(None) if schema is None else schema.logit_slices[attribute]

    def heatmaps(self, images: np.ndarray, attribute: int = 0, targets: np.ndarray | None = None) -> np.ndarray:
        """Overlays (what the model saw, its heatmap on top) for uint8 model-input ``images``,
        each for its ``targets`` value of ``attribute`` (default: the value the model chose)."""
        heat, _ = grad_cam(self.model, images, self.contract, targets, self.outputs(attribute))
        return np.stack([overlay(image, h) for image, h in zip(images, heat)]) if len(images) else images

    def png(self, image: np.ndarray, attribute: int = 0, target: int | None = None) -> bytes:
        targets = None if target is None else np.array([target])
        return png(self.heatmaps(image[None], attribute, targets)[0])


class ExplainFolder:
    """``predict --explain DIR``: for each tagged photo, ``DIR/<name>.png`` (what the model saw,
    overlaid with where it looked for its first attribute's answer) and a row of
    ``DIR/explained.csv`` (source, heatmap, label)."""

    def __init__(self, root: str | os.PathLike, checkpoint: str | os.PathLike, classes: list[str]):
        self.root = Path(root)
        self.explainer = Explainer(checkpoint)  # refused here, before any photo, for an ONNX file
        self.to_input = None
        self.classes = classes
        self.root.mkdir(parents=True, exist_ok=True)
        self.file = open(self.root / EXPLAINED_CSV, "a", newline="", encoding="utf-8")
        self.csv = csv.writer(self.file, lineterminator="\n", quoting=csv.QUOTE_ALL)
        if self.file.tell() == 0:
            self.csv.writerow(["source", "heatmap", "label"])
        self.pending: list[tuple[str, str]] = []
        self.count = 0

    def add(self, path: str, label: str) -> None:
        self.pending.append((path, label))
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        from fashionclf.data.photos import PhotoError, photo_converter

        if self.to_input is None:
            self.to_input = photo_converter(self.explainer.contract)[0]
        ready, images = [], []
        for path, label in self.pending:
            try:
                images.append(self.to_input(Path(path)))
                ready.append((path, label))
            except (PhotoError, OSError):  # it changed since it was tagged: its row says what it was
                continue
        self.pending = []
        if not ready:
            return
        targets = np.array([self.classes.index(label) for _, label in ready])
        for (path, label), picture in zip(ready, self.explainer.heatmaps(np.stack(images), 0, targets)):
            target = self.free_name(Path(path).stem)
            target.write_bytes(png(picture))
            self.csv.writerow([csv_cell(path), csv_cell(str(target)), csv_cell(label)])
            self.count += 1

    def free_name(self, stem: str) -> Path:
        target, n = self.root / f"{stem}.png", 1
        while target.exists():
            target, n = self.root / f"{stem}-{n}.png", n + 1
        return target

    def close(self) -> None:
        self.flush()
        self.file.close()
