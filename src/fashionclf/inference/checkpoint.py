"""Self-describing checkpoints: ``Checkpoint``, the one definition of the model.pt / last.pt format.

On disk a checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(path, weights_only=True)`` (no pickled code runs) in any program. Version 1,
the format this module reads and writes::

    format        "fashionclf-checkpoint"        version   1
    model         {"name": str, "kwargs": {in_chans, width, dropout: numbers}}
    classes       [str, ...] (the model's output order)   class_indices  [int, ...]
    preprocessing the InputContract (``fashionclf.models.contract``) as a dict
    config        the TrainConfig that trained it, as a dict
    state_dict    {name: tensor}
    epoch         int (the epoch these weights are from), optional
    metrics       metrics.json of the run, once training has finished; optional
    unknown       the calibration: {"temperature", "threshold", "score", ...}; optional
    photos_seen   {"train"|"val": (N, 32) uint8 SHA-256s of the photos it learnt from}; optional
    attributes    [{"name", "values", "multi", "thresholds"}, ...]: a model of several attributes
                  (one head each, logits side by side; the first one's values are ``classes``);
                  optional, absent for a model of one
    last.pt adds  optimizer, ema, generator, torch_rng, history, best, budget (``ResumeState``)

Only this module indexes that dict: everything else holds a ``Checkpoint`` and reads its
attributes. A model file is input: ``Checkpoint.from_dict`` checks every field before
anything is built from it (``{"width": 100000}`` would allocate gigabytes, a huge
``image_size`` or ``std: [0]`` exhaust memory or give NaN).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from fashionclf.data.attributes import Schema
from fashionclf.errors import UsageError
from fashionclf.fileio import safe_torch_load, save_torch_atomic
from fashionclf.inference.graphs import checkpoint_file  # noqa: F401  (re-exported)
from fashionclf.models import adapt_input_conv, create_model, get_model_entry, head_of
from fashionclf.models.contract import InputContract, ServingNet
from fashionclf.models.inputs import contract_of_info  # noqa: F401  (re-exported)

FORMAT = "fashionclf-checkpoint"
VERSION = 1  # raised when the layout changes; load_checkpoint refuses other versions with the fix
SEEN_SPLITS = ("train", "val")
MAX_CLASSES = 1000
MAX_ATTRIBUTES = 64
MAX_CLASS_NAME = 200
KWARG_RANGES = {"in_chans": (1, 3), "width": (1, 1024), "dropout": (0.0, 0.99), "image_size": (4, 1024)}  # the builders' arguments
POLARITY = {"grey": "light garment on a dark background, as Fashion-MNIST",
            "colour": "each RGB channel the garment's difference from its backdrop, on black",
            "rgb": "the photo as it is: RGB, letterboxed on its background colour"}
RESUME_KEYS = ("optimizer", "generator", "torch_rng", "history", "best", "budget", "ema")


@dataclass
class ResumeState:
    """What last.pt holds beyond the weights, so ``train --resume`` continues exactly."""

    optimizer: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor
    history: list[dict]
    best: dict
    budget: dict | None = None
    ema: dict | None = None  # the weight average's state, when the run keeps one


@dataclass
class BodyTransfer:
    """What ``Checkpoint.load_body_into`` did: tensors copied, first-layer weights adapted to
    other input channels, tensors left fresh because their shape depends on the input size."""

    copied: int
    adapted: list[str]
    fresh: list[str]


@dataclass
class Checkpoint:
    """A trained (or training) model and everything needed to rebuild and use it: predict,
    evaluate, export and serve need only its path. See the module docstring for the file."""

    model: str  # a registered model's name
    model_kwargs: dict
    classes: list[str]
    class_indices: list[int]
    contract: InputContract
    config: dict  # the TrainConfig that trained it (``TrainConfig.from_dict`` reads it back)
    state_dict: dict[str, torch.Tensor]
    epoch: int | None = None
    metrics: dict | None = None
    unknown: dict | None = None  # calibration: temperature, threshold, score (``evaluation.ood``)
    photos_seen: dict[str, torch.Tensor] | None = None  # ``record_seen``
    resume: ResumeState | None = None  # last.pt only
    attributes: Schema | None = None  # several attributes, one head each; None: one, ``classes``

    @classmethod
    def of(cls, network: nn.Module, /, **fields) -> Checkpoint:
        """A checkpoint of ``network``'s current weights (copied to the CPU)."""
        return cls(state_dict={k: v.detach().cpu() for k, v in network.state_dict().items()}, **fields)

    def replace(self, **changes) -> Checkpoint:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ what it says

    @property
    def temperature(self) -> float:
        """The calibration temperature (1 for a model never calibrated)."""
        return float((self.unknown or {}).get("temperature", 1.0))

    @property
    def test_accuracy(self) -> float | None:
        return (self.metrics or {}).get("test_accuracy")

    def seen_photos(self) -> dict[str, set[str]] | None:
        """``record_seen`` read back: split -> hex SHA-256s; None when it was not recorded
        (Fashion-MNIST runs, whose splits are the dataset's, or files of earlier versions)."""
        if self.photos_seen is None:
            return None
        return {split: {row.tobytes().hex() for row in self.photos_seen[split].numpy()} for split in SEEN_SPLITS}

    def info(self) -> dict:
        """The facts a client of predict/serve may want; the ONNX export carries the same dict
        in its metadata."""
        shape = ["N", *self.contract.source_shape]
        return {
            "model": self.model,
            "classes": list(self.classes),
            "preprocessing": self.contract.to_dict(),
            "test_accuracy": self.test_accuracy,
            "unknown": {k: v for k, v in (self.unknown or {}).items() if k in ("score", "temperature", "threshold")}
            or None,
            "input": {"dtype": "uint8", "shape": shape, "polarity": POLARITY[self.contract.source]},
            **({"attributes": self.attributes.to_dict()} if self.attributes is not None else {}),
            "weights_sha256": self.weights_sha256(),
        }

    def weights_sha256(self) -> str:
        """A fingerprint of the weights (16 hex digits of a SHA-256 over the state dict): tells
        an int8 graph made from these weights from one made from others."""
        import hashlib

        digest = hashlib.sha256()
        for name in sorted(self.state_dict):
            digest.update(name.encode())
            digest.update(self.state_dict[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
        return digest.hexdigest()[:16]

    @property
    def heads(self) -> list[tuple[int, int, bool, float]] | None:
        """``ServingNet``'s heads: per attribute its logits' (start, stop), whether it is
        multi-label, and its temperature (the first head's is the checkpoint's own)."""
        if self.attributes is None:
            return None
        return [(s.start, s.stop, a.multi, self.temperature if i == 0 else a.temperature)
                for i, (a, s) in enumerate(zip(self.attributes.attributes, self.attributes.logit_slices))]

    def serving_net(self) -> nn.Module:
        """The network as predict, serve and the ONNX export run it (``ServingNet``), in eval mode."""
        return ServingNet(self.build_model(), self.contract, self.temperature, self.heads).eval()

    # ------------------------------------------------------------ what it builds

    def build_model(self) -> nn.Module:
        """The network with these weights, in eval mode; weights holding NaN are refused."""
        for name, tensor in self.state_dict.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise UsageError(f"checkpoint: weight {name!r} holds NaN or infinite values; the training run "
                                 "that wrote it diverged: retrain with a lower --lr")
        outputs = len(self.classes) if self.attributes is None else self.attributes.outputs
        model = create_model(self.model, num_classes=outputs, **self.model_kwargs)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def load_body_into(self, model: nn.Module, source: str = "--init") -> BodyTransfer:
        """Copy every weight into ``model`` except its head's (``models.head_of``), which stays
        as built: a new head for new classes on a trained body. A first convolution made for
        other input channels is adapted (``models.adapt_input_conv``); a layer whose shape
        depends on the input size (the reference CNNs' first dense layer) keeps its fresh start."""
        head = head_of(model)
        prefix = next(name for name, m in model.named_modules() if m is head) + "."
        target = model.state_dict()
        body = {k: v for k, v in self.state_dict.items() if not k.startswith(prefix)}
        missing = [k for k in target if k not in body and not k.startswith(prefix)]
        unexpected = [k for k in body if k not in target]
        if missing or unexpected:
            raise UsageError(f"{source}: its weights do not fit the model (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); start from a checkpoint of the same model")
        copied, adapted, fresh = {}, [], []
        for key, value in body.items():
            want = target[key].shape
            if value.shape == want:
                copied[key] = value
            elif value.dim() == 4 and value.shape[0] == want[0] and value.shape[2:] == want[2:]:
                copied[key] = adapt_input_conv(value, want[1])
                adapted.append(key)
            else:
                fresh.append(key)
        model.load_state_dict(copied, strict=False)
        return BodyTransfer(len(copied), adapted, fresh)

    # ------------------------------------------------------------ the file

    def to_dict(self) -> dict:
        out = {"format": FORMAT, "version": VERSION, "model": {"name": self.model, "kwargs": dict(self.model_kwargs)},
               "classes": list(self.classes), "class_indices": list(self.class_indices),
               "preprocessing": self.contract.to_dict(), "config": dict(self.config), "state_dict": self.state_dict}
        for key in ("epoch", "metrics", "unknown", "photos_seen"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.attributes is not None:
            out["attributes"] = self.attributes.to_dict()
        if self.resume is not None:
            out.update({k: getattr(self.resume, k) for k in RESUME_KEYS if getattr(self.resume, k) is not None or k != "ema"})
        return out

    @classmethod
    def from_dict(cls, d: dict, source: str = "checkpoint") -> Checkpoint:
        """A checkpoint dict of format version 1, checked field by field (``UsageError`` otherwise)."""
        def bad(what: str) -> UsageError:
            return UsageError(f"{source}: {what}; this is not a model file fashionclf wrote (load only model files "
                              "you trust)")

        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UsageError(f"{source}: not a fashionclf checkpoint (no '{FORMAT}' marker)")
        version = d.get("version")
        if version != VERSION:
            newer = isinstance(version, int) and version > VERSION
            raise UsageError(f"{source}: checkpoint format version {version!r}, this fashionclf reads version "
                             f"{VERSION}; " + ("upgrade fashionclf to load it" if newer else
                                               "load it with the fashionclf version that wrote it, or retrain"))
        name, kwargs = _model_spec(d.get("model"), bad)
        classes = d.get("classes")
        if (not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES
                or not all(isinstance(c, str) and 0 < len(c) <= MAX_CLASS_NAME for c in classes)):
            raise bad(f"the class list must hold 2 to {MAX_CLASSES} names of 1 to {MAX_CLASS_NAME} characters")
        try:
            contract = InputContract.from_dict(d.get("preprocessing"))
        except UsageError as exc:
            raise bad(f"preprocessing: {str(exc).removeprefix('input contract: ')}") from None
        if not isinstance(d.get("state_dict"), dict):
            raise bad("no state_dict")
        _check_seen(d.get("photos_seen"), bad)
        _check_unknown(d.get("unknown"), bad)
        resume = ResumeState(**{k: d.get(k) for k in RESUME_KEYS}) if "optimizer" in d else None
        return cls(name, kwargs, list(classes), list(d.get("class_indices") or range(len(classes))), contract,
                   dict(d.get("config") or {}), d["state_dict"], d.get("epoch"), d.get("metrics"), d.get("unknown"),
                   d.get("photos_seen"), resume, _attributes(d.get("attributes"), classes, bad))


def _model_spec(spec, bad) -> tuple[str, dict]:
    """A registered model's name and its arguments, each known to its builder and in range (no
    weights source: a model file must not download at load time)."""
    import inspect

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
    return spec["name"], dict(spec["kwargs"])


def _attributes(items, classes: list[str], bad) -> Schema | None:
    """The attributes of a model with several heads (absent: one head, ``classes``)."""
    if items is None:
        return None
    names_ok = (isinstance(items, list) and 1 <= len(items) <= MAX_ATTRIBUTES and all(
        isinstance(a, dict) and isinstance(a.get("name"), str) and 0 < len(a["name"]) <= MAX_CLASS_NAME
        and isinstance(a.get("values"), list) and 1 <= len(a["values"]) <= MAX_CLASSES
        and all(isinstance(v, str) and 0 < len(v) <= MAX_CLASS_NAME for v in a["values"])
        and isinstance(a.get("thresholds", []), list) and len(a.get("thresholds") or a["values"]) == len(a["values"])
        and all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in a.get("thresholds") or [])
        and isinstance(a.get("temperature", 1.0), (int, float)) and 0.01 <= a.get("temperature", 1.0) <= 100
        for a in items))
    if not names_ok:
        raise bad(f"attributes must be 1 to {MAX_ATTRIBUTES} of {{name, values[, thresholds]}}, with 1 to "
                  f"{MAX_CLASSES} values each (a threshold in [0, 1] per value, a temperature in [0.01, 100])")
    schema = Schema.from_dict(items)
    if list(schema.first.values) != list(classes):
        raise bad("the first attribute's values must be the class list")
    return schema


def _check_seen(seen, bad) -> None:
    if seen is not None and not (isinstance(seen, dict) and set(seen) == set(SEEN_SPLITS) and all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 2 and t.shape[1] == 32
            for t in seen.values())):
        raise bad("photos_seen must hold a (N, 32) uint8 tensor of SHA-256 digests for train and val")


def _check_unknown(unknown, bad) -> None:
    if unknown is None:
        return
    t, threshold = (unknown.get("temperature"), unknown.get("threshold")) if isinstance(unknown, dict) else (0, 0)
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0
            and isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise bad(f"calibration temperature {t!r} / threshold {threshold!r} must be finite, the temperature > 0")


def record_seen(hashes: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """The photos a model trained and validated on, for ``Checkpoint.photos_seen``: per split,
    the SHA-256 of each file as a (N, 32) uint8 tensor (a tenth of the size of the hex strings,
    and loadable with ``weights_only``). ``evaluate`` leaves these photos out of the test
    figures of any data it is given."""
    import numpy as np

    return {split: torch.from_numpy(np.frombuffer(bytes.fromhex("".join(hashes.get(split, []))), np.uint8)
                                    .reshape(-1, 32).copy()) for split in SEEN_SPLITS}


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint file (or the model.pt of a run directory), checked for format and version."""
    path = checkpoint_file(path)
    raw = safe_torch_load(path, "checkpoint", "pass the model.pt written by 'fashionclf train'")
    return Checkpoint.from_dict(raw, str(path))


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> None:
    """Write atomically: a crash leaves the previous file or the new one, never half of one."""
    save_torch_atomic(ckpt.to_dict(), path)

