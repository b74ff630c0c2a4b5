"""Non-finite numbers: a diverging run stops with a clear error, a checkpoint with NaN weights is
refused, and a NaN output is that image's error, never the batch's."""

import subprocess
import sys

import numpy as np
import pytest
from helpers import dataset_like_image, png_bytes, save_untrained_checkpoint

from fashionclf.errors import TrainingDiverged, UsageError
from fashionclf.inference.checkpoint import load_checkpoint, save_checkpoint
from fashionclf.inference.classifier import NAN_ERROR, Classifier, load_classifier
from fashionclf.inference.predict import classify
from fashionclf.models.contract import GREY_28
from fashionclf.training.config import TrainConfig
from fashionclf.training.fit import fit


def test_a_diverging_run_stops_with_the_step_and_a_hint_and_writes_no_nan(tiny_data, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(model="fast-cnn", data=[str(tiny_data)], verify=False, optimizer="sgd", lr=1e12,
                         lr_schedule="constant", epochs=2, threads=1, out=str(out))
    with pytest.raises(TrainingDiverged, match=r"the loss became (nan|inf) at step \d+ .*lower --lr"):
        fit(config, log=lambda *_: None)
    assert not (out / "metrics.json").exists()
    r = subprocess.run([sys.executable, "-m", "fashionclf", "train", "--model", "fast-cnn", "--data", str(tiny_data),
                        "--no-verify", "--optimizer", "sgd", "--lr", "1e12", "--lr-schedule", "constant",
                        "--epochs", "1", "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "lower --lr" in r.stderr


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    path = save_untrained_checkpoint(tmp_path / "model.pt")
    ckpt = load_checkpoint(path)
    name = next(k for k, v in ckpt.state_dict.items() if v.is_floating_point())
    ckpt.state_dict[name][0] = float("nan")
    save_checkpoint(ckpt, path)
    with pytest.raises(UsageError, match=rf"weight '{name}' holds NaN .*lower --lr"):
        load_classifier(path, "torch")
    (tmp_path / "x.png").write_bytes(png_bytes(__import__("PIL.Image").Image.fromarray(dataset_like_image())))
    r = subprocess.run([sys.executable, "-m", "fashionclf", "predict", str(path), str(tmp_path / "x.png")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "NaN" in r.stderr and len(r.stderr.strip().splitlines()) == 1


class NanForDarkImages(Classifier):
    """A backend whose output is NaN for all-black images: what a damaged model might do."""

    backend, classes, info, contract = "test", ["a", "b"], {}, GREY_28

    def predict_attributes(self, images):
        probs = np.tile([0.3, 0.7], (len(images), 1)).astype(np.float32)
        probs[images.reshape(len(images), -1).max(1) == 0] = np.nan
        return [probs], np.ones(len(images), np.float32)


def test_a_nan_output_is_that_images_error(tmp_path):
    from PIL import Image

    good, dark = tmp_path / "good.png", tmp_path / "dark.png"
    good.write_bytes(png_bytes(Image.fromarray(dataset_like_image())))
    dark_image = np.zeros((28, 28), np.uint8)
    Image.fromarray(dark_image).save(dark)  # a 28x28 dark image passes through the conversion as it is
    rows = list(classify(NanForDarkImages(), [good, dark, good]))
    assert [r.error for r in rows] == ["", NAN_ERROR, ""]
    assert rows[0].label == "b" and rows[1].label == "" and rows[2].confidence == pytest.approx(0.7)
