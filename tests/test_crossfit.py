"""Cross-fitted calibration: a small photo set's every photo teaches the final model, and the
fold models' out-of-sample answers calibrate it (``fashionclf.training.crossfit``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fashionclf.errors import UsageError
from fashionclf.training import crossfit
from fashionclf.training.config import CROSSFIT_FOLDS, TrainConfig


def real_photo_folder(root, real_data_dir, per_class=20, classes=(("trouser", 1), ("sneaker", 7), ("bag", 8)),
                      split=None):
    """Real Fashion-MNIST images as 28x28 PNGs in class folders (under ``split/`` when given)."""
    from fashionclf.data.fashion_mnist import load_dataset

    ds = load_dataset(real_data_dir, verify=False)
    for name, c in classes:
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(ds.train.labels == c)[:per_class]):
            Image.fromarray(ds.train.images[i]).save(folder / f"{k:03d}.png")
    return root


def test_auto_cross_fits_small_photo_sets_without_splits_of_their_own(tmp_path, real_data_dir, monkeypatch):
    small = real_photo_folder(tmp_path / "small", real_data_dir, per_class=4)
    split = real_photo_folder(tmp_path / "split", real_data_dir, per_class=4, split="train")
    real_photo_folder(split, real_data_dir, per_class=2, split="test")
    config = TrainConfig(data=[str(small)])
    assert crossfit.resolve(config, plain=True).calibration == "crossfit"
    assert crossfit.resolve(config, plain=False).calibration == "split"  # a tuner's trial, torchrun, --resume
    assert crossfit.resolve(TrainConfig(data=[str(split)]), plain=True).calibration == "split"
    assert crossfit.resolve(TrainConfig(data=[str(real_data_dir)]), plain=True).calibration == "split"
    assert crossfit.resolve(TrainConfig(data=[str(small)], calibration="split"), True).calibration == "split"
    monkeypatch.setattr(crossfit, "SMALL_SET", 12)  # 12 photos: not under 12
    assert crossfit.resolve(config, plain=True).calibration == "split"
    assert crossfit.resolve(TrainConfig(data=[str(small)], classes="bag,sneaker"), True).calibration == "crossfit"
    with pytest.raises(UsageError, match="photo data"):
        crossfit.resolve(TrainConfig(data=[str(real_data_dir)], calibration="crossfit"), plain=True)
    with pytest.raises(UsageError, match="tuning trial"):
        crossfit.resolve(TrainConfig(data=[str(small)], calibration="crossfit"), plain=False)


def test_folds_are_stratified_and_keep_identical_photos_together():
    strata = np.repeat([0, 1, 2], 20)
    groups = [f"g{i // 2}" for i in range(60)]  # pairs of identical photos
    fold = crossfit.assign_folds(strata, groups, 5, seed=0)
    assert sorted(np.bincount(fold).tolist()) == [12] * 5
    assert all((np.bincount(strata[fold == k], minlength=3) == 4).all() for k in range(5))
    assert all(fold[i] == fold[i + 1] for i in range(0, 60, 2))
    with pytest.raises(UsageError, match="at least 10 photos"):
        crossfit.assign_folds(strata[:9], groups[:9], 5, seed=0)


def test_a_time_budget_is_shared_by_the_folds_and_the_final_model(tmp_path):
    config = TrainConfig(time_budget="10m", data=["shop"])
    first = crossfit.fold_config(config, tmp_path, 0, None)
    assert first.budget_seconds == pytest.approx(600 / (CROSSFIT_FOLDS + 1.25), abs=0.1)
    assert first.out == str(tmp_path / "folds" / "fold-1") and first.calibration == "split"
    later = crossfit.fold_config(config, tmp_path, 3, epochs=7)
    assert later.time_budget is None and later.epochs == 7 and later.out.endswith("fold-4")
    assert crossfit.fold_config(TrainConfig(epochs=3), tmp_path, 2, epochs=3).epochs == 3


def test_train_calibrates_on_out_of_sample_answers_and_learns_from_every_photo(tmp_path, real_data_dir, capsys):
    from fashionclf.cli import main
    from fashionclf.evaluation.ood import calibrate
    from fashionclf.inference.checkpoint import load_checkpoint
    from fashionclf.models.contract import predict_logits

    shop = real_photo_folder(tmp_path / "shop", real_data_dir)
    run = tmp_path / "run"
    assert main(["train", "--data", str(shop), "--model", "fast-cnn", "--epochs", "2", "--threads", "1",
                 "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "calibration crossfit: 5 fold models" in printed and "out-of-sample accuracy" in printed
    assert "out_of_sample_accuracy" in printed and "test_accuracy" not in printed
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] is None and metrics["val_accuracy"] is None
    assert metrics["crossfit"]["folds"] == CROSSFIT_FOLDS and metrics["crossfit"]["photos"] == 60
    assert json.loads((run / "config.json").read_text())["calibration"] == "crossfit"
    final = load_checkpoint(run / "model.pt")
    assert len(final.seen_photos()["train"]) == 60 and not final.seen_photos()["val"]  # every photo learnt from

    # Each photo's answer came from the fold model that did not learn from it ...
    fits = crossfit.CrossFit.load(run / crossfit.FILE)
    assert fits.logits.shape == (60, 3) and sorted(np.bincount(fits.fold).tolist()) == [12] * 5
    from fashionclf.data.sources import load_every_photo

    photos = load_every_photo([str(shop)], None, lambda _: None, final.contract)
    hashes = np.array(photos.hashes["train"])
    for k in range(CROSSFIT_FOLDS):
        fold = load_checkpoint(run / "folds" / f"fold-{k + 1}" / "model.pt")
        held = fits.fold == k
        assert not set(hashes[held]) & fold.seen_photos()["train"] and set(hashes[~held]) == fold.seen_photos()["train"]
        again = predict_logits(fold.build_model(), torch.from_numpy(photos.train.images[held]), fold.contract)
        assert np.allclose(again.numpy(), fits.logits[held], atol=1e-5)
    # ... and those answers set the temperature and the unknown threshold the model keeps.
    expected = calibrate(fits.logits, fits.labels)
    assert final.unknown["threshold"] == pytest.approx(expected["threshold"])
    assert final.temperature == pytest.approx(expected["temperature"])
    assert "cross-fitted" in (run / "report.html").read_text()

    assert main(["evaluate", str(run)]) == 2  # nothing of the set is held out: said in one line
    err = capsys.readouterr().err
    assert "learnt from every photo" in err and "crossfit" in err and len(err.strip().splitlines()) == 1
    other = real_photo_folder(tmp_path / "other", real_data_dir, per_class=25)
    assert main(["evaluate", str(run), "--data", str(other)]) == 0  # 5 a class it never saw
    assert "(15 images)" in capsys.readouterr().out


def test_a_cross_fitted_run_resumes_its_final_model(tmp_path, real_data_dir):
    from fashionclf.training.fit import fit

    shop = real_photo_folder(tmp_path / "shop", real_data_dir, per_class=10, classes=(("trouser", 1), ("bag", 8)))
    config = TrainConfig(model="fast-cnn", data=[str(shop)], epochs=2, threads=1, out=str(tmp_path / "run"))
    whole = fit(config, log=lambda _: None)
    again = dataclasses.replace(config, out=str(tmp_path / "again"))
    fit(again, log=lambda _: None)
    (tmp_path / "again" / "metrics.json").unlink()
    resumed = fit(TrainConfig(), resume=tmp_path / "again", log=lambda _: None)
    assert resumed["crossfit"]["accuracy"] == whole["crossfit"]["accuracy"]
    assert resumed["train_accuracy"] == whole["train_accuracy"]


def test_the_python_api_says_what_to_expect_of_a_cross_fitted_model(tmp_path, real_data_dir):
    import fashionclf

    shop = real_photo_folder(tmp_path / "shop", real_data_dir, per_class=10, classes=(("trouser", 1), ("bag", 8)))
    run = fashionclf.train(model="fast-cnn", data=shop, epochs=1, threads=1, out=tmp_path / "run", log=None)
    assert run.test_accuracy is None and run.estimated_accuracy == run.metrics["crossfit"]["accuracy"]
    assert "out-of-sample" in run._repr_html_()
    split = fashionclf.train(model="fast-cnn", data=shop, epochs=1, threads=1, calibration="split",
                             out=tmp_path / "split", log=None)
    assert split.estimated_accuracy == split.test_accuracy is not None
