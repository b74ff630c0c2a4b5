"""MobileNetV2 (torchvision) with a new head for k classes, for transfer learning.

``weights``: ``"imagenet"`` (torchvision's official ImageNet weights, through its normal
cache, ``$TORCH_HOME/hub/checkpoints``), ``"none"`` (random initialisation), ``"auto"`` in
training (the default: imagenet when cached or downloadable, else none) or the path of
a local state-dict file in torchvision's MobileNetV2 layout (loaded with
``weights_only=True``; its ImageNet classifier, if any, is dropped).

Input: Fashion-MNIST's grey images are repeated to 3 channels and normalised with the
ImageNet mean and std (``IMAGENET_3CH``), so pretrained weights are used exactly as they
were trained. ``in_chans=1`` instead folds the first convolution's three input channels into
one (their sum): the same function for a grey image with a single mean/std, and about 3% fewer
FLOPs at the first layer only; docs/transfer.md compares both.
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.error
from pathlib import Path

import torch
from torch import nn

from fashionclf.errors import UsageError
from fashionclf.fileio import safe_torch_load
from fashionclf.models._registry import adapt_input_conv, register_model
from fashionclf.models.contract import InputContract

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# 64 px, not the reference's 224: on 2 CPU cores an epoch of the 3-class subset costs
# ~12x less, and 28x28 sources hold no detail that 224 px would reveal (docs/transfer.md: cost per size).
IMAGENET_3CH = InputContract(image_size=64, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
FEATURE_DIM = 1280


class TransferNet(nn.Module):
    """``base`` (images -> pooled feature vectors) followed by ``head`` (features -> logits)."""

    def __init__(self, features: nn.Sequential, feature_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.base = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    @property
    def blocks(self) -> list[nn.Module]:
        """The base's stages in order (19 for MobileNetV2), for ``--unfreeze N``."""
        return list(self.base[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.base(x))


def imagenet_weights():
    from torchvision.models import MobileNet_V2_Weights

    return MobileNet_V2_Weights.DEFAULT


def load_imagenet_state_dict() -> dict:
    """torchvision's ImageNet weights from its cache, downloading them if needed; offline and
    not cached, a UsageError that says which file to put where."""
    weights = imagenet_weights()
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        name = os.path.basename(weights.url)
        reason = getattr(exc, "reason", exc)
        raise UsageError(
            f"ImageNet weights for mobilenet_v2 are not cached and could not be downloaded ({reason}). "
            f"Expected file: {cache / name}. Fetch {weights.url} on a machine with internet and copy it "
            f"there (or set TORCH_HOME), pass --weights PATH to a local state-dict file, or use --weights none."
        ) from None


DOWNLOAD_TIMEOUT = 30  # seconds without an answer before --weights auto gives up on the download


@functools.lru_cache(maxsize=None)
def imagenet_unavailable() -> str | None:
    """None when the ImageNet weights are cached or could be downloaded now; else why not
    (once per process: a re-resolved config does not try again)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        load_imagenet_state_dict()
        return None
    except UsageError as exc:
        return str(exc)
    finally:
        socket.setdefaulttimeout(previous)


def load_state_dict_file(path: str | os.PathLike) -> dict:
    state = safe_torch_load(path, "--weights state-dict file", "--weights takes imagenet, none or a file's path")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a checkpoint that wraps its weights
    if not isinstance(state, dict):
        raise UsageError(f"--weights {path}: expected a state dict (parameter name -> tensor), got {type(state).__name__}")
    return state


def features_state(state: dict, source: str) -> dict:
    """The ``features.*`` entries of a torchvision MobileNetV2 state dict (also accepted: this
    module's own ``base.0.*`` names), renamed to ``features``' own keys."""
    out = {}
    for key, value in state.items():
        for prefix in ("features.", "base.0."):
            if key.startswith(prefix):
                out[key[len(prefix):]] = value
    if not out:
        sample = ", ".join(list(state)[:3])
        raise UsageError(f"{source}: no MobileNetV2 'features.*' weights in it (keys start: {sample})")
    return out


@register_model(
    "mobilenet_v2",
    "torchvision MobileNetV2 + new head; transfer learning (--weights imagenet|none|PATH)",
    contract=IMAGENET_3CH,
    train_defaults=lambda weights: MOBILENET_DEFAULTS["none" if weights == "none" else "pretrained"],
    weights={"imagenet": imagenet_unavailable},
    min_image_size=32,  # five stride-2 stages: 32 px leaves a 1x1 feature map
    phases=True,
    photo_source="rgb",  # ImageNet features were learnt on photos as they are
)
def mobilenet_v2(num_classes: int = 10, in_chans: int = 3, weights: str = "none", dropout: float = 0.2) -> nn.Module:
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    features = tv_mobilenet_v2().features
    if weights == "auto":
        weights = "imagenet" if imagenet_unavailable() is None else "none"
    if weights == "imagenet":
        state, source = load_imagenet_state_dict(), "ImageNet weights"
    elif weights and weights != "none":
        state, source = load_state_dict_file(weights), str(weights)
    else:
        state, source = None, ""
    if state is not None:
        try:
            features.load_state_dict(features_state(state, source))
        except RuntimeError as exc:
            raise UsageError(f"{source}: does not fit MobileNetV2's features ({str(exc).splitlines()[0]})") from None
    if in_chans != 3:
        first = features[0][0]
        conv = nn.Conv2d(in_chans, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
        with torch.no_grad():
            conv.weight.copy_(adapt_input_conv(first.weight, in_chans))
        features[0][0] = conv
    model = TransferNet(features, FEATURE_DIM, num_classes, dropout)
    nn.init.normal_(model.head[1].weight, 0, 0.01)  # as torchvision initialises its classifier
    nn.init.zeros_(model.head[1].bias)
    # Channels-last weights: oneDNN's depthwise and 1x1 convolutions run NHWC faster (a training
    # step at 64 px, batch 64, 2 AVX2 cores: 482 -> 383 ms). load_state_dict keeps the layout.
    return model.to(memory_format=torch.channels_last)


# Training defaults (merged over fashionclf.training.config's defaults; a recipe or any flag overrides them).
MOBILENET_DEFAULTS = {
    # From random weights there is no base worth freezing: one phase trains everything, with
    # BatchNorm learning its statistics (docs/transfer.md: the measurements behind these choices).
    "none": {
        # Within 10 minutes on any CPU: the epochs that fit (docs/transfer.md). 48 px: the same
        # 2x2 final feature map as 64 px at 0.64x the cost of a step (2 AVX2 cores, channels-last).
        "time_budget": "10m",
        "image_size": 48,
        "batch_size": 64,  # BatchNorm wants more than 32 per batch; 128 at lr 3e-3 was no better
        "lr": 2e-3,
        "weight_decay": 5e-4,
        "optimizer": "adamw",
        "augment": "flip",  # flip alone beat flip+rotate and flip+shift on the 3-class subset
        "ema": 0.999,  # with label smoothing: 15 test errors instead of 19 (docs/transfer.md)
        "label_smoothing": 0.1,
        "tta": "flip",  # costs 2x at inference; kept for the selection it was measured with
        "head_epochs": 0,
        "bn_policy": "train",
    },
    # Pretrained: phase 1 trains the new head on the frozen base (cached features: seconds),
    # phase 2 fine-tunes at a learning rate low enough not to wreck the ImageNet features,
    # with BatchNorm kept in inference mode (the Keras transfer-learning guide's advice).
    "pretrained": {
        "epochs": 5,
        "batch_size": 64,
        "head_lr": 1e-3,
        "lr": 1e-4,
        "optimizer": "adam",
        "augment": "none",  # lets phase 1 run on cached features; add --augment flip,rotate for both phases
        "head_epochs": 3,
        "bn_policy": "frozen",
    },
}
