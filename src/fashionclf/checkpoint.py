"""Self-describing checkpoints: weights plus everything needed to rebuild and use the model.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(path, weights_only=True)`` (no pickled code runs). It carries the model
name and arguments, the class names, the preprocessing, the training config and metrics,
so predict, evaluate and export need only its path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import torch
from torch import nn

from .errors import UsageError
from .models import create_model

FORMAT = "fashionclf-checkpoint"
VERSION = 1


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file in the same directory, fsync, then rename
    over ``path``: a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    write_atomic(path, lambda f: torch.save(obj, f))


def make_checkpoint(model: nn.Module, model_name: str, model_kwargs: dict, classes: list[str],
                    class_indices: list[int], preprocessing: dict, config: dict, **extra) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "classes": list(classes),
        "class_indices": list(class_indices),
        "preprocessing": dict(preprocessing),
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def safe_load(path: Path, what: str, missing_hint: str):
    """``torch.load`` with ``weights_only=True`` (no pickled code runs); a missing or
    unreadable file is a UsageError naming ``what`` it should have been."""
    if not path.is_file():
        raise UsageError(f"{what} {path} not found; {missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise UsageError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir() and (path / "model.pt").is_file():
        path = path / "model.pt"
    ckpt = safe_load(path, "checkpoint", "pass the model.pt written by 'fashionclf train'")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UsageError(f"{path}: not a fashionclf checkpoint (no '{FORMAT}' marker)")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    spec = ckpt["model"]
    model = create_model(spec["name"], num_classes=len(ckpt["classes"]), **spec["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
