"""The fast and strong recipes, the one-cycle schedule, random erasing and the ONNX backend."""

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from fashionclf.cli import main
from fashionclf.errors import UsageError
from fashionclf.inference.checkpoint import load_checkpoint
from fashionclf.training.config import TrainConfig, parse_duration, resolve_config, validate_config
from fashionclf.training.loop import learning_rate
from fashionclf.training.recipes import RECIPES
from fashionclf.training.transforms import augment

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

    from helpers import synthetic_images
    from PIL import Image

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

    # int8: calibrated on training images, compared on test, taken by predict like any ONNX file
    assert main(["export", str(out / "model.pt"), "--int8", "--data-dir", str(tiny_data), "--no-verify",
                 "--calibration-images", "200"]) == 0
    report = capsys.readouterr().out
    assert "calibrated on 200 training images" in report and "test accuracy on 100 images: fp32" in report
    assert "images/s at batch 256" in report and ("int8 is faster here" in report or "of the int8 graph's time" in report)
    import onnx

    from fashionclf.inference.quantize import input_convs

    graph = onnx.load(str(out / "model.int8.onnx")).graph
    weights = {i.name for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    first = set(input_convs(onnx.load(str(out / "model.int8.onnx"))))
    assert first and len(convs) > len(first)  # the convolutions reading the image stay fp32 ...
    assert all((n.input[1] in weights) == (n.name in first) for n in convs)  # ... every other one's weights in int8
    assert {i.data_type for i in graph.initializer} >= {onnx.TensorProto.INT8}
    assert main(["predict", str(out / "model.int8.onnx"), str(folder), "--format", "json"]) == 0
    int8 = [r["label"] for r in json.loads(capsys.readouterr().out)]
    assert sum(a == b for a, (b, _) in zip(int8, results["torch"])) >= 9

    # --graph: the int8 file beside the model.pt, or whichever graph is faster here, said on stderr
    assert main(["predict", str(out / "model.pt"), str(folder), "--format", "json", "--graph", "int8"]) == 0
    assert [r["label"] for r in json.loads(capsys.readouterr().out)] == int8
    assert main(["predict", str(out / "model.pt"), str(folder), "--format", "json", "--graph", "fastest"]) == 0
    captured = capsys.readouterr()
    assert "--graph fastest: int8" in captured.err and len(json.loads(captured.out)) == 10
    from helpers import save_untrained_checkpoint

    other = save_untrained_checkpoint(out / "other.pt", RECIPES[recipe]["model"], classes=config["classes"])
    (out / "model.int8.onnx").rename(out / "other.int8.onnx")  # int8 of the trained weights, beside other ones
    assert main(["predict", str(other), str(folder), "--graph", "int8"]) == 2
    assert "was not made from these weights" in capsys.readouterr().err
    assert main(["predict", str(out / "model.pt"), str(folder), "--graph", "int8"]) == 2
    err = capsys.readouterr().err
    assert "--graph int8: no " in err and "--int8" in err


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


def test_the_strong_recipe_is_sized_in_time_and_epochs_given_override_it():
    assert resolve_config(TrainConfig(recipe="strong")).time_budget == "10m"
    given = resolve_config(TrainConfig(recipe="strong", epochs=3))
    assert (given.epochs, given.time_budget) == (3, None)
    assert resolve_config(TrainConfig(recipe="strong", time_budget="90s")).time_budget == "90s"
    with pytest.raises(UsageError, match="both fix the length of training; give one"):
        resolve_config(TrainConfig(recipe="strong", epochs=3, time_budget="90s"))


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("45", 45), ("2.5m", 150),
                                           (" 1H ", 3600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10 x", "0s", "-5m", "m"])
def test_bad_durations_are_usage_errors_with_examples(text):
    with pytest.raises(UsageError, match="--time-budget"):
        parse_duration(text)


def test_epochs_that_fit_leave_room_for_the_final_evaluation_and_a_margin():
    from fashionclf.training.budget import BUDGET_MARGIN, epochs_that_fit

    # 600 s: 10 s gone, 40 s of final evaluation, 20 s epochs -> (552 - 50) // 20 = 25
    assert BUDGET_MARGIN == 0.92 and epochs_that_fit(600, 10, 20, 40) == 25
    assert epochs_that_fit(600, 10, 20, 40, head_epochs=6) == 19
    assert epochs_that_fit(30, 10, 20, 40) == 1  # too small a budget still trains (and the log warns)


@pytest.mark.slow
def test_a_budgeted_run_records_its_epochs_and_repeats_exactly_with_them(tiny_data, tmp_path):
    """The steps timed for the budget leave the run alone: the same seed with the recorded
    --epochs gives the same weights; config.json, metrics.json and the log say what was planned."""
    from fashionclf.training.fit import fit

    base = dict(model="fast-cnn", data=[str(tiny_data)], verify=False, batch_size=32, threads=1, device="cpu",
                seed=3, ema=0.9, augment="flip,erase")
    lines = []
    fit(TrainConfig(**base, time_budget="8s", out=str(tmp_path / "budget")), log=lines.append)
    config = json.loads((tmp_path / "budget" / "config.json").read_text())
    metrics = json.loads((tmp_path / "budget" / "metrics.json").read_text())
    epochs = config["epochs"]
    assert config["time_budget"] is None and metrics["time_budget"]["budget"] == "8s"
    # epochs this short are mostly checkpoint writing, which the timed steps leave out, so the
    # run may fall behind its plan and be re-planned shorter (the next test)
    plans = [metrics["time_budget"]["epochs"]] + [r["epochs_to"] for r in metrics["time_budget"].get("replanned", [])]
    assert plans[-1] == epochs == metrics["total_epochs"]
    assert any(f"repeat with --epochs {epochs}" in line for line in lines)
    assert any(line.startswith("run took") and "of its 8 s budget" in line for line in lines)
    fit(TrainConfig(**base, epochs=epochs, schedule_cut=config["schedule_cut"], out=str(tmp_path / "again")),
        log=lambda *_: None)  # schedule_cut: None unless the machine slowed down mid-run
    assert fit(TrainConfig(), resume=tmp_path / "budget", log=lambda *_: None)["total_epochs"] == epochs
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("budget", "again"))
    for key in a.state_dict:
        torch.testing.assert_close(a.state_dict[key], b.state_dict[key], rtol=0, atol=0)


def test_a_cut_schedule_goes_on_from_where_it_was_straight_down_to_zero():
    from fashionclf.training.loop import learning_rate

    planned = TrainConfig(lr=0.1, lr_schedule="onecycle", epochs=10, head_epochs=0)
    cut = dataclasses.replace(planned, epochs=7, schedule_cut="10@4")
    at_cut = learning_rate(planned, 5)  # the rate the planned schedule reached at the end of epoch 4
    for epoch in range(1, 5):  # untouched up to the cut
        assert learning_rate(cut, epoch, 0.5) == learning_rate(planned, epoch, 0.5)
    assert learning_rate(cut, 5) == pytest.approx(at_cut)  # no jump
    assert learning_rate(cut, 6, 0.5) == pytest.approx(at_cut * (1 - 1.5 / 3))  # linear
    assert learning_rate(cut, 7, 1.0) == pytest.approx(0)  # zero at the new last epoch
    twice = dataclasses.replace(planned, epochs=6, schedule_cut="10@4,7@5")
    assert learning_rate(twice, 6) == pytest.approx(learning_rate(cut, 6))  # a second cut starts from the first
    assert learning_rate(twice, 6, 1.0) == pytest.approx(0)
    for bad in ("10", "10@x", "4@10", "10@4,9@3"):
        with pytest.raises(UsageError, match="--schedule-cut"):
            validate_config(resolve_config(dataclasses.replace(planned, model="fast-cnn", schedule_cut=bad,
                                                               epochs=7)))
    with pytest.raises(UsageError, match="does not fit --epochs 3"):  # ends before the epoch it was re-planned at
        validate_config(resolve_config(dataclasses.replace(cut, model="fast-cnn", epochs=3)))
    longer = dataclasses.replace(planned, epochs=14, schedule_cut="10@4")  # lengthened: the same rule, a gentler slope
    validate_config(resolve_config(dataclasses.replace(longer, model="fast-cnn")))
    assert learning_rate(longer, 5) == pytest.approx(at_cut)
    assert learning_rate(longer, 9, 0.5) == pytest.approx(at_cut * (1 - 4.5 / 10))
    assert learning_rate(longer, 14, 1.0) == pytest.approx(0)


@pytest.mark.slow
def test_a_budgeted_run_that_falls_behind_is_replanned_shorter_and_repeats_exactly(tiny_data, tmp_path):
    """The machine slows down after the plan (here: 0.1 s of other work after each epoch): the run
    takes fewer epochs, says so, records --epochs and --schedule-cut, and those repeat it bit
    for bit; a run on plan keeps its plan (the test above)."""
    import time

    from fashionclf.training.fit import fit

    base = dict(model="fast-cnn", data=[str(tiny_data)], verify=False, batch_size=32, threads=1, device="cpu",
                seed=4)
    lines = []
    fit(TrainConfig(**base, time_budget="20s", out=str(tmp_path / "budget")), log=lines.append,
        after_epoch=lambda *_: time.sleep(0.1))
    config = json.loads((tmp_path / "budget" / "config.json").read_text())
    metrics = json.loads((tmp_path / "budget" / "metrics.json").read_text())
    planned, first = metrics["time_budget"]["epochs"], metrics["time_budget"]["replanned"][0]
    # (a later re-plan may lengthen it again once the pace is known: the first epoch was the slowest)
    assert first["after_epoch"] == 1 and first["epochs_from"] == planned > first["epochs_to"]
    assert config["schedule_cut"].startswith(f"{planned}@1") and metrics["total_epochs"] == config["epochs"]
    assert any(f"--epochs {config['epochs']} --schedule-cut {config['schedule_cut']}" in line for line in lines)
    fit(TrainConfig(**base, epochs=config["epochs"], schedule_cut=config["schedule_cut"], out=str(tmp_path / "again")),
        log=lambda *_: None)
    rows = lambda d: [{k: v for k, v in r.items() if k != "seconds"}
                      for r in csv.DictReader(open(tmp_path / d / "history.csv"))]
    assert rows("budget") == rows("again") and len(rows("again")) == config["epochs"]
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("budget", "again"))
    for key in a.state_dict:
        torch.testing.assert_close(a.state_dict[key], b.state_dict[key], rtol=0, atol=0)


@pytest.mark.slow
def test_a_budgeted_run_planned_too_short_is_lengthened_and_repeats_exactly(tiny_data, tmp_path, monkeypatch):
    """The timed steps foresaw epochs 4x slower than they turned out (a fresh install's cold
    first steps): after an epoch the run takes more epochs, ends nearer its budget, records
    --epochs and --schedule-cut, and those repeat it bit for bit."""
    import fashionclf.training.budget as budget
    from fashionclf.training.fit import fit

    timed = budget.time_steps
    monkeypatch.setattr(budget, "time_steps", lambda run: {k: 4 * v for k, v in timed(run).items()})
    base = dict(model="fast-cnn", data=[str(tiny_data)], verify=False, batch_size=32, threads=1, device="cpu",
                seed=5, lr_schedule="onecycle")
    lines = []
    fit(TrainConfig(**base, time_budget="10s", out=str(tmp_path / "budget")), log=lines.append)
    config = json.loads((tmp_path / "budget" / "config.json").read_text())
    metrics = json.loads((tmp_path / "budget" / "metrics.json").read_text())
    plan = metrics["time_budget"]
    longer = [r for r in plan["replanned"] if r["epochs_to"] > r["epochs_from"]]
    assert longer and config["epochs"] > plan["epochs"] and metrics["total_epochs"] == config["epochs"]
    # never before the one-cycle warm-up has ended (the rate would turn down before its peak)
    assert all(r["after_epoch"] >= 0.25 * r["epochs_from"] for r in longer)
    assert any("would end at" in line and "epochs, the learning rate going linearly to 0" in line for line in lines)
    monkeypatch.setattr(budget, "time_steps", timed)
    fit(TrainConfig(**base, epochs=config["epochs"], schedule_cut=config["schedule_cut"], out=str(tmp_path / "again")),
        log=lambda *_: None)
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("budget", "again"))
    for key in a.state_dict:
        torch.testing.assert_close(a.state_dict[key], b.state_dict[key], rtol=0, atol=0)


def test_bf16_training_keeps_fp32_weights_and_learns(tiny_data, tmp_path):
    from fashionclf.training.fit import fit

    config = TrainConfig(model="fast-cnn", precision="bf16", epochs=2, data=[str(tiny_data)], verify=False,
                         threads=1, device="cpu", out=str(tmp_path / "run"))
    metrics = fit(config, log=lambda *_: None)
    assert metrics["test_accuracy"] > 0.5
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
