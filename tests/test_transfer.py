"""Transfer learning with mobilenet_v2: weights sources, the two phases, BatchNorm policy,
one preprocessing path for training and inference."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_dataset
from PIL import Image

from fashionclf.data.photos import photo_to_28
from fashionclf.errors import UsageError
from fashionclf.inference.checkpoint import load_checkpoint
from fashionclf.models import create_model
from fashionclf.models.contract import preprocess
from fashionclf.models.mobilenet import imagenet_weights
from fashionclf.training.fit import TrainConfig, fit
from fashionclf.training.loop import make_prepare
from fashionclf.training.transforms import augment

QUIET = dict(log=lambda *_: None)
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there: any download fails at once, as offline


def _config(data_dir, out, **kw):
    base = dict(model="mobilenet_v2", data=[str(data_dir)], verify=False, out=str(out), image_size=32,
                batch_size=32, threads=1, device="cpu", classes="tshirt,sneaker,bag")
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def weights_file(tmp_path):
    """A torchvision-layout MobileNetV2 state dict with non-default BatchNorm statistics."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(1)
    model = mobilenet_v2()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "mobilenet_v2_weights.pth"
    torch.save(model.state_dict(), path)
    return path


def _base_state(state_dict):
    return {k: v for k, v in state_dict.items() if k.startswith("base.")}


def test_weights_path_loads_the_file(weights_file):
    model = create_model("mobilenet_v2", num_classes=3, weights=str(weights_file))
    saved = torch.load(weights_file, weights_only=True)
    for key, value in saved.items():
        if key.startswith("features."):
            torch.testing.assert_close(model.state_dict()["base.0." + key[len("features."):]], value)


def test_weights_path_errors_are_clear(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        create_model("mobilenet_v2", weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(UsageError, match="not a readable --weights state-dict file"):
        create_model("mobilenet_v2", weights=str(tmp_path / "junk.pth"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(UsageError, match="no MobileNetV2 'features"):
        create_model("mobilenet_v2", weights=str(tmp_path / "other.pth"))


def test_imagenet_weights_load_offline_from_a_filled_torch_home(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", DEAD_PROXY)
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    cached = cache / os.path.basename(imagenet_weights().url)
    cached.write_bytes(weights_file.read_bytes())
    model = create_model("mobilenet_v2", num_classes=3, weights="imagenet")
    saved = torch.load(weights_file, weights_only=True)
    torch.testing.assert_close(model.state_dict()["base.0.18.1.running_var"], saved["features.18.1.running_var"])

def test_weights_auto_is_imagenet_where_cached_else_a_random_start(weights_file, tmp_path, monkeypatch):
    from fashionclf.models.mobilenet import MOBILENET_DEFAULTS, imagenet_unavailable
    from fashionclf.training.config import resolve_config

    monkeypatch.setenv("HTTPS_PROXY", DEAD_PROXY)
    monkeypatch.setenv("https_proxy", DEAD_PROXY)
    imagenet_unavailable.cache_clear()
    offline = resolve_config(TrainConfig(model="mobilenet_v2"))  # nothing cached, no download
    assert offline.weights == "none" and offline.time_budget == MOBILENET_DEFAULTS["none"]["time_budget"]
    assert "could not be downloaded" in imagenet_unavailable()
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"  # TORCH_HOME (conftest); the failed download made it
    cache.mkdir(parents=True, exist_ok=True)
    (cache / os.path.basename(imagenet_weights().url)).write_bytes(weights_file.read_bytes())
    imagenet_unavailable.cache_clear()
    cached = resolve_config(TrainConfig(model="mobilenet_v2"))
    assert cached.weights == "imagenet" and cached.head_epochs == MOBILENET_DEFAULTS["pretrained"]["head_epochs"]
    assert resolve_config(TrainConfig(model="mobilenet_v2", weights="none")).weights == "none"  # asked for: kept
    imagenet_unavailable.cache_clear()


@pytest.mark.slow

def test_imagenet_weights_missing_offline_exit_2_with_the_fix(tmp_path):
    data = make_dataset(tmp_path / "idx", n_train=200, n_test=30)
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "empty-torch-home"), HTTPS_PROXY=DEAD_PROXY,
               https_proxy=DEAD_PROXY, NO_PROXY="", no_proxy="")
    result = subprocess.run(
        [sys.executable, "-m", "fashionclf", "train", "--model", "mobilenet_v2", "--weights", "imagenet",
         "--data-dir", data, "--no-verify", "--out", tmp_path / "run"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    url = imagenet_weights().url
    for fragment in (os.path.basename(url), str(tmp_path / "empty-torch-home" / "hub" / "checkpoints"), url,
                     "--weights none"):
        assert fragment in last, last


@pytest.mark.parametrize("augment_policy", ["none", "flip"], ids=["cached-features", "augmented"])
def test_phase_1_trains_only_the_head_and_leaves_batchnorm_untouched(tiny_data, tmp_path, weights_file,
                                                                      augment_policy):
    out = tmp_path / "run"
    config = _config(tiny_data, out, weights=str(weights_file), head_epochs=1, epochs=1, augment=augment_policy)
    fit(config, stop_after_epoch=1, **QUIET)  # stop once phase 1 is done and saved
    after = load_checkpoint(out / "last.pt").state_dict
    before = create_model("mobilenet_v2", num_classes=3, weights=str(weights_file)).state_dict()
    for key, value in _base_state(before).items():  # weights and every BatchNorm buffer
        assert torch.equal(after[key], value), key
    assert not torch.equal(after["head.1.weight"], before["head.1.weight"])


@pytest.mark.parametrize("bn_policy", ["frozen", "train"])
def test_phase_2_updates_the_base_and_follows_the_batchnorm_policy(tiny_data, tmp_path, weights_file, bn_policy):
    out = tmp_path / "run"
    fit(_config(tiny_data, out, weights=str(weights_file), head_epochs=1, epochs=1, bn_policy=bn_policy), **QUIET)
    after = load_checkpoint(out / "last.pt").state_dict
    before = create_model("mobilenet_v2", num_classes=3, weights=str(weights_file)).state_dict()
    assert not torch.equal(after["base.0.0.0.weight"], before["base.0.0.0.weight"])  # first conv trained
    assert not torch.equal(after["base.0.18.1.weight"], before["base.0.18.1.weight"])  # BN affine trained
    stats_kept = torch.equal(after["base.0.18.1.running_mean"], before["base.0.18.1.running_mean"])
    assert stats_kept == (bn_policy == "frozen")
    phases = [r["phase"] for r in csv.DictReader(open(out / "history.csv"))]
    assert phases == ["head", "finetune"]


def test_unfreeze_last_blocks_only(tiny_data, tmp_path, weights_file):
    out = tmp_path / "run"
    fit(_config(tiny_data, out, weights=str(weights_file), head_epochs=0, epochs=1, unfreeze="2"), **QUIET)
    after = load_checkpoint(out / "last.pt").state_dict
    before = create_model("mobilenet_v2", num_classes=3, weights=str(weights_file)).state_dict()
    assert torch.equal(after["base.0.16.conv.0.0.weight"], before["base.0.16.conv.0.0.weight"])  # frozen block
    assert not torch.equal(after["base.0.17.conv.0.0.weight"], before["base.0.17.conv.0.0.weight"])  # unfrozen

@pytest.mark.slow

def test_from_scratch_run_is_complete_and_learns(tmp_path):
    # ~80 steps: BatchNorm's running statistics (momentum 0.1) need that many to forget their start.
    data = make_dataset(tmp_path / "idx", n_train=1500, n_test=300)
    # The weight average (a default) needs hundreds of steps to settle; these ~80 test the pipeline.
    metrics = fit(_config(data, tmp_path / "run", weights="none", epochs=3, batch_size=16, ema=0.0), **QUIET)
    assert metrics["weights"] == "none" and metrics["phases"] == {"train": 3}
    assert metrics["test_accuracy"] > 0.8  # chance is 1/3
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.contract.channels == 3 and ckpt.contract.image_size == 32
    assert "weights" not in ckpt.model_kwargs  # rebuilding needs no download


def test_train_and_inference_preprocessing_agree(tmp_path):
    """An un-augmented image goes through the same function in training, evaluation and predict."""
    from fashionclf.models.contract import InputContract

    prep = InputContract(image_size=64, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    batch = torch.from_numpy(image)[None]
    train_input = make_prepare(prep, [], torch.Generator().manual_seed(0))(batch)
    predict_input = preprocess(torch.from_numpy(photo_to_28(tmp_path / "x.png"))[None], prep)
    assert train_input.shape == (1, 3, 64, 64)
    torch.testing.assert_close(train_input, predict_input, rtol=0, atol=0)
    torch.testing.assert_close(train_input, preprocess(batch, prep), rtol=0, atol=0)


def test_rotate_augmentation_is_seeded_and_keeps_the_item():
    images = torch.zeros(16, 28, 28, dtype=torch.uint8)
    images[:, 6:22, 10:18] = 200
    a = augment(images, ["rotate"], torch.Generator().manual_seed(0))
    b = augment(images, ["rotate"], torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, images)
    mass = a.float().sum((1, 2)) / images.float().sum((1, 2))
    assert ((mass > 0.9) & (mass < 1.1)).all()  # turned by at most 10 degrees, not cropped away


@pytest.mark.parametrize("flags, fragment", [
    ({"model": "one-block-cnn", "image_size": 28, "weights": "imagenet"}, "no pretrained weights"),
    ({"model": "one-block-cnn", "image_size": 3}, "too small for one-block-cnn: at least 4"),
    ({"image_size": 16}, "too small"),
    ({"unfreeze": "some"}, "--unfreeze"),
    ({"model": "one-block-cnn", "image_size": 28, "head_epochs": 1}, "no separate head"),
    ({"model": "one-block-cnn", "image_size": 28, "unfreeze": "2"}, "no separate head"),
])
def test_bad_transfer_settings_are_usage_errors(tiny_data, tmp_path, flags, fragment):
    with pytest.raises(UsageError, match=fragment):
        fit(_config(tiny_data, tmp_path / "run", **{"weights": "none", **flags}), **QUIET)


def _colour_photo(colour, rng, size=96) -> bytes:
    """A product photo: a coloured garment-like blob on a white background, off-centre."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size + 40, size), (255, 255, 255))
    x, y = int(rng.integers(0, 40)), int(rng.integers(0, 10))
    ImageDraw.Draw(img).rectangle([x + 10, y + 10, x + size - 20, y + size - 25], fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.slow  # trains mobilenet_v2 on photos for several epochs
def test_colour_model_learns_from_photos_in_colour_at_its_size(weights_file, tmp_path):
    """mobilenet_v2 on a photo folder: photos become 32x32x3 colour input (no grey, no
    negation), training with augmentation works on them, and predict gives the same answer
    through both backends with the same conversion."""
    import csv

    from fashionclf.cli import main
    from fashionclf.data.photos import photo_to_rgb
    from fashionclf.data.sources import load_data

    rng = np.random.default_rng(0)
    shop = tmp_path / "shop"
    for name, colour in (("red", (200, 20, 20)), ("blue", (20, 20, 200))):
        (shop / name).mkdir(parents=True)
        for i in range(12):
            (shop / name / f"{i}.jpg").write_bytes(_colour_photo(colour, rng))
    one = photo_to_rgb(shop / "red" / "0.jpg", size=32)
    assert one.shape == (32, 32, 3) and one.dtype == np.uint8
    centre = one[12:20, 12:20].reshape(-1, 3).mean(0)
    assert centre[0] > 150 and centre[2] < 80  # red stays red: no grey, no negation
    assert (one[0, 0] > 240).all()  # letterboxed on the white background

    out = tmp_path / "run"
    assert main(["train", "--model", "mobilenet_v2", "--weights", str(weights_file), "--image-size", "32",
                 "--data", str(shop), "--head-epochs", "1", "--epochs", "1", "--augment", "flip,shift,rotate,erase",
                 "--batch-size", "8", "--threads", "1", "--out", str(out)]) == 0
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["preprocessing"]["source"] == "rgb" and ckpt["preprocessing"]["image_size"] == 32
    ds = load_data(str(shop), contract=load_checkpoint(out / "model.pt").contract)
    assert ds.train.images.shape[1:] == (32, 32, 3)

    rows = {}
    for backend in ("torch", "onnx"):
        buf = tmp_path / f"{backend}.csv"
        assert main(["predict", str(out), str(shop), "--backend", backend, "--output", str(buf)]) == 0
        rows[backend] = {r["path"]: r["label"] for r in csv.DictReader(open(buf))}
    assert rows["torch"] == rows["onnx"] and len(rows["torch"]) == 24
    assert set(rows["torch"].values()) <= {"red", "blue"}


def test_augment_keeps_colour_batches_and_fills_with_white():
    images = torch.zeros(4, 16, 16, 3, dtype=torch.uint8)
    images[:, 4:12, 4:12] = torch.tensor([200, 20, 20], dtype=torch.uint8)
    images[:, :4] = 255
    images[:, 12:] = 255
    images[:, :, :4] = 255
    images[:, :, 12:] = 255
    out = augment(images, ["shift", "rotate", "erase"], torch.Generator().manual_seed(0), erase_p=0.0)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert (out[:, 0, 0] == 255).all()  # corners stay the white background
    grey = augment(images[..., 0].clone(), ["flip"], torch.Generator().manual_seed(0))
    assert grey.shape == (4, 16, 16)


@pytest.mark.parametrize("colour", [False, True])
def test_every_augmentation_together_is_seeded_and_keeps_the_batch(colour):
    from fashionclf.training.transforms import AUGMENTATIONS

    images = torch.zeros(6, 28, 28, 3 if colour else 1, dtype=torch.uint8)
    images[:, 8:20, 10:18] = 180
    images = images if colour else images[..., 0]
    a = augment(images, list(AUGMENTATIONS), torch.Generator().manual_seed(3))
    b = augment(images, list(AUGMENTATIONS), torch.Generator().manual_seed(3))
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    photo = augment(images, ["photo"], torch.Generator().manual_seed(0))
    assert not torch.equal(photo, images)  # intensities remapped, edges blurred or sharpened
    assert (photo[:, :4] == 0).all()  # a black background stays black
