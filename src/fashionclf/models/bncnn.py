"""The BatchNorm CNNs of the speed recipes (``fashionclf.training.recipes``): ``fast-cnn`` and ``strong-cnn``.

Both follow what speed-training work (airbench, hlb-CIFAR10) found to pay on small images:
BatchNorm after every convolution and channels-last weights (measured on 2 cores in bf16:
strong-cnn's step in 0.53x the time, fast-cnn's unchanged). docs/results.md records what
each choice was measured to be worth.
"""

from __future__ import annotations

import torch
from torch import nn

from fashionclf.models._registry import register_model


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def channels_last(model: nn.Module) -> nn.Module:
    """Convolution weights in NHWC order, which oneDNN runs faster on CPU. ``load_state_dict``
    copies into the existing parameters, so a rebuilt model keeps the layout."""
    return model.to(memory_format=torch.channels_last)


class _FlattenKeepingLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.flatten(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.view(ctx.shape).contiguous(memory_format=torch.channels_last)


class Flatten(nn.Flatten):
    """``nn.Flatten`` whose gradient comes back in its input's channels-last layout. With the
    plain one the gradient returns in NCHW order while the ReLU before it saved a channels-last
    output, and oneDNN's ReLU backward over mixed layouts is ~17x slower: measured on fast-cnn
    (batch 128, 2 cores, bf16) that ReLU's backward 982 -> 58 µs, a training step 11.2 -> 9.1 ms
    of operator time (docs/results.md). Same features, same order, no parameters: checkpoints
    are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.requires_grad and torch.is_grad_enabled() and x.dim() == 4 and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            return _FlattenKeepingLayout.apply(x)
        return super().forward(x)


@register_model(
    "fast-cnn",
    "strided Conv32 5x5 > Conv64 3x3 (BN) > Dense128 > Dense k (recipe fast's model)",
    min_image_size=4,
)
def fast_cnn(num_classes: int = 10, in_chans: int = 1, width: int = 32, image_size: int = 28) -> nn.Module:
    # Stride-2 convolutions instead of conv + pool: 4x fewer activations at 28x28, which is
    # what the memory-bound BatchNorm/ReLU passes cost on a CPU. 1.46 MMAC per image.
    side = -(-(-(-image_size // 2)) // 2)  # 28 -> 14 -> 7: the first dense layer's input depends on the size
    return channels_last(nn.Sequential(
        *conv_bn(in_chans, width, 5, 2),
        *conv_bn(width, 2 * width, 3, 2),
        Flatten(),
        nn.Linear(2 * width * side * side, 128), nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    ))


class StrongCNN(nn.Module):
    """An airbench-style VGG: a stem, then three stages of conv > max-pool > BN > ReLU > conv >
    BN > ReLU at 28 -> 14 -> 7 -> 3 pixels, global max pooling and a linear classifier."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 16):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers = conv_bn(in_chans, widths[0])
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True), *conv_bn(cout, cout)]
        self.features = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model(
    "strong-cnn",
    "airbench-style 7-convolution BatchNorm network (recipe strong's model)",
    min_image_size=8,  # three 2x max-pools
)
def strong_cnn(num_classes: int = 10, in_chans: int = 1, width: int = 16) -> nn.Module:
    return channels_last(StrongCNN(num_classes, in_chans, width))
