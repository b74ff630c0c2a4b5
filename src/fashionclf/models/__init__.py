"""A tiny model registry: ``create_model(name, num_classes=..., **kwargs)`` and ``list_models()``.

A model module registers a builder with ``@register_model("name", "one-line description")``;
every builder takes ``num_classes`` and ``in_chans`` and returns an ``nn.Module`` that maps
``(N, in_chans, H, W)`` float images to ``(N, num_classes)`` logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    input_size: int  # side of the square input the model expects


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, input_size: int = 28):
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description, input_size)
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int = 10, in_chans: int = 1, **kwargs) -> nn.Module:
    return get_model_entry(name).builder(num_classes=num_classes, in_chans=in_chans, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Importing the model modules registers them.
from . import cnn  # noqa: E402,F401
