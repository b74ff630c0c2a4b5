"""``--stem-init whiten``: airbench's patch-whitening start for a network's first convolution.

The first convolution's filters are set, before training, to the leading eigenvectors of the
covariance of k x k patches of the (preprocessed) training images, each divided by the square
root of its eigenvalue, and their negatives: the layer's output is then decorrelated, equal-
variance features of the patches, which speeds early training (Keller Jordan's airbench,
https://github.com/KellerJordan/cifar10-airbench). Here the filters are a starting point and
go on training with the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashionclf.errors import UsageError
from fashionclf.models.contract import InputContract, preprocess

WHITEN_IMAGES = 5000  # patches of 5,000 images: the covariance is stable to ~1% well before that
WHITEN_EPS = 5e-4  # airbench's: keeps the smallest eigenvalues from blowing their filters up


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def whiten_first_conv(model: nn.Module, images: torch.Tensor, contract: InputContract, name: str = "the model") -> int:
    """Set the first convolution of ``model`` from ``images`` (uint8 training images); returns
    the number of eigenvector pairs used. A UsageError when the layer has more filters than
    twice its patch size (there are only that many directions to whiten)."""
    conv = first_conv(model)
    k_h, k_w = conv.kernel_size
    dims = conv.in_channels * k_h * k_w
    pairs = conv.out_channels // 2
    if conv.groups != 1 or conv.out_channels % 2 or pairs > dims:
        raise UsageError(f"--stem-init whiten needs a first convolution with an even number of filters, at most "
                         f"twice its patch size; {name}'s has {conv.out_channels} filters of "
                         f"{conv.in_channels}x{k_h}x{k_w}: use --stem-init random")
    with torch.no_grad():
        x = preprocess(images[:WHITEN_IMAGES].to(conv.weight.device), contract).float()
        patches = F.unfold(x, (k_h, k_w)).transpose(1, 2).reshape(-1, dims)  # every k x k patch, stride 1
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        top = eigenvectors[:, -pairs:].flip(1).T / torch.sqrt(eigenvalues[-pairs:].flip(0) + WHITEN_EPS)[:, None]
        filters = top.reshape(pairs, conv.in_channels, k_h, k_w)
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight.dtype))
    return pairs
