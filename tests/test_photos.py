"""Photo preprocessing: shop photos in every common format and mode become dataset images;
bad files give a clear error of the right kind, never a crash."""

import io

import numpy as np
import pytest
from helpers import CATALOGUE_FORMATS, catalogue_photo, dataset_like_image, hostile_files, png_bytes, png_header_only
from PIL import Image

from fashionclf.data.photos import MAX_PIXELS, PhotoError, photo_to_28


def test_a_dataset_image_passes_through_unchanged():
    img = dataset_like_image()
    assert np.array_equal(photo_to_28(png_bytes(Image.fromarray(img))), img)


@pytest.mark.parametrize("fmt", CATALOGUE_FORMATS)
def test_catalogue_photo_comes_back_close_to_the_dataset_image(fmt):
    """The conversion backwards (white background, colour, upscale, off-centre, format) and
    forwards again lands near the original: same polarity, centred, similar pixels."""
    img = dataset_like_image()
    out = photo_to_28(catalogue_photo(img, np.random.default_rng(1), fmt))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[:, [0, -1]].max() < 40  # black background beside the item
    assert out[[0, -1]].mean() > 40  # the longest side spans the 28 pixels again
    ys, xs = np.nonzero(out > 40)
    assert abs(xs.mean() - 13.5) < 2.5  # centred again
    corr = np.corrcoef(out.ravel().astype(float), img.ravel().astype(float))[0, 1]
    assert corr > 0.85, corr


def test_exif_orientation_is_applied():
    img = dataset_like_image()  # wide at the bottom: rows matter
    upright = photo_to_28(catalogue_photo(img, np.random.default_rng(2), "jpeg"))
    rotated = photo_to_28(catalogue_photo(img, np.random.default_rng(2), "jpeg-exif-rotated"))
    assert np.abs(upright.astype(int) - rotated.astype(int)).mean() < 12


def test_dark_background_photo_is_not_negated():
    big = Image.fromarray(dataset_like_image()).resize((280, 280))
    canvas = Image.new("L", (400, 300), 0)
    canvas.paste(big, (20, 10))
    out = photo_to_28(png_bytes(canvas))
    assert out[:, [0, -1]].max() < 30 and out[14, 14] > 100  # still light on black


def test_animated_gif_uses_the_first_frame():
    first = Image.fromarray(255 - dataset_like_image()).resize((140, 140))
    second = Image.new("L", (140, 140), 255)
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    out = photo_to_28(buf.getvalue())
    assert out.max() > 100  # the first frame's item, not the blank second frame


@pytest.mark.parametrize("data, kind, message", [
    (b"", "unreadable", "empty file"),
    (b"this is not an image at all", "unsupported", "not an image"),
    (png_header_only(40_000, 40_000), "too_large", f"over the limit of {MAX_PIXELS:,}"),
    (png_header_only(100, 100), "unreadable", "damaged or truncated"),
    (png_bytes(Image.new("RGB", (50, 50), (255, 255, 255))), "unreadable", "blank image"),
])
def test_bad_files_give_a_clear_error_of_the_right_kind(data, kind, message):
    with pytest.raises(PhotoError, match=message) as exc:
        photo_to_28(data)
    assert exc.value.kind == kind


def test_truncated_jpeg_is_an_error_not_a_crash():
    data = catalogue_photo(dataset_like_image(), np.random.default_rng(0), "jpeg")
    with pytest.raises(PhotoError) as exc:
        photo_to_28(data[: len(data) // 3])
    assert exc.value.kind == "unreadable"


def test_a_bomb_is_refused_before_decoding(monkeypatch):
    """The pixel data of an oversized image is never decoded."""
    decoded = []
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(PhotoError, match="over the limit"):
        photo_to_28(png_header_only(30_000, 30_000))
    assert decoded == []


@pytest.mark.parametrize("name", sorted(hostile_files()))
def test_hostile_files_give_their_own_error_of_the_right_kind(name):
    data, kind = hostile_files()[name]
    with pytest.raises(PhotoError) as exc:
        photo_to_28(data)
    assert exc.value.kind == kind, str(exc.value)


def test_any_decoder_failure_becomes_the_files_own_error(monkeypatch):
    """A decoder raising something unexpected (struct.error from malformed EXIF, as real phone
    photos have made Pillow do) is that file's error, not the batch's."""
    import struct

    from PIL import ImageOps

    def broken(image):
        raise struct.error("unpack requires a buffer of 8 bytes")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    with pytest.raises(PhotoError, match=r"cannot decode the image \(error: unpack requires") as exc:
        photo_to_28(catalogue_photo(dataset_like_image(), np.random.default_rng(0), "jpeg-exif-rotated"))
    assert exc.value.kind == "unreadable"
