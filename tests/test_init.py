"""--init: start a shop's model from a trained fashionclf checkpoint: the body is kept, a new
head is made for the shop's classes, and the head phase leaves the body untouched."""

import json

import pytest
import torch
from helpers import write_photo_folder

from fashionclf.errors import UsageError
from fashionclf.inference.checkpoint import load_checkpoint
from fashionclf.models import create_model, head_of
from fashionclf.training.config import TrainConfig
from fashionclf.training.fit import fit

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A fast-cnn trained for one epoch on synthetic Fashion-MNIST-like IDX data (ten classes)."""
    from helpers import make_dataset

    root = tmp_path_factory.mktemp("pre")
    out = root / "run"
    fit(TrainConfig(model="fast-cnn", data=[str(make_dataset(root / "idx"))], verify=False, epochs=1, batch_size=32,
                    threads=1, out=str(out)), **QUIET)
    return out / "model.pt"


def _head_prefix(model):
    head = head_of(model)
    return next(n for n, m in model.named_modules() if m is head) + "."


@pytest.mark.parametrize("colour", ["grey", "rgb"])
def test_head_phase_keeps_the_body_bit_for_bit_and_trains_a_new_head(pretrained, tmp_path, colour):
    """Grey, or colour (the default for photos): then the first convolution is the grey one
    spread over R, G and B, and every other tensor of the body is kept bit for bit."""
    shop = tmp_path / "shop"
    write_photo_folder(shop, {"tops": 20, "bags": 20, "footwear": 20})
    out = tmp_path / "run"
    config = TrainConfig(init=str(pretrained), data=[str(shop)], head_epochs=1, epochs=1, batch_size=16, threads=1,
                         out=str(out), input=None if colour == "rgb" else "grey")
    assert fit(config, stop_after_epoch=1, **QUIET) == {"stopped_after_epoch": 1}
    before, after = load_checkpoint(pretrained), load_checkpoint(out / "last.pt")
    assert after.contract.channels == (3 if colour == "rgb" else 1)
    prefix = _head_prefix(create_model("fast-cnn", num_classes=3))
    body = [k for k in after.state_dict if not k.startswith(prefix)]
    first = "0.weight"
    if colour == "rgb":
        spread = before.state_dict[first].expand(-1, 3, -1, -1) / 3
        assert torch.allclose(after.state_dict[first], spread) and after.contract.source == "colour"
        body.remove(first)
    assert body and all(torch.equal(after.state_dict[k], before.state_dict[k]) for k in body)  # BN stats too
    torch.manual_seed(0)
    fresh = create_model("fast-cnn", num_classes=3).state_dict()
    head = [k for k in after.state_dict if k.startswith(prefix)]
    assert after.state_dict[head[0]].shape[0] == 3
    assert all(not torch.equal(after.state_dict[k], fresh[k]) for k in head)
    assert after.classes == ["bags", "footwear", "tops"] and after.model == "fast-cnn"

    metrics = fit(config, resume=out, **QUIET)  # the fine-tuning phase then trains the body too
    final = load_checkpoint(out / "last.pt")
    assert any(not torch.equal(final.state_dict[k], before.state_dict[k]) for k in body)
    assert metrics["phases"] == {"head": 1, "finetune": 1}
    assert json.loads((out / "config.json").read_text())["init"] == str(pretrained)


def test_init_names_its_own_model_and_size(pretrained, tmp_path):
    shop = tmp_path / "shop"
    write_photo_folder(shop, {"tops": 10, "bags": 10})
    with pytest.raises(UsageError, match=r"is a fast-cnn; leave out --model"):
        fit(TrainConfig(init=str(pretrained), model="strong-cnn", data=[str(shop)], out=str(tmp_path / "r")), **QUIET)
    with pytest.raises(UsageError, match=r"bad.pt: not a readable checkpoint \(UnpicklingError: [^\n]*\); pass the model.pt"):
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"nope")
        fit(TrainConfig(init=str(bad), data=[str(shop)], out=str(tmp_path / "r")), **QUIET)


def test_recipe_shop_fine_tunes_from_init_in_two_phases(pretrained, tmp_path):
    shop = tmp_path / "shop"
    write_photo_folder(shop, {"tops": 15, "bags": 15})
    out = tmp_path / "run"
    metrics = fit(TrainConfig(init=str(pretrained), recipe="shop", data=[str(shop)], head_epochs=1, epochs=1,
                              threads=1, out=str(out)), **QUIET)
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["optimizer"], config["tta"], config["batch_size"]) == ("fast-cnn", "sgd", "flip", 16)
    assert metrics["phases"] == {"head": 1, "finetune": 1}
    with pytest.raises(UsageError, match="--init"):  # without a model to start from, no head phase
        fit(TrainConfig(recipe="shop", data=[str(shop)], out=str(tmp_path / "r2")), **QUIET)
