"""Colour for every model: any CNN at any input size and in colour, a grey model's first layer
adapted to colour (the same logits for an image with equal channels), photos in colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import dataset_like_image, save_untrained_checkpoint
from photo_styles import compose, jpeg
from PIL import Image

from fashionclf.data.photos import photo_to_28, photo_to_colour
from fashionclf.inference.checkpoint import load_checkpoint
from fashionclf.models import create_model, get_model_entry, head_of, list_models
from fashionclf.models.contract import InferenceNet


@pytest.mark.parametrize("name", list_models())
def test_every_model_takes_colour_at_another_size(name):
    entry = get_model_entry(name)
    size = max(entry.min_image_size or 28, 36)
    kwargs = {"image_size": size} if name != "strong-cnn" and name != "mobilenet_v2" else {}
    model = create_model(name, num_classes=4, in_chans=3, **kwargs).eval()
    assert model(torch.rand(2, 3, size, size)).shape == (2, 4)


@pytest.mark.parametrize("name", list_models())
def test_a_grey_model_adapted_to_colour_gives_the_same_logits_for_equal_channels(tmp_path, name):
    """timm's adapt_input_conv rule: the grey filter spread over R, G and B. An image whose three
    channels are its grey image, through the colour contract's normalisation (the grey one
    repeated), gives the grey model's logits."""
    grey_contract = get_model_entry(name).contract.with_channels(1)
    grey = load_checkpoint(save_untrained_checkpoint(tmp_path / "grey.pt", name, classes=["a", "b", "c"]))
    grey = grey.replace(contract=grey_contract, model_kwargs={**grey.model_kwargs, "in_chans": 1})
    grey.state_dict = create_model(name, num_classes=3, in_chans=1).state_dict()
    colour = create_model(name, num_classes=3, in_chans=3)
    kept = grey.load_body_into(colour)
    assert len(kept.adapted) == 1 and not kept.fresh
    head_of(colour).load_state_dict(head_of(grey.build_model()).state_dict())
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8))
    as_colour = images[..., None].expand(-1, -1, -1, 3).contiguous()
    with torch.no_grad():
        expected = InferenceNet(grey.build_model(), grey_contract)(images)
        got = InferenceNet(colour.eval(), grey_contract.with_channels(3).replace(source="colour"))(as_colour)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_layer_whose_shape_depends_on_the_input_size_starts_fresh(tmp_path):
    grey = load_checkpoint(save_untrained_checkpoint(tmp_path / "grey.pt", "one-block-cnn", classes=["a", "b"]))
    bigger = create_model("one-block-cnn", num_classes=2, in_chans=3, image_size=40)
    kept = grey.load_body_into(bigger)
    assert kept.adapted == ["0.weight"] and kept.fresh == ["4.weight"]  # the first dense layer: 32*19*19 inputs
    assert torch.equal(bigger.state_dict()["0.bias"], grey.state_dict["0.bias"])


def _photo(image: np.ndarray, colour) -> bytes:
    strength = np.asarray(Image.fromarray(image).resize((168, 168), Image.Resampling.BICUBIC), np.float32) / 255
    return jpeg(compose(np.clip(strength, 0, 1), "white", np.random.default_rng(0), colour=np.array(colour, float)))


def test_a_grey_item_in_colour_has_equal_channels_and_matches_the_grey_form():
    image = dataset_like_image()
    photo = _photo(image, (60, 60, 60))
    colour, grey = photo_to_colour(photo, size=28).astype(np.float32), photo_to_28(photo).astype(np.float32)
    assert colour.shape == (28, 28, 3)
    assert np.abs(colour - colour.mean(-1, keepdims=True)).max() <= 6  # R = G = B, up to JPEG's chroma noise
    assert np.corrcoef(colour.mean(-1).ravel(), grey.ravel())[0, 1] > 0.97


def test_colours_stay_apart():
    image = dataset_like_image()
    red, blue = (photo_to_colour(_photo(image, c), size=32).astype(np.float32) for c in ((200, 20, 20), (20, 20, 200)))
    item = red.max(-1) > 60
    # on white, a red item differs most in green and blue, a blue one in red and green
    assert red[item][:, 2].mean() > 2 * red[item][:, 0].mean()
    assert blue[item][:, 0].mean() > 2 * blue[item][:, 2].mean()
