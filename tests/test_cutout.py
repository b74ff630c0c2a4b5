"""The item found on any backdrop (``fashionclf.data.cutout``): gradients, vignetting, soft
shadows, dark and coloured backdrops, items touching the edge, blank photos."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import dataset_like_image
from photo_styles import STYLES, styled_photo
from PIL import Image, ImageFilter

from fashionclf.data.cutout import find_item
from fashionclf.data.photos import PhotoError, photo_to_28, photo_to_rgb

H, W = 160, 200
ITEM = (50, 120, 60, 130)  # top, bottom, left, right


def ramp(a, b) -> np.ndarray:
    t = np.linspace(0, 1, W, dtype=np.float32)[None, :, None]
    return np.broadcast_to(np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t, (H, W, 3)).copy()


def with_item(backdrop: np.ndarray, colour, box=ITEM) -> np.ndarray:
    image = backdrop.copy()
    top, bottom, left, right = box
    image[top:bottom, left:right] = colour
    return np.clip(image + np.random.default_rng(0).normal(0, 1.5, image.shape), 0, 255).astype(np.uint8)


def assert_box(image, expected=ITEM, slack=2):
    """The item is found, its tight box within ``slack`` pixels of ``expected``."""
    found = find_item(image)
    assert found is not None
    box = found.cut(image).box
    assert all(abs(a - b) <= slack for a, b in zip(box, expected)), (box, expected)


@pytest.mark.parametrize("name, backdrop, colour", [
    ("white", np.full((H, W, 3), 255.0), (40, 40, 90)),
    ("gradient light to mid grey", ramp((250, 250, 250), (170, 170, 170)), (60, 20, 20)),
    ("dark", np.full((H, W, 3), 30.0), (230, 230, 230)),
    ("dark gradient", ramp((10, 10, 10), (70, 70, 70)), (200, 180, 160)),
    ("coloured", ramp((180, 60, 150), (150, 50, 120)), (30, 30, 30)),
    ("coloured, the item only in hue", np.full((H, W, 3), (200.0, 60.0, 60.0)), (60, 110, 80)),
])
def test_the_item_is_found_on_a_backdrop(name, backdrop, colour):
    assert_box(with_item(backdrop, colour))


def test_vignetting_is_backdrop():
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    r2 = ((x - W / 2) / (W / 2)) ** 2 / 2 + ((y - H / 2) / (H / 2)) ** 2 / 2
    backdrop = 240 * (1 - 0.4 * r2)[..., None] * np.ones(3)  # corners 40% darker than the centre
    assert_box(with_item(backdrop, (90, 30, 30)))


def test_a_soft_shadow_does_not_widen_the_box():
    """A shadow 35% dark, blurred, cast 10 px down and right of the item: the box stays the item's."""
    mask = np.zeros((H, W), np.uint8)
    top, bottom, left, right = ITEM
    mask[top + 10 : bottom + 10, left + 10 : right + 10] = 255
    soft = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(6)), np.float32) / 255
    backdrop = np.full((H, W, 3), 245.0) * (1 - 0.35 * soft[..., None])
    assert_box(with_item(backdrop, (40, 40, 120)), slack=4)


def test_an_item_touching_the_edge_is_still_found():
    box = (0, 120, 60, W)  # cut by the top and right edges
    assert_box(with_item(ramp((250, 250, 250), (200, 200, 200)), (50, 50, 50), box), box)


def test_specks_away_from_the_item_are_not_the_item():
    image = with_item(np.full((H, W, 3), 250.0), (40, 40, 40))
    image[140:142, 10:12] = 0  # dust on the backdrop
    assert_box(image)


def test_a_blank_gradient_has_no_item():
    image = np.clip(ramp((250, 250, 250), (150, 150, 150)) + np.random.default_rng(0).normal(0, 1.5, (H, W, 3)),
                    0, 255).astype(np.uint8)
    assert find_item(image) is None
    with pytest.raises(PhotoError, match="blank"):
        photo_to_28(Image.fromarray(image))


@pytest.mark.parametrize("style", STYLES)
def test_a_photo_on_any_backdrop_converts_as_it_does_on_white(style):
    """The same garment on each backdrop style gives (nearly) the image it gives on white."""
    image = dataset_like_image()
    on = {s: photo_to_28(styled_photo(image, s, np.random.default_rng(3))).astype(np.float32)
          for s in ("white", style)}
    correlation = np.corrcoef(on["white"].ravel(), on[style].ravel())[0, 1]
    assert correlation > (0.75 if style == "rotated" else 0.9), correlation  # turned up to 12 degrees
    assert np.corrcoef(on[style].ravel(), image.astype(np.float32).ravel())[0, 1] > 0.8


def test_colour_photos_are_cropped_to_the_item_and_letterboxed_on_the_backdrop():
    image = with_item(ramp((240, 240, 250), (200, 200, 210)), (200, 30, 30), box=(40, 120, 60, 100))  # 80 x 40
    out = photo_to_rgb(Image.fromarray(image), size=64)
    assert out.shape == (64, 64, 3)
    red = (out[..., 0] > 150) & (out[..., 1] < 80)
    rows, cols = np.flatnonzero(red.any(1)), np.flatnonzero(red.any(0))
    assert rows[0] <= 1 and rows[-1] >= 62 and 14 <= cols[0] <= 18 and 45 <= cols[-1] <= 49  # fills the height
    assert 200 <= out[32, 2, 2] <= 250 and out[32, 2, 0] < out[32, 2, 2]  # letterboxed on the backdrop's colour
