"""A tiny model registry: ``create_model(name, num_classes=..., **kwargs)`` and ``list_models()``.

A model module registers a builder with ``@register_model("name", "one-line description")``;
every builder takes ``num_classes`` and ``in_chans`` and returns an ``nn.Module`` that maps
``(N, in_chans, H, W)`` float images to ``(N, num_classes)`` logits.

An entry also carries the model's input contract (``preprocessing``, see
``fashionclf.transforms``), its training defaults (a function of the ``--weights`` choice,
merged over ``fashionclf.train.DEFAULTS``), and the pretrained weights it can start from.
Models that can be trained in two phases (head first, then fine-tuning) expose ``base``
(images -> feature vectors), ``head`` (features -> logits) and ``blocks`` (the base's
stages, in order, for ``--unfreeze N``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..transforms import GREY_28


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    preprocessing: dict  # default input contract: image_size, channels, mean, std
    train_defaults: Callable[[str], dict]  # weights choice -> training settings for this model
    weights: tuple[str, ...] = ()  # named pretrained weights (besides "none" and a PATH)
    min_image_size: int | None = None  # None: only the default size works (fixed Flatten)

    @property
    def input_size(self) -> int:
        return self.preprocessing["image_size"]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, preprocessing: dict = GREY_28,
                   train_defaults: Callable[[str], dict] | None = None, weights: tuple[str, ...] = (),
                   min_image_size: int | None = None):
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description, dict(preprocessing),
                                     train_defaults or (lambda weights: {}), tuple(weights), min_image_size)
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int = 10, in_chans: int | None = None, **kwargs) -> nn.Module:
    """Build model ``name``; ``in_chans`` defaults to the channels of its input contract."""
    entry = get_model_entry(name)
    if in_chans is None:
        in_chans = entry.preprocessing["channels"]
    return entry.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Importing the model modules registers them.
from . import cnn, mobilenet, recipes  # noqa: E402,F401
