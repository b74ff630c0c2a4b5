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

The contract itself and ``top_k`` live in ``models.inputs`` (no torch: the ONNX serving path reads
them); this module adds what runs in torch. It imports nothing of fashionclf but ``inputs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashionclf.models.inputs import (  # noqa: F401  (the contract's names, re-exported)
    EVAL_BATCH,
    GREY_28,
    MAX_IMAGE_SIZE,
    SOURCES,
    TTA_CHOICES,
    InputContract,
    top_k,
)


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
