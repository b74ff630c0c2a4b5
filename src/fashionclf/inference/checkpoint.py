"""Self-describing checkpoints: weights plus everything needed to rebuild and use the model.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(path, weights_only=True)`` (no pickled code runs). It carries the model
name and arguments, the class names, the preprocessing (``fashionclf.models.contract``), the
training config and metrics, so predict, evaluate, export and serve need only its path.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from fashionclf.errors import UsageError
from fashionclf.fileio import safe_torch_load, save_torch_atomic
from fashionclf.models import create_model, head_of
from fashionclf.models.contract import source_shape

FORMAT = "fashionclf-checkpoint"
VERSION = 1  # raised when the layout changes; load_checkpoint refuses other versions with the fix


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


SEEN_SPLITS = ("train", "val")


def record_seen(hashes: dict[str, list[str]]) -> dict:
    """The photos a model trained and validated on, for its checkpoint's ``photos_seen``: per
    split, the SHA-256 of each file as a (N, 32) uint8 tensor (a tenth of the size of the
    hex strings, and loadable with ``weights_only``). ``evaluate`` leaves these photos out
    of the test figures of any data it is given."""
    import numpy as np
    import torch

    return {split: torch.from_numpy(np.frombuffer(bytes.fromhex("".join(hashes.get(split, []))), np.uint8)
                                    .reshape(-1, 32).copy()) for split in SEEN_SPLITS}


def seen_photos(ckpt: dict) -> dict[str, set[str]] | None:
    """``record_seen`` read back: split -> hex SHA-256s; None for a checkpoint without it
    (Fashion-MNIST runs, whose splits are the dataset's, or checkpoints of earlier versions)."""
    record = ckpt.get("photos_seen")
    if record is None:
        return None
    return {split: {row.tobytes().hex() for row in record[split].numpy()} for split in SEEN_SPLITS}


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Write atomically: a crash leaves the previous file or the new one, never half of one."""
    save_torch_atomic(ckpt, path)


def checkpoint_file(path: str | os.PathLike) -> Path:
    """``path``, or the model.pt in it when it is a run directory."""
    path = Path(path)
    return path / "model.pt" if path.is_dir() and (path / "model.pt").is_file() else path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint file (or the model.pt of a run directory), checked for format and version."""
    path = checkpoint_file(path)
    ckpt = safe_torch_load(path, "checkpoint", "pass the model.pt written by 'fashionclf train'")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UsageError(f"{path}: not a fashionclf checkpoint (no '{FORMAT}' marker)")
    version = ckpt.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        raise UsageError(
            f"{path}: checkpoint format version {version!r}, this fashionclf reads version {VERSION}; "
            + ("upgrade fashionclf to load it" if newer else
               "load it with the fashionclf version that wrote it, or retrain")
        )
    validate_checkpoint(ckpt, str(path))
    return ckpt


MAX_CLASSES = 1000
MAX_CLASS_NAME = 200
MAX_IMAGE_SIZE = 1024
KWARG_RANGES = {"in_chans": (1, 3), "width": (1, 1024), "dropout": (0.0, 0.99)}  # the builders' arguments


def validate_checkpoint(ckpt: dict, source: str = "checkpoint") -> None:
    """Check a checkpoint's metadata before anything is built from it: a model file is input,
    and ``{"width": 100000}`` would allocate gigabytes, ``weights: "imagenet"`` download at load
    time, a huge ``image_size`` or ``std: [0]`` exhaust memory or give NaN. Every field must be
    what fashionclf writes: a registered model, known arguments in range (no weights source),
    at most ``MAX_CLASSES`` short class names, a sane input contract."""
    import inspect
    import math

    import torch

    from fashionclf.models import get_model_entry
    from fashionclf.training.config import TTA_CHOICES

    def bad(what: str) -> UsageError:
        return UsageError(f"{source}: {what}; this is not a model file fashionclf wrote (load only model files "
                          "you trust)")

    spec = ckpt.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("kwargs"), dict):
        raise bad("no model name and arguments")
    try:
        entry = get_model_entry(spec["name"])
    except UsageError as exc:
        raise bad(str(exc)) from None
    allowed = sorted(set(inspect.signature(entry.builder).parameters) & set(KWARG_RANGES))
    for key, value in spec["kwargs"].items():
        low, high = KWARG_RANGES.get(key, (None, None))
        if key not in allowed or not isinstance(value, (int, float)) or not low <= value <= high:
            raise bad(f"model argument {key}={value!r} is not allowed (allowed: "
                      + ", ".join(f"{k} in [{KWARG_RANGES[k][0]}, {KWARG_RANGES[k][1]}]" for k in allowed) + ")")
    classes = ckpt.get("classes")
    if (not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES
            or not all(isinstance(c, str) and 0 < len(c) <= MAX_CLASS_NAME for c in classes)):
        raise bad(f"the class list must hold 2 to {MAX_CLASSES} names of 1 to {MAX_CLASS_NAME} characters")
    prep = ckpt.get("preprocessing")
    if not isinstance(prep, dict):
        raise bad("no preprocessing")
    size, channels = prep.get("image_size"), prep.get("channels")
    if not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE or channels not in (1, 3):
        raise bad(f"input {size!r}x{size!r}x{channels!r} out of range (size 1 to {MAX_IMAGE_SIZE}, 1 or 3 channels)")
    for key in ("mean", "std"):
        values = prep.get(key)
        if (not isinstance(values, list) or len(values) != channels
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
            raise bad(f"preprocessing {key} must be {channels} finite number(s), got {values!r}")
    if not all(v > 0 for v in prep["std"]):
        raise bad(f"preprocessing std must be positive, got {prep['std']!r}")
    if prep.get("tta", "none") not in TTA_CHOICES or prep.get("source") not in (None, "rgb"):
        raise bad(f"unknown test-time augmentation or source: {prep.get('tta')!r}, {prep.get('source')!r}")
    seen = ckpt.get("photos_seen")
    if seen is not None and not (isinstance(seen, dict) and set(seen) == set(SEEN_SPLITS) and all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 2 and t.shape[1] == 32
            for t in seen.values())):
        raise bad("photos_seen must hold a (N, 32) uint8 tensor of SHA-256 digests for train and val")
    unknown = ckpt.get("unknown")
    if unknown is not None:
        t, threshold = unknown.get("temperature"), unknown.get("threshold")
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0
                and isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise bad(f"calibration temperature {t!r} / threshold {threshold!r} must be finite, the temperature > 0")


def check_finite(ckpt: dict, source: str = "checkpoint") -> None:
    """Refuse weights holding NaN or infinity: every prediction of such a model is NaN."""
    import torch

    for name, tensor in ckpt["state_dict"].items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UsageError(f"{source}: weight {name!r} holds NaN or infinite values; the training run that "
                             "wrote it diverged: retrain with a lower --lr")


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    check_finite(ckpt)
    spec = ckpt["model"]
    model = create_model(spec["name"], num_classes=len(ckpt["classes"]), **spec["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_body(model: nn.Module, ckpt: dict, source: str = "--init") -> int:
    """Copy every weight of ``ckpt`` into ``model`` except its head's (``models.head_of``), which
    stays as built: a new head for new classes on a trained body. Returns the tensors copied."""
    head = head_of(model)
    prefix = next(name for name, m in model.named_modules() if m is head) + "."
    body = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:
        raise UsageError(f"{source}: its weights do not fit the model ({str(exc).splitlines()[-1].strip()}); "
                         "start from a checkpoint of the same model and settings") from None
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise UsageError(f"{source}: its weights do not fit the model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); start from a checkpoint of the same model")
    return len(body)


def model_info(ckpt: dict) -> dict:
    """The facts about a checkpoint that a client of predict/serve may want; the ONNX export
    carries the same dict in its metadata."""
    metrics = ckpt.get("metrics") or {}
    return {
        "model": ckpt["model"]["name"],
        "classes": list(ckpt["classes"]),
        "preprocessing": dict(ckpt["preprocessing"]),
        "test_accuracy": metrics.get("test_accuracy"),
        "unknown": {k: v for k, v in (ckpt.get("unknown") or {}).items() if k in ("score", "temperature", "threshold")}
        or None,
        "input": ({"dtype": "uint8", "shape": ["N", *source_shape(ckpt["preprocessing"])],
                   "polarity": "the photo as it is: RGB, letterboxed on its background colour"}
                  if ckpt["preprocessing"].get("source") == "rgb" else
                  {"dtype": "uint8", "shape": ["N", 28, 28],
                   "polarity": "light garment on a dark background, as Fashion-MNIST"}),
    }
