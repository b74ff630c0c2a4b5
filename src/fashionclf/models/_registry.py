"""The model registry: ``register_model`` (used by the model modules), ``create_model``,
``list_models``, ``get_model_entry``.

A builder takes ``num_classes`` and ``in_chans`` and returns an ``nn.Module`` that maps
``(N, in_chans, H, W)`` float images to ``(N, num_classes)`` logits. Its entry also carries
the model's default input contract (``contract``, see ``fashionclf.models.contract``), its training
defaults (a function of the ``--weights`` choice, merged over ``fashionclf.training.config``'s
defaults), and the pretrained weights it can start from. Models registered with
``phases=True`` can be trained in two phases (head first, then fine-tuning): they expose
``base`` (images -> feature vectors), ``head`` (features -> logits) and ``blocks`` (the
base's stages, in order, for ``--unfreeze N``).

This module imports no model file, so model files import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from fashionclf.errors import UsageError
from fashionclf.models.contract import GREY_28, InputContract


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    contract: InputContract  # default input: image size, channels, mean, std
    train_defaults: Callable[[str], dict]  # weights choice -> training settings for this model
    weights: tuple[str, ...] = ()  # named pretrained weights (besides "none" and a PATH)
    min_image_size: int | None = None  # None: only the default size works (fixed Flatten)
    phases: bool = False  # exposes base/head/blocks: --head-epochs and --unfreeze N apply
    photo_source: str = "colour"  # what it sees of a photo in colour (``contract.SOURCES``)
    # named weights -> None when they can be had now (cached, or downloaded by this call), else
    # why not: ``--weights auto`` (a pretrained model's default) starts from random weights then
    unavailable: Callable[[str], str | None] = lambda name: None

    @property
    def input_size(self) -> int:
        return self.contract.image_size


_REGISTRY: dict[str, ModelEntry] = {}


def _availability(weights: tuple[str, ...] | dict[str, Callable[[], str | None]]) -> Callable[[str], str | None]:
    """``weights`` as a dict maps each name to its check (None: can be had now, else why not)."""
    checks = weights if isinstance(weights, dict) else {}
    return lambda name: checks[name]() if name in checks else None


def register_model(name: str, description: str, contract: InputContract = GREY_28,
                   train_defaults: Callable[[str], dict] | None = None,
                   weights: tuple[str, ...] | dict[str, Callable[[], str | None]] = (),
                   min_image_size: int | None = None, phases: bool = False, photo_source: str = "colour"):
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description, contract,
                                     train_defaults or (lambda weights: {}), tuple(weights), min_image_size,
                                     phases, photo_source, _availability(weights))
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int = 10, in_chans: int | None = None, **kwargs) -> nn.Module:
    """Build model ``name``; ``in_chans`` defaults to the channels of its input contract."""
    entry = get_model_entry(name)
    if in_chans is None:
        in_chans = entry.contract.channels
    return entry.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)


def head_of(model: nn.Module) -> nn.Module:
    """The module that maps features to class logits: ``model.head`` where the model names one,
    else its last ``nn.Linear`` (every registered model ends in one). ``--init`` replaces it."""
    if isinstance(getattr(model, "head", None), nn.Module):
        return model.head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(model).__name__} has no nn.Linear classifier to replace")
    return linears[-1]


def body_of(model: nn.Module) -> list[nn.Module]:
    """``model``'s top-level parts that do not hold the head (kept frozen in a head phase)."""
    head = head_of(model)
    return [child for child in model.children() if not any(m is head for m in child.modules())]


def adapt_input_conv(weight, in_chans: int):
    """A first convolution's weight ``(out, c, k, k)`` for ``in_chans`` input channels, as timm's
    ``adapt_input_conv`` does for its models: the filter summed over its channels, spread evenly
    over the new ones. An image whose channels are all equal (a grey image as colour) then gives
    exactly the output the old weight gave on it, so a grey model adapted to colour starts where
    it was. (timm is not a dependency for these few lines, and its version covers 3 -> N only.)"""
    return weight.sum(1, keepdim=True).expand(-1, in_chans, -1, -1) / in_chans


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
