"""The fast and strong recipes, the one-cycle schedule, random erasing and the ONNX backend."""

import csv
import json

import numpy as np
import pytest
import torch

from fashionclf.cli import main
from fashionclf.config import TrainConfig, resolve_config
from fashionclf.recipes import RECIPES
from fashionclf.train import learning_rate
from fashionclf.transforms import augment


WITH_MODEL = sorted(r for r in RECIPES if "model" in RECIPES[r])  # "shop" takes its model from --init


@pytest.mark.parametrize("recipe", WITH_MODEL)
def test_recipe_sets_its_model_and_settings_and_flags_override_it(recipe):
    config = resolve_config(TrainConfig(recipe=recipe))
    assert config.model == RECIPES[recipe]["model"]
    assert config.lr_schedule == "onecycle" and config.label_smoothing > 0
    overridden = resolve_config(TrainConfig(recipe=recipe, epochs=1, lr=0.123))
    assert (overridden.epochs, overridden.lr) == (1, 0.123)
    assert overridden.optimizer == config.optimizer  # the rest of the recipe stays
    plain = resolve_config(TrainConfig(model=RECIPES[recipe]["model"]))  # the model alone: the global defaults
    assert plain.lr_schedule == "cosine" and plain.optimizer == "adam"


def test_a_recipe_works_with_any_model():
    config = resolve_config(TrainConfig(recipe="strong", model="two-block-cnn", precision="fp32", device="cpu"))
    assert config.model == "two-block-cnn"
    assert (config.optimizer, config.lr, config.augment, config.tta) == ("sgd", 0.05, "flip,shift,erase", "flip")
    # A model's own defaults give way to the recipe, and flags to nothing.
    mobile = resolve_config(TrainConfig(recipe="fast", model="mobilenet_v2", weights="none", lr=0.5))
    assert (mobile.optimizer, mobile.batch_size, mobile.lr, mobile.ema) == ("adamw", 128, 0.5, 0.999)


def test_onecycle_rises_then_falls_to_zero_within_the_phase():
    config = resolve_config(TrainConfig(recipe="fast", epochs=4, lr=1.0))
    lrs = [learning_rate(config, e, f) for e in range(1, 5) for f in np.linspace(0, 1, 9)[:-1]]
    peak = int(np.argmax(lrs))
    assert lrs[0] == 0 and max(lrs) == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))
    assert learning_rate(config, 4, 0.999) < 0.01


def test_random_erasing_blacks_out_one_rectangle_in_about_half_the_images():
    images = torch.full((400, 28, 28), 200, dtype=torch.uint8)
    out = augment(images, ["erase"], torch.Generator().manual_seed(0))
    erased = (out == 0).flatten(1).any(1)
    assert 0.4 < erased.float().mean() < 0.6
    for img in out[erased][:20]:
        rows, cols = torch.nonzero(img == 0, as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == len(rows)  # the zeros form one filled rectangle
        assert 0.01 * 784 <= len(rows) <= 0.3 * 784
    assert torch.equal(out[~erased], images[~erased])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", WITH_MODEL)
def test_recipe_trains_exports_and_predicts_through_both_backends(recipe, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    # Shifts would blur the synthetic classes (a bar whose row is the class, 2 px apart).
    rc = main(["train", "--recipe", recipe, "--epochs", "4", "--batch-size", "32", "--augment", "flip,erase",
               "--data-dir", str(tiny_data), "--no-verify", "--threads", "1", "--out", str(out)])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == RECIPES[recipe]["model"] and config["recipe"] == recipe
    assert config["epochs"] == 4 and config["lr_schedule"] == "onecycle"
    lrs = [float(r["lr"]) for r in csv.DictReader(open(out / "history.csv"))]  # each epoch's mean rate
    peak = config["lr"]
    # One-cycle over 4 epochs: warm-up over the first, then linear decay to 0.
    assert lrs[0] == pytest.approx(peak / 2, rel=0.1) and lrs[1] > lrs[2] > lrs[3] > 0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.5  # chance is 0.1

    assert main(["export", str(out / "model.pt"), "--data-dir", str(tiny_data), "--check-images", "50"]) == 0
    report = capsys.readouterr().out
    assert "parity on 50 test images" in report and ": ok" in report
    assert (out / "model.onnx").is_file()

    from PIL import Image

    from helpers import synthetic_images

    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(synthetic_images(np.arange(10), seed=1)):
        Image.fromarray(img).save(folder / f"{i}.png")
    results = {}
    for args in ([str(out / "model.pt"), "--backend", "torch"], [str(out / "model.onnx")],
                 [str(out / "model.pt"), "--backend", "onnx"]):
        assert main(["predict", *args, str(folder), "--format", "json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        results[args[-1]] = [(r["label"], round(r["confidence"], 4)) for r in rows]
    assert results["torch"] == results[str(out / "model.onnx")] == results["onnx"]


def test_recipes_command_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name, table in RECIPES.items():
        assert f"{name}:" in out and all(f"--{k.replace('_', '-')} {v}" in out for k, v in table.items())


def test_onnx_file_not_from_fashionclf_and_torch_backend_on_onnx_are_usage_errors(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), path)
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", str(path), str(tmp_path / "x.png")]) == 2
    assert "not written by 'fashionclf export'" in capsys.readouterr().err
    assert main(["predict", str(path), str(tmp_path / "x.png"), "--backend", "torch"]) == 2
    assert "needs the model.pt" in capsys.readouterr().err


def test_strong_recipe_epochs_follow_the_training_precision():
    fp32 = resolve_config(TrainConfig(recipe="strong", precision="fp32", device="cpu"))
    bf16 = resolve_config(TrainConfig(recipe="strong", precision="bf16", device="cpu"))
    assert bf16.epochs > fp32.epochs > 1  # bf16 steps are cheaper: more of them in the same time
    assert resolve_config(TrainConfig(recipe="strong", epochs=3)).epochs == 3


def test_bf16_training_keeps_fp32_weights_and_learns(tiny_data, tmp_path):
    from fashionclf.train import fit

    config = TrainConfig(model="fast-cnn", precision="bf16", epochs=2, data=[str(tiny_data)], verify=False,
                         threads=1, device="cpu", out=str(tmp_path / "run"))
    metrics = fit(config, log=lambda *_: None)
    assert metrics["test_accuracy"] > 0.5
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
