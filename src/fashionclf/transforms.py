"""The one preprocessing path shared by training, validation, test, evaluate and predict.

A model's preprocessing is a small dict stored in its checkpoint:
``{"image_size": 28, "channels": 1, "mean": [0.0], "std": [1.0]}``. Source images are
28x28 uint8 (the dataset's own format, kept in memory as such); each batch is scaled to
[0, 1], repeated to ``channels``, resized to ``image_size`` and normalised, in that order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The reference CNNs' preprocessing: pixels / 255, nothing else.
GREY_28 = {"image_size": 28, "channels": 1, "mean": [0.0], "std": [1.0]}


def preprocess(images: torch.Tensor, preprocessing: dict = GREY_28) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` images -> float ``(N, C, S, S)`` model input."""
    x = images.unsqueeze(1).float().div_(255.0)
    channels = preprocessing["channels"]
    if channels != 1:
        x = x.expand(-1, channels, -1, -1)
    size = preprocessing["image_size"]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(preprocessing["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if mean.abs().sum() or (std != 1).any():
        x = (x - mean) / std
    return x
