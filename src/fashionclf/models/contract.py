"""The model's input contract: the one path from uint8 images to class probabilities.

Training, validation, evaluation, ``predict``, ``serve`` and the ONNX export all go through
this module, so what is trained is exactly what is evaluated, exported and served.

A model's input contract is an ``InputContract``, stored in its checkpoint as the small dict
``{"image_size": 28, "channels": 1, "mean": [0.0], "std": [1.0], "tta": "none"}``. Source
images are 28x28 uint8 (the dataset's own format, kept in memory as such), or, for a colour
model trained on photos (``source`` "colour" or "rgb", see ``SOURCES``), ``image_size`` x
``image_size`` x 3 uint8 (``photos.photo_to_colour``, ``photos.photo_to_rgb``); each batch is scaled to [0, 1], repeated to ``channels`` (grey
sources), resized to ``image_size`` and normalised, in that order (``preprocess``).
``InferenceNet`` adds the network and the test-time augmentation (``tta``: ``flip`` averages
the logits of each image and its mirror). ``ServingNet`` adds what predict and serve return:
probabilities calibrated by the checkpoint's temperature and the in-distribution score that
flags unknowns (``fashionclf.evaluation.ood``); the ONNX graph is that module exported, and the
PyTorch backend runs the same module.

This module imports nothing of fashionclf but its errors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashionclf.errors import UsageError

TTA_CHOICES = ("none", "flip")
# What a model's source images are: "grey", 28x28 as Fashion-MNIST stores them (light item on
# black); "colour", the same form in colour at image_size (the item's difference from its
# backdrop per channel, on black: a grey item gives R = G = B = its grey image, so a grey model
# adapted to colour starts where it was); "rgb", the photo as it is (ImageNet-pretrained models).
SOURCES = ("grey", "colour", "rgb")
MAX_IMAGE_SIZE = 1024
EVAL_BATCH = 512  # inference only: larger batches are faster and need little memory at 28x28


@dataclass(frozen=True)
class InputContract:
    """What a model takes: source images of ``source_shape`` (28x28 grey as Fashion-MNIST
    stores them, or ``image_size`` x ``image_size`` x 3 colour photos for ``source == "rgb"``),
    turned into ``channels`` x ``image_size`` x ``image_size`` floats normalised by ``mean`` and
    ``std``, and the test-time augmentation ``tta``. Frozen: change one with ``replace``."""

    image_size: int = 28
    channels: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    tta: str = "none"
    source: str = "grey"

    def __post_init__(self):
        problem = self.problem()
        if problem:
            raise UsageError(f"input contract: {problem}")

    def problem(self) -> str | None:
        """What makes this contract unusable, or None: checked on every contract made, so a
        model file cannot ask for a huge input, NaN normalisation or an unknown augmentation."""
        size, channels = self.image_size, self.channels
        if not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE or channels not in (1, 3):
            return f"input {size!r}x{size!r}x{channels!r} out of range (size 1 to {MAX_IMAGE_SIZE}, 1 or 3 channels)"
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (len(values) != channels
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
                return f"{name} must be {channels} finite number(s), got {list(values)!r}"
        if not all(v > 0 for v in self.std):
            return f"std must be positive, got {list(self.std)!r}"
        if self.tta not in TTA_CHOICES or self.source not in SOURCES:
            return (f"unknown test-time augmentation or source: {self.tta!r}, {self.source!r} "
                    f"(valid: {', '.join(TTA_CHOICES)}; {', '.join(SOURCES)})")
        return None

    def replace(self, **changes) -> InputContract:
        return dataclasses.replace(self, **changes)

    def with_channels(self, channels: int) -> InputContract:
        """The same normalisation for ``channels`` channels: a grey mean and std repeated for
        colour, or colour ones averaged for grey."""
        if channels == self.channels:
            return self
        mean, std = (tuple(self.mean) * 3, tuple(self.std) * 3) if channels == 3 else (
            (sum(self.mean) / len(self.mean),), (sum(self.std) / len(self.std),))
        return self.replace(channels=channels, mean=mean, std=std)

    @property
    def source_shape(self) -> tuple[int, ...]:
        """The shape of one source image: ``(28, 28)``, or ``(S, S, 3)`` for a colour source."""
        return (28, 28) if self.source == "grey" else (self.image_size, self.image_size, 3)

    @property
    def eval_batch(self) -> int:
        """Images per inference batch: ``EVAL_BATCH`` at 28x28, fewer for large inputs (the same
        activation memory, at least 16)."""
        return max(16, EVAL_BATCH * 28 * 28 // self.image_size ** 2)

    def to_dict(self) -> dict:
        """The checkpoint's and the ONNX metadata's ``preprocessing`` dict (``source`` written only
        for colour sources, as format version 1 has it)."""
        out = {"image_size": self.image_size, "channels": self.channels, "mean": list(self.mean),
               "std": list(self.std), "tta": self.tta}
        return {**out, "source": self.source} if self.source != "grey" else out

    @classmethod
    def from_dict(cls, d: dict) -> InputContract:
        """``to_dict`` read back (``tta`` and ``source`` optional); a UsageError names what is wrong."""
        if not isinstance(d, dict) or not {"image_size", "channels", "mean", "std"} <= set(d):
            raise UsageError(f"input contract: expected image_size, channels, mean and std, got {d!r}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UsageError(f"input contract: unknown field(s) {sorted(unknown)}")
        mean, std = d["mean"], d["std"]
        if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)):
            raise UsageError(f"input contract: mean and std must be lists, got {mean!r}, {std!r}")
        return cls(d["image_size"], d["channels"], tuple(mean), tuple(std), d.get("tta", "none"),
                   d.get("source") or "grey")


# The reference CNNs' preprocessing: pixels / 255, nothing else.
GREY_28 = InputContract()


def preprocess(images: torch.Tensor, contract: InputContract = GREY_28) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` (grey) or ``(N, H, W, 3)`` (colour) images -> float ``(N, C, S, S)`` model input."""
    if images.ndim == 4:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
    else:
        x = images.unsqueeze(1).float().div_(255.0)
    channels = contract.channels
    if channels != x.shape[1]:
        x = x.expand(-1, channels, -1, -1)
    size = contract.image_size
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if any(contract.mean) or any(s != 1 for s in contract.std):
        mean = torch.tensor(contract.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(contract.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


class InferenceNet(nn.Module):
    """uint8 ``(N, 28, 28)`` images -> logits: ``preprocess``, the network, and the test-time
    augmentation of ``contract.tta``."""

    def __init__(self, model: nn.Module, contract: InputContract):
        super().__init__()
        self.model = model
        self.contract = contract
        self.flip = contract.tta == "flip"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images, self.contract)
        logits = self.model(x)
        if self.flip:
            logits = (logits + self.model(x.flip(-1))) / 2
        return logits


class ServingNet(nn.Module):
    """uint8 images -> (probabilities of ``softmax(logits / T)``, score ``T * logsumexp(logits / T)``):
    ``InferenceNet`` plus the checkpoint's temperature ``T`` (1 for a model never calibrated).

    A model of several attributes (``heads``: per attribute its logits' (start, stop), whether
    it is multi-label, and its temperature) answers with one output per attribute, then the
    score: the first attribute's softmax over ``logits / T`` (the score comes from it), a
    softmax over its own ``logits / T`` per other single-valued attribute, a sigmoid per value
    of a multi-label one."""

    def __init__(self, model: nn.Module, contract: InputContract, temperature: float = 1.0,
                 heads: list[tuple[int, int, bool, float]] | None = None):
        super().__init__()
        self.net = InferenceNet(model, contract)
        self.temperature = float(temperature)
        self.heads = heads

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.net(images).float()
        if self.heads is None:
            z = z / self.temperature
            return torch.softmax(z, 1), self.temperature * torch.logsumexp(z, 1)
        (start, stop, _, _), others = self.heads[0], self.heads[1:]
        first = z[:, start:stop] / self.temperature
        outs = [torch.softmax(first, 1)]
        for start, stop, multi, t in others:
            outs.append(torch.sigmoid(z[:, start:stop]) if multi else torch.softmax(z[:, start:stop] / t, 1))
        return (*outs, self.temperature * torch.logsumexp(first, 1))


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, contract: InputContract,
                   device: str | torch.device = "cpu", batch_size: int | None = None) -> torch.Tensor:
    """Logits of ``InferenceNet`` for uint8 source images, computed in eval mode in batches
    (default ``contract.eval_batch``), returned on the CPU as float32 (``(0, 0)`` for no images)."""
    batch_size = batch_size or contract.eval_batch
    was_training = model.training
    net = InferenceNet(model.eval(), contract)
    out = [net(images[start : start + batch_size].to(device, non_blocking=True)).float().cpu()
           for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def top_k(probabilities: np.ndarray, classes: list[str], k: int = 1) -> list[list[tuple[str, float]]]:
    """Per row of ``(N, C)`` probabilities, the ``k`` most likely ``(class, probability)``,
    most likely first (ties: the lower class index first)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(p[j])) for j in idx] for p, idx in zip(probabilities, order)]
