"""The two reference CNNs, layer for layer as the Keras programs define them.

Keras' ``Conv2D`` and ``Dense`` use 'valid' padding, Glorot-uniform weights and zero
biases; PyTorch's defaults (Kaiming-uniform, random biases) train these small models
slightly differently, so ``keras_init`` reproduces the Keras start.
"""

from __future__ import annotations

from torch import nn

from fashionclf.models._registry import register_model


def keras_init(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


@register_model(
    "one-block-cnn",
    "Conv32 3x3 > MaxPool 2 > Dense128 > Dense k: the retail-tagging reference (91.84% in Keras)",
    min_image_size=4,
)
def one_block_cnn(num_classes: int = 10, in_chans: int = 1, image_size: int = 28) -> nn.Module:
    side = (image_size - 2) // 2  # 28 -> 26 -> 13: the first dense layer's input depends on the size
    return keras_init(
        nn.Sequential(
            nn.Conv2d(in_chans, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * side * side, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )
    )


@register_model(
    "two-block-cnn",
    "Conv32 > MaxPool > Conv64 > MaxPool > Dense64 > Dense k: the confusion-matrix reference",
    min_image_size=10,
)
def two_block_cnn(num_classes: int = 10, in_chans: int = 1, image_size: int = 28) -> nn.Module:
    side = ((image_size - 2) // 2 - 2) // 2  # 28 -> 26 -> 13 -> 11 -> 5
    return keras_init(
        nn.Sequential(
            nn.Conv2d(in_chans, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * side * side, 64), nn.ReLU(),
            nn.Linear(64, num_classes),
        )
    )
