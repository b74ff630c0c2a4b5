"""A model's input contract without torch: ``InputContract`` (what a model takes), ``top_k``
(its answer read as labels) and ``contract_of_info`` (the contract of a checkpoint's or an
ONNX graph's metadata). ``models.contract`` adds the torch side (``preprocess``,
``InferenceNet``, ``ServingNet``); a process that serves an ONNX graph imports only this.

This module imports nothing of fashionclf but its errors, and no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

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


def contract_of_info(info: dict) -> InputContract:
    """The input contract of a model's ``Checkpoint.info`` dict (the ONNX graph's metadata)."""
    return InputContract.from_dict(info.get("preprocessing"))


def top_k(probabilities: np.ndarray, classes: list[str], k: int = 1) -> list[list[tuple[str, float]]]:
    """Per row of ``(N, C)`` probabilities, the ``k`` most likely ``(class, probability)``,
    most likely first (ties: the lower class index first)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(p[j])) for j in idx] for p, idx in zip(probabilities, order)]
