import csv
import json

import pytest
import torch
from helpers import make_dataset, synthetic_images

from fashionclf.inference.checkpoint import Checkpoint, load_checkpoint
from fashionclf.inference.predict import format_rows, predict_paths
from fashionclf.training.fit import TrainConfig, fit
from fashionclf.training.results import evaluate_checkpoint

RUN_FILES = ["model.pt", "last.pt", "config.json", "history.csv", "metrics.json", "curves.png",
             "confusion_matrix.png", "confusion_matrix.json", "mistakes.png", "report.html"]


def _config(data_dir, out, **kw):
    base = dict(data=[str(data_dir)], verify=False, out=str(out), epochs=2, batch_size=32, threads=1, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data_dir = make_dataset(root / "idx", n_train=600, n_test=200)
    out = root / "run"
    metrics = fit(_config(data_dir, out, epochs=3), log=lambda *_: None)
    return data_dir, out, metrics


def test_run_directory_is_complete(trained_run):
    _, out, metrics = trained_run
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("model", "classes", "train_accuracy", "val_accuracy", "test_accuracy", "test_loss",
                "per_class", "confusion_matrix", "train_seconds"):
        assert key in saved, key
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    # The synthetic classes are easy: a model that learned nothing would sit near 0.1.
    assert saved["test_accuracy"] > 0.8
    assert sum(map(sum, saved["confusion_matrix"])) == 200
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert saved["train_seconds"] == pytest.approx(sum(float(r["seconds"]) for r in rows))


def test_checkpoint_is_self_describing_and_safe_to_load(trained_run):
    _, out, metrics = trained_run
    raw = torch.load(out / "model.pt", weights_only=True)
    assert raw["model"]["name"] == "one-block-cnn"
    assert raw["classes"][0] == "T-shirt/top" and raw["preprocessing"]["image_size"] == 28
    assert raw["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert raw["epoch"] == metrics["best_epoch"]
    model = Checkpoint.from_dict(raw).build_model()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow  # seconds of subprocesses or training: the full tier runs it
def test_seed_makes_runs_identical_and_resume_matches_uninterrupted(tiny_data, tmp_path):
    quiet = dict(log=lambda *_: None)
    full = fit(_config(tiny_data, tmp_path / "full", epochs=3, seed=5), **quiet)
    again = fit(_config(tiny_data, tmp_path / "again", epochs=3, seed=5), **quiet)

    stopped = fit(_config(tiny_data, tmp_path / "part", epochs=3, seed=5), stop_after_epoch=2, **quiet)
    assert stopped == {"stopped_after_epoch": 2} and not (tmp_path / "part" / "metrics.json").exists()
    assert len(list(csv.DictReader(open(tmp_path / "part" / "history.csv")))) == 2
    resumed = fit(TrainConfig(), resume=tmp_path / "part", **quiet)
    history = lambda d: [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(d / "history.csv"))]
    assert history(tmp_path / "full") == history(tmp_path / "again") == history(tmp_path / "part")
    assert len(history(tmp_path / "part")) == 3
    assert full["test_accuracy"] == again["test_accuracy"] == resumed["test_accuracy"]
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    for key in a.state_dict:
        torch.testing.assert_close(a.state_dict[key], b.state_dict[key], rtol=0, atol=0)


def test_class_subset_training(tiny_data, tmp_path):
    metrics = fit(_config(tiny_data, tmp_path / "sub", classes="tshirt,sneaker,bag", epochs=2), log=lambda *_: None)
    assert metrics["classes"] == ["T-shirt/top", "Sneaker", "Bag"]
    assert len(metrics["confusion_matrix"]) == 3
    assert load_checkpoint(tmp_path / "sub").class_indices == [0, 7, 8]


def test_evaluate_checkpoint_writes_report(trained_run, tmp_path):
    data_dir, out, metrics = trained_run
    summary = evaluate_checkpoint(out / "model.pt", "test", tmp_path / "ev", str(data_dir), verify=False, device="cpu").summary
    assert summary["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert set(summary["accuracies"]) == {"train", "val", "test"}
    html = (tmp_path / "ev" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "Per-class metrics" in html
    cm = json.loads((tmp_path / "ev" / "confusion_matrix.json").read_text())
    assert len(cm["counts"]) == 10 and abs(sum(cm["normalized"][0]) - 1) < 1e-3


def test_predict_rows_and_bad_input(trained_run, tmp_path):
    import numpy as np
    from PIL import Image

    _, out, _ = trained_run
    labels = np.array([0, 7, 8])
    images = synthetic_images(labels, seed=9)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"img{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.new("L", (64, 64)).save(tmp_path / "blank.png")
    rows = predict_paths(out / "model.pt", [str(tmp_path)], top_k=2)
    by_name = {r.path.rsplit("/", 1)[1]: r for r in rows}
    assert "not an image" in by_name["broken.png"].error
    assert "blank image" in by_name["blank.png"].error
    assert [by_name[f"img{i}.png"].label for i in range(3)] == ["T-shirt/top", "Sneaker", "Bag"]
    text = format_rows(rows, "csv", top_k=2)
    assert next(csv.reader(text.splitlines())) == ["path", "label", "confidence", "error", "label_2", "confidence_2",
                                                   "unknown"]
    assert len(text.splitlines()) == 6
    assert all(isinstance(by_name[f"img{i}.png"].unknown, bool) for i in range(3))  # the model has a threshold
    assert by_name["broken.png"].unknown is None
    assert [r for r in csv.reader(text.splitlines()) if r[0].endswith("broken.png")][0][-1] == ""


def test_flip_tta_averages_the_mirror_and_is_kept_in_the_checkpoint(tiny_data, tmp_path):
    from fashionclf.models.contract import GREY_28, predict_logits, preprocess
    from fashionclf.training.config import config_warnings

    lines = []
    fit(_config(tiny_data, tmp_path / "tta", epochs=1, tta="flip", augment="none"), log=lines.append)
    assert any(line.startswith("warning: --tta flip") and "add flip to --augment" in line for line in lines)
    assert not config_warnings(TrainConfig(tta="flip", augment="flip,shift,erase"))  # the strong recipe's pair
    ckpt = load_checkpoint(tmp_path / "tta")
    assert ckpt.contract.tta == "flip"
    model = ckpt.build_model()
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        x = preprocess(images, GREY_28)
        expected = (model(x) + model(x.flip(-1))) / 2
    torch.testing.assert_close(predict_logits(model, images, ckpt.contract), expected)
    plain = evaluate_checkpoint(tmp_path / "tta", "test", tmp_path / "plain", verify=False, tta="none").summary
    flipped = evaluate_checkpoint(tmp_path / "tta", "test", tmp_path / "flipped", verify=False).summary
    assert plain["samples"] == flipped["samples"] == 100
    assert plain["loss"] != flipped["loss"]  # the override took effect


def test_ema_weights_are_kept_and_survive_resume(tiny_data, tmp_path):
    quiet = dict(log=lambda *_: None)
    # No validation split: the latest epoch is always kept, so model.pt and last.pt are the same epoch.
    fit(_config(tiny_data, tmp_path / "full", epochs=2, ema=0.9, label_smoothing=0.1, val_fraction=0), **quiet)
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    best = load_checkpoint(tmp_path / "full" / "model.pt")
    assert best.epoch == full.epoch == 2
    for key, value in best.state_dict.items():  # model.pt holds the average, last.pt the raw weights
        assert torch.equal(value, full.resume.ema["module." + key]), key
    assert not torch.equal(best.state_dict["0.weight"], full.state_dict["0.weight"])

    fit(_config(tiny_data, tmp_path / "part", epochs=2, ema=0.9, label_smoothing=0.1, val_fraction=0),
        stop_after_epoch=1, **quiet)
    fit(TrainConfig(), resume=tmp_path / "part", **quiet)
    part = load_checkpoint(tmp_path / "part" / "last.pt")
    for key in full.resume.ema:
        torch.testing.assert_close(full.resume.ema[key], part.resume.ema[key], rtol=0, atol=0)


def test_without_a_validation_split_the_last_epoch_is_kept(tiny_data, tmp_path):
    metrics = fit(_config(tiny_data, tmp_path / "run", epochs=2, val_fraction=0), log=lambda *_: None)
    assert metrics["best_epoch"] == 2 and metrics["val_accuracy"] != metrics["val_accuracy"]  # NaN: no val split
    assert sum(metrics["data"]["val_counts"]) == 0 and sum(metrics["data"]["train_counts"]) == 400
    assert load_checkpoint(tmp_path / "run").epoch == 2


def test_precision_auto_trains_in_bf16_exactly_where_the_cpu_has_it(tiny_data, tmp_path):
    from fashionclf.device import autocast_dtype, native_bf16

    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if native_bf16(cpu) else None)
    lines = []
    fit(_config(tiny_data, tmp_path / "run", model="fast-cnn", epochs=1, precision="auto"), log=lines.append)
    expected = "bf16" if native_bf16(cpu) else "fp32"
    assert f"training in {expected}" in lines[0]


def test_an_instruction_set_capped_by_the_environment_is_said_and_obeyed(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (how a figure for an AVX2-only CPU is taken on a newer one):
    --precision auto trains in fp32, and the CPU label every figure carries says so."""
    from fashionclf.device import autocast_dtype, cpu_info, native_bf16

    cpu = torch.device("cpu")
    for cap in ("AVX2", None):
        if cap:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        else:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        native_bf16.cache_clear()
        cpu_info.cache_clear()
        label = cpu_info()["label"]
        if cap:
            assert autocast_dtype("auto", cpu) is None and label.endswith("capped by ONEDNN_MAX_CPU_ISA=AVX2")
        else:
            assert "capped" not in label
    native_bf16.cache_clear()
    cpu_info.cache_clear()


def test_resume_with_more_epochs_continues_the_run(tiny_data, tmp_path):
    quiet = dict(log=lambda *_: None)
    fit(_config(tiny_data, tmp_path / "run", epochs=2, lr_schedule="constant"), **quiet)
    first = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    metrics = fit(TrainConfig(epochs=3), resume=tmp_path / "run", **quiet)
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and rows[:2] == first
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 3
    assert metrics["total_epochs"] == 3


def test_evaluating_a_checkpoint_scores_the_training_split_only_when_asked(trained_run, tmp_path, monkeypatch):
    import fashionclf.training.results as ev

    data_dir, out, metrics = trained_run
    scored = []
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: scored.append(a[5]) or real(*a, **k))
    summary = evaluate_checkpoint(out, "test", tmp_path / "a", str(data_dir), verify=False, device="cpu").summary
    assert sorted(scored) == ["test", "val"]
    assert summary["accuracies"]["train"] == metrics["train_accuracy"]  # as recorded by training
    scored.clear()
    again = evaluate_checkpoint(out, "test", tmp_path / "b", str(data_dir), verify=False, device="cpu",
                                score_train=True).summary
    assert sorted(scored) == ["test", "train", "val"]
    assert again["accuracies"]["train"] == pytest.approx(metrics["train_accuracy"])


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_ends_as_an_uninterrupted_run(tmp_path):
    """SIGKILL (no Python exception, no clean-up) to a real training process after its first
    epoch; --resume then finishes with the very figures and weights of a run never killed."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import make_dataset

    data = make_dataset(tmp_path / "idx", n_train=4000, n_test=200)
    args = ["--model", "fast-cnn", "--data", str(data), "--no-verify", "--epochs", "4", "--batch-size", "16",
            "--threads", "1", "--seed", "5"]
    train = [sys.executable, "-m", "fashionclf", "train", *args]
    assert subprocess.run([*train, "--out", str(tmp_path / "full")], capture_output=True).returncode == 0
    part = tmp_path / "part"
    proc = subprocess.Popen([*train, "--out", str(part)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (part / "history.csv").exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.2)  # into the second epoch
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (part / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # what a kill during a write leaves
    r = subprocess.run([sys.executable, "-m", "fashionclf", "train", "--resume", str(part)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and not list(part.glob(".*.tmp"))
    history = lambda d: [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(open(d / "history.csv"))]
    assert history(tmp_path / "full") == history(part)
    full, resumed = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "full", part))
    assert full["test_accuracy"] == resumed["test_accuracy"] and full["test_loss"] == resumed["test_loss"]
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(part)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
