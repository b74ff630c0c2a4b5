"""The model's input contract: the one path from uint8 images to class probabilities.

Training, validation, evaluation, ``predict``, ``serve`` and the ONNX export all go through
this module, so what is trained is exactly what is evaluated, exported and served.

A model's preprocessing is a small dict stored in its checkpoint:
``{"image_size": 28, "channels": 1, "mean": [0.0], "std": [1.0], "tta": "none"}``. Source
images are 28x28 uint8 (the dataset's own format, kept in memory as such), or, for a colour
model trained on photos (``"source": "rgb"``), ``image_size`` x ``image_size`` x 3 uint8
(``photos.photo_to_rgb``); each batch is scaled to [0, 1], repeated to ``channels`` (grey
sources), resized to ``image_size`` and normalised, in that order (``preprocess``). ``InferenceNet`` adds the network and the test-time augmentation
(``tta``: ``flip`` averages the logits of each image and its mirror). ``ServingNet`` adds
what predict and serve return: probabilities calibrated by the checkpoint's temperature and
the in-distribution score that flags unknowns (``fashionclf.evaluation.ood``); the ONNX graph is that
module exported, and the PyTorch backend runs the same module.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The reference CNNs' preprocessing: pixels / 255, nothing else.
GREY_28 = {"image_size": 28, "channels": 1, "mean": [0.0], "std": [1.0]}
EVAL_BATCH = 512  # inference only: larger batches are faster and need little memory at 28x28


def source_shape(preprocessing: dict) -> tuple[int, ...]:
    """The shape of one source image: ``(28, 28)``, or ``(S, S, 3)`` for an "rgb" source."""
    if preprocessing.get("source") == "rgb":
        return (preprocessing["image_size"], preprocessing["image_size"], 3)
    return (28, 28)


def eval_batch(preprocessing: dict) -> int:
    """Images per inference batch: ``EVAL_BATCH`` at 28x28, fewer for large inputs (the same
    activation memory, at least 16)."""
    return max(16, EVAL_BATCH * 28 * 28 // preprocessing["image_size"] ** 2)


def preprocess(images: torch.Tensor, preprocessing: dict = GREY_28) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` (grey) or ``(N, H, W, 3)`` (colour) images -> float ``(N, C, S, S)`` model input."""
    if images.ndim == 4:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
    else:
        x = images.unsqueeze(1).float().div_(255.0)
    channels = preprocessing["channels"]
    if channels != x.shape[1]:
        x = x.expand(-1, channels, -1, -1)
    size = preprocessing["image_size"]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if any(preprocessing["mean"]) or any(s != 1 for s in preprocessing["std"]):
        mean = torch.tensor(preprocessing["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(preprocessing["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


class InferenceNet(nn.Module):
    """uint8 ``(N, 28, 28)`` images -> logits: ``preprocess``, the network, and the test-time
    augmentation of ``preprocessing["tta"]``."""

    def __init__(self, model: nn.Module, preprocessing: dict):
        super().__init__()
        self.model = model
        self.preprocessing = dict(preprocessing)
        self.flip = preprocessing.get("tta", "none") == "flip"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images, self.preprocessing)
        logits = self.model(x)
        if self.flip:
            logits = (logits + self.model(x.flip(-1))) / 2
        return logits


class ServingNet(nn.Module):
    """uint8 images -> (probabilities of ``softmax(logits / T)``, score ``T * logsumexp(logits / T)``):
    ``InferenceNet`` plus the checkpoint's temperature ``T`` (1 for a model never calibrated)."""

    def __init__(self, model: nn.Module, preprocessing: dict, temperature: float = 1.0):
        super().__init__()
        self.net = InferenceNet(model, preprocessing)
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.net(images).float() / self.temperature
        return torch.softmax(z, 1), self.temperature * torch.logsumexp(z, 1)


def temperature_of(ckpt: dict) -> float:
    return float((ckpt.get("unknown") or {}).get("temperature", 1.0))


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, preprocessing: dict,
                   device: str | torch.device = "cpu", batch_size: int | None = None) -> torch.Tensor:
    """Logits of ``InferenceNet`` for uint8 source images, computed in eval mode in batches
    (default ``eval_batch``), returned on the CPU as float32 (``(0, 0)`` for no images)."""
    batch_size = batch_size or eval_batch(preprocessing)
    was_training = model.training
    net = InferenceNet(model.eval(), preprocessing)
    out = [net(images[start : start + batch_size].to(device, non_blocking=True)).float().cpu()
           for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def top_k(probabilities: np.ndarray, classes: list[str], k: int = 1) -> list[list[tuple[str, float]]]:
    """Per row of ``(N, C)`` probabilities, the ``k`` most likely ``(class, probability)``,
    most likely first (ties: the lower class index first)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(p[j])) for j in idx] for p, idx in zip(probabilities, order)]
