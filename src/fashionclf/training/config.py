"""Every training setting, in one table: ``TrainConfig``.

Each field carries its default, its help text and *why* that default was chosen; the
command line (``fashionclf train --help``), the defaults and the checks are all generated
from it. Settings marked ``layered`` take their value, highest first, from: a flag given
on the command line, the recipe (``fashionclf.training.recipes``), the model's own defaults (its
registry entry), then the default here. ``resolve_config`` does that; the run's config.json
records the resolved values, so ``--config``-free reruns repeat a run exactly.

Adding a training setting: a field here, and the code that uses it (``loop``, ``run`` or ``budget``).

This module imports no torch, so the command line starts fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import dataclass, field, fields

from fashionclf.data.split import SplitSettings
from fashionclf.errors import UsageError
from fashionclf.training.recipes import RECIPES
from fashionclf.training.transforms import AUGMENTATIONS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
BN_POLICIES = ("frozen", "train")
PRECISIONS = ("fp32", "bf16", "auto")
# What models.contract.InferenceNet implements (its TTA_CHOICES; test_architecture keeps the two
# equal), named here too so that the command line starts without importing torch.
TTA_CHOICES = ("none", "flip")
BACKENDS = ("auto", "torch", "onnx")
GRAPHS = ("fp32", "int8", "fastest")  # predict/serve --graph: which ONNX graph of a model.pt (classifier.load_classifier)
INPUTS = ("grey", "rgb")
SERVE_BACKEND = "onnx"  # ONNX Runtime: 2-6x PyTorch's images/s for these small models (docs/results.md)
SPLITS = ("test", "val", "train")
# Images per inference call of predict: the small models' images/s is flat from about 128 up,
# and 256 decoded photos take little memory.
PREDICT_BATCH_SIZE = 256
STEM_INITS = ("random", "whiten")
BALANCES = ("none", "weights", "sqrt")
CALIBRATIONS = ("auto", "split", "crossfit")
# Photo sets under this many labelled photos (and without splits of their own) are calibrated
# on cross-fitted answers by default (``fashionclf.training.crossfit``: docs/results.md).
SMALL_SET = 1000
CROSSFIT_FOLDS = 5  # the folds' models learn from 80% of the photos: near what the final model learns from


@dataclass(frozen=True)
class Flag:
    """How a setting is spelt on the command line beyond ``--its-name``: other ``spellings``,
    and ``const``, the value of the flag given alone (``--balance`` = ``--balance sqrt``)."""

    spellings: tuple[str, ...] = ()
    const: object = None


def setting(default, help: str, why: str = "", *, kind: type | None = None, choices: tuple = (), minimum=None,
            flag: Flag = Flag(), layered: bool = True):
    """A ``TrainConfig`` field. ``layered`` settings default to ``None`` in the dataclass
    (meaning "not given") and take ``default`` only if neither a recipe nor the model sets
    them; the others take ``default`` directly. ``flag``: other command-line spellings (``Flag``).
    A boolean setting (on by default) gets a flag that switches it off (``--no-verify``); a list
    setting one that is repeated, an item per use (``--data A --data B``)."""
    meta = {"default": default, "help": help, "why": why, "type": kind or (str if default is None else type(default)),
            "choices": tuple(choices), "minimum": minimum, "flag": flag, "layered": layered}
    return field(default=None if layered else default, metadata=meta)


@dataclass
class TrainConfig:
    """Every training setting (see the module docstring for how values are chosen)."""

    recipe: str | None = setting(None, "a named table of settings ('fashionclf recipes' lists them); "
                                 "flags given with it override it", choices=tuple(RECIPES), layered=False)
    model: str | None = setting("one-block-cnn", "a name from 'fashionclf models'",
                                "the retail-tagging reference program's network")
    classes: str | None = setting(None, "class subset by name, alias or index, e.g. tshirt,sneaker,bag "
                                  "(default: all ten)", layered=False)
    init: str | None = setting(None, "start from a fashionclf checkpoint (model.pt): its body is kept and a new "
                               "head is made for this data's classes; the model and, unless given, the input "
                               "size come from it (a grey model's first layer is adapted to --input rgb)",
                               layered=False)
    weights: str | None = setting("none", "pretrained start: auto, imagenet, none, or PATH of a state-dict file",
                                  "auto for a model with pretrained weights: its first named weights where they "
                                  "are cached or can be downloaded, else a random start (the log says so)")
    image_size: int | None = setting(None, "input side the model sees (photos are cut out at this size; "
                                     "the 28x28 dataset images resized)", "the model's (28 for the CNNs)",
                                     kind=int, minimum=1)
    input: str | None = setting(None, "grey, or rgb: the model sees colour (three channels; photos cut out "
                                "in colour)", "rgb for photo data (a shop's colours are there to learn), grey for "
                                "Fashion-MNIST (its images are grey); mobilenet_v2 always rgb",
                                choices=INPUTS)
    epochs: int | None = setting(10, "epochs of the main (fine-tuning) phase; given, it overrides a time budget",
                                 "the reference programs' budget; the best epoch by val accuracy is kept",
                                 minimum=1, flag=Flag(("--finetune-epochs",)))
    time_budget: str | None = setting(None, "train within this wall-clock time, final evaluation included, e.g. "
                                      "90s, 10m, 1h30m: a few timed steps fix the number of epochs, which "
                                      "config.json records (repeat the run with --epochs N)",
                                      "none: epochs decide; the strong recipe says 10m, so it ends in time on any "
                                      "CPU")
    schedule_cut: str | None = setting(None, "how a time budget re-planned a run on its measured pace (shorter "
                                       "when it would end late, longer when early): 'N@K' = the learning-rate "
                                       "schedule was planned for N epochs until epoch K, then goes linearly to 0 "
                                       "by the next plan, or --epochs (comma-separated when it happened more than "
                                       "once); config.json records it, so --epochs with it repeats such a run",
                                       layered=False)
    batch_size: int | None = setting(32, "images per optimizer step", "Keras' default, used by both references",
                                     minimum=1)
    lr: float | None = setting(1e-3, "peak learning rate of the main (fine-tuning) phase",
                               "Adam's usual default, as in the references", flag=Flag(("--finetune-lr",)))
    optimizer: str | None = setting("adam", "SGD uses momentum 0.9, Nesterov", "as the references",
                                    choices=OPTIMIZERS)
    weight_decay: float | None = setting(0.0, "on weights only, not biases or BatchNorm", "the references use none",
                                         minimum=0.0)
    lr_schedule: str | None = setting("cosine", "per phase: constant, cosine (per epoch, to 0) or onecycle "
                                      "(per step: warm-up, then linear to 0)",
                                      "+0.8 pt median test accuracy over constant for one-block-cnn",
                                      choices=SCHEDULES)
    stem_init: str | None = setting("random", "the first convolution's starting filters: random, or whiten "
                                    "(airbench's patch whitening, from the training images)",
                                    "measured in docs/results.md", choices=STEM_INITS)
    augment: str | None = setting("none", f"training batches only: none, or a list of {', '.join(AUGMENTATIONS)}",
                                  "flips narrow the CNNs' train/test gap but do not raise test accuracy")
    head_epochs: int | None = setting(0, "phase 1: epochs training only the new head on the frozen base "
                                      "(models with phases, e.g. mobilenet_v2)",
                                      "one phase: every parameter trains from the first epoch", minimum=0)
    head_lr: float | None = setting(1e-3, "learning rate of phase 1", "Adam's usual default")
    unfreeze: str | None = setting("all", "main phase trains 'all' of the base or its last N blocks "
                                   "(models with phases)")
    bn_policy: str | None = setting("train", "main phase: 'frozen' keeps BatchNorm in inference mode "
                                    "(running statistics untouched), 'train' updates it",
                                    "BatchNorm trained from scratch must learn its statistics; pretrained "
                                    "bases say frozen", choices=BN_POLICIES)
    label_smoothing: float | None = setting(0.0, "cross-entropy against (1 - s) one-hot + s uniform targets",
                                            "the references use none", minimum=0.0)
    ema: float | None = setting(0.0, "evaluate and keep an exponential moving average of the weights with "
                                "this per-step decay, e.g. 0.999; 0: off",
                                "the reference CNNs end on a decayed learning rate anyway", minimum=0.0)
    tta: str | None = setting("none", "test-time augmentation kept in the model: flip averages each image "
                              "with its mirror in evaluation and prediction",
                              "flip averaging doubles inference cost; a model or recipe opts in",
                              choices=TTA_CHOICES)
    attribute_weights: str | None = setting(None, "data of several attributes: their losses' weights, e.g. "
                                            "colour=2,pattern=0.5 (attributes not named: 1)",
                                            "equal: each attribute's loss counts alike", layered=False)
    balance: str | None = setting("none", "skewed classes or values: 'weights' weights each class's loss by the "
                                  "inverse of its training photo count (sklearn's 'balanced'), a multi-label "
                                  "value's by its negatives over positives; 'sqrt' (or the flag alone) by their "
                                  "square roots",
                                  "none: Fashion-MNIST's classes are balanced; on a skewed attribute sqrt raised the "
                                  "mean recall over its values by 6 points at the same accuracy, weights cost 10 "
                                  "points of accuracy (docs/results.md)", choices=BALANCES, flag=Flag(const="sqrt"))
    precision: str | None = setting("fp32", "training arithmetic: fp32, bf16 (autocast; weights stay fp32), "
                                    "or auto: bf16 where the CPU/GPU has it in hardware; evaluation is fp32",
                                    "bit-for-bit repeatable everywhere; the recipes say auto",
                                    choices=PRECISIONS)
    cache_features: bool = setting(True, "phase 1 without augmentation: compute the frozen base's features "
                                   "once instead of every epoch", layered=False)
    seed: int = setting(SplitSettings.seed, "fixes the train/val split, initial weights, batch order and augmentation draws",
                        layered=False)
    val_fraction: float = setting(SplitSettings.val_fraction, "share of the training set held out for validation (stratified); "
                                  "0: none, the last epoch is kept",
                                  "as reference 2; the test set is never used to choose", layered=False)
    data: list[str] | None = setting(None, "training data, repeatable: a folder of class folders (PATH/<class>/*.jpg), "
                                     "of train|val|test split folders, a CSV manifest (path,label[,split]), or a "
                                     "folder with the four Fashion-MNIST IDX files (default: Fashion-MNIST, searched "
                                     "in the usual places, see 'fashionclf data')", kind=str, layered=False,
                                     flag=Flag(("--data-dir",)))
    test_fraction: float = setting(SplitSettings.test_fraction, "photo data without its own test split: share of each class held out for "
                                   "testing (stratified, seeded)",
                                   "a few hundred photos per class leave 20% enough to measure on", layered=False)
    calibration: str = setting("auto", "where the temperature and the unknown-item threshold come from: 'split', "
                               "the validation split (the model learns from the photos left after val and test "
                               f"are carved out); 'crossfit', every photo's answer from one of {CROSSFIT_FOLDS} "
                               "models that did not learn from it, the final model learning from every photo "
                               f"({CROSSFIT_FOLDS + 1} trainings, no held-out test split); 'auto': crossfit for "
                               f"photo data under {SMALL_SET} labelled photos without splits of its own, else split",
                               "with 50 photos a class, carving leaves 35 to learn from and sets the threshold on "
                               "5 a class (docs/results.md)", choices=CALIBRATIONS, layered=False)
    verify: bool = setting(True, "check the SHA-256 of the decompressed data", layered=False)
    threads: int | None = setting(None, "CPU threads (default: all cores)", kind=int, minimum=1, layered=False)
    device: str = setting("auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:N", layered=False)
    out: str = setting("runs/default", "run directory", layered=False)

    # The settings that config.json keeps as text, parsed once per config (``validate_config``
    # checked them when it was resolved): the code reads these, never the text.
    @functools.cached_property
    def augmentations(self) -> list[str]:
        """``augment`` as a list of names: ``"flip,shift"`` -> ``["flip", "shift"]``."""
        return parse_augment(self.augment)

    @functools.cached_property
    def budget_seconds(self) -> float | None:
        """``time_budget`` in seconds (None: no budget)."""
        return parse_duration(self.time_budget)

    @functools.cached_property
    def cuts(self) -> list[tuple[int, int]]:
        """``schedule_cut`` as (epochs planned, epoch after which they were cut) pairs."""
        return parse_schedule_cut(self.schedule_cut)

    @functools.cached_property
    def loss_weights(self) -> dict[str, float]:
        """``attribute_weights`` as {attribute: weight}: ``"colour=2"`` -> ``{"colour": 2.0}``."""
        return parse_attribute_weights(self.attribute_weights)

    @property
    def split(self) -> SplitSettings:
        return SplitSettings(self.val_fraction, self.test_fraction, self.seed)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a saved config.json (unknown keys from other versions are ignored)."""
        values = dict(values)
        if values.get("data_dir") and not values.get("data"):  # config.json of version 0.x
            values["data"] = [values["data_dir"]]
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def flag_of(name: str) -> str:
    """The command-line flag of setting ``name``: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def defaults() -> dict:
    """The default of every setting (before recipe and model defaults)."""
    return {f.name: f.metadata["default"] for f in fields(TrainConfig)}


def add_flags(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Add the flags of ``names`` (default: every setting) to ``parser``, with help generated
    from the table: what it does, its default and why."""
    for f in fields(TrainConfig):
        if names is not None and f.name not in names:
            continue
        m = f.metadata
        if m["type"] is bool:  # on by default: its flag switches it off
            parser.add_argument("--no-" + flag_of(f.name)[2:], dest=f.name, action="store_false",
                                help=m["help"] + " (skip it)")
            continue
        default = m["default"]
        if m["layered"]:
            who = "the recipe names another" if f.name == "model" else "the recipe or model sets it"
            shown = f"{default}, unless {who}" if default is not None else "the model's"
        else:
            shown = "none" if default is None else default
        why = f"; {m['why']}" if m["why"] else ""
        kwargs = dict(dest=f.name, type=m["type"], help=f"{m['help']} (default: {shown}{why})".replace("%", "%%"))
        if str(f.type).startswith("list"):  # repeated: one item per use
            kwargs["action"] = "append"
        if m["choices"]:
            kwargs["choices"] = m["choices"]
        if m["flag"].const is not None:
            kwargs.update(nargs="?", const=m["flag"].const)
        if not m["layered"]:
            kwargs["default"] = default
        parser.add_argument(flag_of(f.name), *m["flag"].spellings, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})


def over_saved(path: str, config: TrainConfig, given: set[str]) -> TrainConfig:
    """``train --config FILE``: the settings saved in FILE (a run's config.json, tune's
    best.json), with the settings named in ``given`` (those typed on the command line, even
    at their default value) taken from ``config`` over them."""
    import json

    try:
        with open(path) as f:
            saved = TrainConfig.from_dict(json.load(f))
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"--config {path}: cannot read it as a fashionclf config ({exc}); pass a config.json of "
                         "a run or the best.json of 'fashionclf tune'") from None
    names = {f.name for f in fields(TrainConfig)}
    return dataclasses.replace(saved, **{name: getattr(config, name) for name in given & names})


def parse_attribute_weights(spec: str | None) -> dict[str, float]:
    """``"colour=2,pattern=0.5"`` -> ``{"colour": 2.0, "pattern": 0.5}``; weights must be >= 0."""
    out = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, eq, value = part.rpartition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not eq or not name.strip() or not weight >= 0:
            raise UsageError(f"--attribute-weights takes NAME=WEIGHT pairs, comma-separated, each weight 0 or more, "
                             f"e.g. colour=2,pattern=0.5; got {spec!r}")
        out[name.strip()] = weight
    return out


def parse_augment(spec: str | None) -> list[str]:
    """``"flip,rotate"`` -> ``["flip", "rotate"]``; ``"none"``/empty -> ``[]``."""
    if not spec or spec == "none":
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad:
        raise UsageError(f"unknown augmentation {bad[0]!r}; valid: none, or a list of {', '.join(AUGMENTATIONS)}")
    return names


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill every unset setting: the flag if given, else the recipe, else the model's default,
    else the table's default; then check the result (``validate_config``)."""
    from fashionclf.models import get_model_entry

    if config.recipe is not None and config.recipe not in RECIPES:
        raise UsageError(f"unknown recipe {config.recipe!r}; valid: {', '.join(RECIPES)}")
    recipe = RECIPES.get(config.recipe, {})
    given = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
    base = defaults()
    model = given.get("model") or recipe.get("model") or base["model"]
    entry = get_model_entry(model)  # raises on an unknown name, listing valid ones
    weights = given.get("weights") or recipe.get("weights") or ("auto" if entry.weights else "none")
    if weights == "auto":  # the model's first named weights where they can be had, else a random start
        weights = entry.weights[0] if entry.weights and entry.unavailable(entry.weights[0]) is None else "none"
    layers = {**base, "image_size": entry.input_size, "input": default_input(entry, given.get("data")),
              **entry.train_defaults(weights), **recipe, "model": model, "weights": weights}
    if "epochs" in given and "time_budget" in given:
        raise UsageError(f"--epochs {given['epochs']} and --time-budget {given['time_budget']} both fix the length "
                         "of training; give one")
    if "epochs" in given:  # epochs given on the command line beat a recipe's time budget
        layers["time_budget"] = None
    resolved = TrainConfig(**{**layers, **given})
    validate_config(resolved)
    return resolved


def default_input(entry, data) -> str:
    """rgb for models that take colour (their contract has three channels) and for photo data,
    grey for Fashion-MNIST's grey images."""
    from fashionclf.data.sources import is_fashion_mnist

    return "rgb" if entry.contract.channels == 3 or not is_fashion_mnist(data) else "grey"


def parse_schedule_cut(text: str | None) -> list[tuple[int, int]]:
    """``"13@5,12@8"`` -> ``[(13, 5), (12, 8)]``: (epochs planned, epoch after which they were cut)."""
    if not text:
        return []
    cuts = []
    for part in str(text).split(","):
        planned, at, after = part.strip().partition("@")
        if not (at and planned.isdigit() and after.isdigit()):
            raise UsageError(f"--schedule-cut takes N@K pairs (epochs planned @ epoch of the cut), e.g. 13@5, "
                             f"got {text!r}")
        cuts.append((int(planned), int(after)))
    return cuts


def parse_duration(text: str | None, flag: str = "--time-budget") -> float | None:
    """``"90s"``, ``"10m"``, ``"1h30m"``, ``"45"`` (seconds) -> seconds; None stays None."""
    if text is None:
        return None
    import re

    spec = str(text).strip().lower()
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?", spec)
    if not spec or match is None:
        raise UsageError(f"{flag} takes a duration such as 90s, 10m or 1h30m, got {text!r}")
    hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
    seconds = 3600 * hours + 60 * minutes + secs
    if seconds <= 0:
        raise UsageError(f"{flag} must be longer than 0, got {text!r}")
    return seconds


def config_warnings(config: TrainConfig) -> list[str]:
    """Settings that are valid but, measured, cost accuracy: said in the training log."""
    warnings = []
    if config.tta == "flip" and "flip" not in config.augmentations:
        # Measured: the fast recipe at 2 epochs, test 0.9126 without and 0.7964 with --tta flip.
        warnings.append("--tta flip averages each image with its mirror, but --augment has no flip, so the model "
                        "never sees mirrored garments in training and can lose many points: add flip to --augment "
                        "or use --tta none")
    return warnings


def validate_config(config: TrainConfig) -> None:
    """Check a resolved config; every problem is a UsageError that names the flag and the fix."""
    from fashionclf.models import get_model_entry, list_models

    for f in fields(TrainConfig):
        m, value, flag = f.metadata, getattr(config, f.name), flag_of(f.name)
        if value is None:
            continue
        if m["choices"] and value not in m["choices"]:
            raise UsageError(f"unknown {flag} {value!r}; valid: {', '.join(m['choices'])}")
        if m["minimum"] is not None and value < m["minimum"]:
            raise UsageError(f"{flag} must be at least {m['minimum']}, got {value}")
    entry = get_model_entry(config.model)
    if not (0 <= config.label_smoothing < 1 and 0 <= config.ema < 1):
        raise UsageError(f"--label-smoothing and --ema take values in [0, 1), got {config.label_smoothing} "
                         f"and {config.ema}")
    if not 0 <= config.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    if not 0 < config.test_fraction < 1 or config.val_fraction + config.test_fraction >= 1:
        raise UsageError(f"--test-fraction must be in (0, 1) and leave photos to train on beside --val-fraction, "
                         f"got {config.test_fraction} and {config.val_fraction}")
    parse_augment(config.augment)
    parse_attribute_weights(config.attribute_weights)
    parse_duration(config.time_budget)
    cuts = parse_schedule_cut(config.schedule_cut)
    ends = [n for n, _ in cuts] + [config.epochs]
    if cuts and not all(k < n and k <= end != n and (i == 0 or k > cuts[i - 1][1])
                        for i, ((n, k), end) in enumerate(zip(cuts, ends[1:]))):
        raise UsageError(f"--schedule-cut {config.schedule_cut} does not fit --epochs {config.epochs}: each N@K "
                         "needs K < N, later cuts later epochs, and the next plan (or --epochs) at least K and "
                         "other than N; copy both from the run's config.json")
    if config.stem_init == "whiten" and config.init:
        raise UsageError("--stem-init whiten sets up a network trained from scratch; --init keeps the checkpoint's "
                         "first layer: leave one out")
    if not (config.lr > 0 and config.head_lr > 0):
        raise UsageError(f"--lr and --head-lr must be positive, got {config.lr} and {config.head_lr}")
    if config.unfreeze != "all" and not (str(config.unfreeze).isdigit() and int(config.unfreeze) > 0):
        raise UsageError(f"--unfreeze takes 'all' or a number of blocks (1 or more), got {config.unfreeze!r}")
    if not entry.phases and ((config.head_epochs and not config.init) or config.unfreeze != "all"):
        with_phases = [m for m in list_models() if get_model_entry(m).phases]
        raise UsageError(f"model {config.model} has no separate head and blocks; --head-epochs and "
                         f"--unfreeze N apply to: {', '.join(with_phases)} (and --head-epochs to any model "
                         "started with --init)")
    if config.weights != "none" and not entry.weights:
        with_weights = [m for m in list_models() if get_model_entry(m).weights]
        raise UsageError(f"model {config.model} has no pretrained weights; --weights applies to: "
                         f"{', '.join(with_weights)}")
    size = config.image_size
    if entry.min_image_size is None and size != entry.input_size:
        raise UsageError(f"model {config.model} takes {entry.input_size}x{entry.input_size} input only, "
                         f"got --image-size {size}")
    if entry.min_image_size is not None and size < entry.min_image_size:
        raise UsageError(f"--image-size {size} is too small for {config.model}: at least {entry.min_image_size}")
