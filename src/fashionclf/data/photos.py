"""Turn a shop's photo into a Fashion-MNIST image: the one function predict, serve and the
tests use (``photo_to_28``).

Fashion-MNIST was made from Zalando product photos (Xiao, Rasul, Vollgraf 2017,
arXiv:1708.07747) by trimming the edges close to the corner pixels' colour, resizing the
longest edge to 28, sharpening, extending the shorter edge to 28 with the item centred,
negating intensities and converting to 8-bit grey. A user's photo goes the same way:

1. refuse images over ``MAX_PIXELS`` from their header alone, before decoding (a
   decompression bomb is a small file that decodes to gigabytes);
2. first frame of an animation; EXIF orientation applied; alpha flattened onto white;
   CMYK, palette, 16-bit and other modes converted to 8-bit grey (16-bit scaled, not clipped);
3. the background's polarity from the image's border: a light background (a product photo)
   is negated, a dark one (already dataset polarity) is kept;
4. trim rows and columns within 5% of full intensity of the background; subtract the
   background and stretch the item to peak at 255 (the dataset's contrast); resize the
   longest edge to 28 (Lanczos), sharpen, centre on a 28x28 black canvas.

An image that is already 28x28 grey with a dark background passes through unchanged, so the
dataset's own images (and PNGs saved from them) are classified exactly as in evaluation.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from fashionclf.errors import DataError

SIZE = 28
MAX_PIXELS = 50_000_000  # 50 megapixels (e.g. 8,000 x 6,000): larger images are refused unread
TRIM_TOLERANCE = 0.05 * 255  # the paper's "close to the corner pixels' colour"
DRAFT_SIDE = 4 * SIZE  # JPEGs decode at 1/2, 1/4 or 1/8 scale while at least this many pixels a side
REDUCIBLE = {"L", "LA", "RGB", "RGBA", "RGBa", "La", "I", "F", "CMYK"}  # modes Image.reduce takes
PIPELINE_VERSION = 3  # raised whenever photo_to_28's output changes: converted-photo caches are keyed by it
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
# The only decoders a photo reaches (Pillow has about 40, EPS among them, which hands data to
# Ghostscript where installed): anything else is "unsupported" (415 from serve).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")

class PhotoError(DataError):
    """A photo that cannot be tagged; the message says what is wrong and what would work.
    ``kind``: "too_large", "unsupported" (not an image) or "unreadable" (damaged, empty, blank)."""

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


def check_regular_file(path: Path) -> None:
    """A PhotoError unless ``path`` is a non-empty regular file: reading a FIFO named x.png
    would wait forever, a directory or a dangling link has nothing to read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PhotoError("a link to a file that does not exist" if path.is_symlink() else "no such file") from None
    if stat.S_ISDIR(st.st_mode):
        raise PhotoError("is a directory, not an image file", "unsupported")
    if not stat.S_ISREG(st.st_mode):
        raise PhotoError("not a regular file (a FIFO, socket or device), so not read", "unsupported")
    if st.st_size == 0:
        raise PhotoError("empty file (0 bytes)")


def open_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a path or bytes with Pillow, refusing non-images and images over ``max_pixels``
    from their header, before the pixel data is decoded. (Pillow's own bomb guard, which
    refuses at twice ``Image.MAX_IMAGE_PIXELS``, stays as a second line.)"""
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise PhotoError("empty file (0 bytes)")
            source = io.BytesIO(source)
        else:
            source = Path(source)
            check_regular_file(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below decides
            img = Image.open(source, formats=FORMATS)
    except FileNotFoundError:
        raise PhotoError("no such file") from None
    except IsADirectoryError:
        raise PhotoError("is a directory, not an image file", "unsupported") from None
    except UnidentifiedImageError:
        raise PhotoError("not an image of a supported format (JPEG, PNG, WEBP, GIF, BMP, TIFF, PPM/PGM)",
                         "unsupported") from None
    except Image.DecompressionBombError as exc:
        raise PhotoError(f"image is over the limit of {max_pixels:,} pixels ({exc}); downscale it first",
                         "too_large") from None
    except PermissionError as exc:
        raise PhotoError(f"cannot read the file ({exc.strerror})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # a damaged header, e.g. "Truncated File Read"
        raise PhotoError(f"image header is damaged or truncated ({exc})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise PhotoError(f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}; "
                         "downscale it first", "too_large")
    if w == 0 or h == 0:
        raise PhotoError(f"image has no pixels ({w}x{h})")
    return img


def decode(img: Image.Image, mode: str = "L", draft_side: int = DRAFT_SIDE) -> np.ndarray:
    """Decode the first frame, apply EXIF orientation, flatten alpha onto white and return
    8-bit ``mode`` ("L": grey, (H, W); "RGB": colour, (H, W, 3)) as a uint8 array. JPEGs
    decode at reduced scale, keeping at least ``draft_side`` pixels a side."""
    try:
        img.seek(0)
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            # Let libjpeg decode straight to the mode at 1/2, 1/4 or 1/8 scale: 3-4x faster
            # on catalogue photos, and no detail is lost that the final size keeps.
            img.draft(mode if img.mode == "RGB" else "L", (draft_side, draft_side))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency ..."
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            sixteen = img.mode.startswith("I;16")
            if sixteen:
                img = img.convert("I")
            factor = max(img.size) // draft_side
            if factor >= 2 and img.mode in REDUCIBLE:
                # Shrink by a whole factor (a box filter, in Pillow's C code) before any numpy
                # array exists: a 25 MP PNG then costs megabytes, not the ~20 bytes per pixel
                # of full-size arithmetic; JPEGs were already decoded small (draft).
                img = img.reduce(factor)
            if img.mode in ("I", "F"):
                a = np.asarray(img, dtype=np.float32)
                top = 65535.0 if sixteen or a.max() > 255 else 255.0
                img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba)
            return np.array(img.convert(mode), dtype=np.uint8)  # a writable copy
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data
        raise PhotoError(f"image data is damaged or truncated ({exc})") from None


def border_value(image: np.ndarray) -> float | np.ndarray:
    """The background: the median of the outermost rows and columns (per channel for colour)."""
    edge = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return float(np.median(edge)) if image.ndim == 2 else np.median(edge, axis=0)


def per_file(convert: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Make every failure of a photo conversion that photo's own ``PhotoError`` (kind
    "unreadable", with the exception's type): decoders raise ``struct.error``, ``ValueError``,
    ``IndexError``, ... on crafted or damaged files, and one file must never abort a batch or
    a request. ``MemoryError`` and ``KeyboardInterrupt`` still propagate."""

    @functools.wraps(convert)
    def guarded(*args, **kwargs) -> np.ndarray:
        try:
            return convert(*args, **kwargs)
        except (PhotoError, MemoryError):
            raise
        except Exception as exc:
            raise PhotoError(f"cannot decode the image ({type(exc).__name__}: {str(exc)[:200]})") from None

    return guarded


@per_file
def photo_to_28(source: str | os.PathLike | bytes | Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A photo (path, bytes or open Pillow image) -> a 28x28 uint8 image in Fashion-MNIST's
    form: light item, black background, centred, longest side 28. Raises PhotoError."""
    img = source if isinstance(source, Image.Image) else open_image(source, max_pixels)
    grey = decode(img, "L")
    light_background = border_value(grey) > 127
    if grey.shape == (SIZE, SIZE) and not light_background:
        return grey  # already a dataset image
    if light_background:
        grey = 255 - grey
    background = border_value(grey)
    mask = np.abs(grey.astype(np.int16) - background) > TRIM_TOLERANCE
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        raise PhotoError("blank image: no pixel differs from the background")
    crop = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Subtracting the background makes it exactly black, as the dataset's is; stretching the
    # item to peak at 255 gives it the dataset's contrast (99% of Fashion-MNIST images peak at
    # 254 or 255), whatever the garment's colour: a mid-grey item no longer looks like a faint one.
    crop = np.clip(crop.astype(np.float32) - background, 0, None)
    crop = np.clip(crop * (255.0 / max(float(crop.max()), 1.0)) + 0.5, 0, 255).astype(np.uint8)
    h, w = crop.shape
    scale = SIZE / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    item = Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    item = item.filter(ImageFilter.UnsharpMask(radius=1, percent=50, threshold=0))
    canvas = Image.new("L", (SIZE, SIZE), 0)
    canvas.paste(item, ((SIZE - new_w) // 2, (SIZE - new_h) // 2))
    return np.array(canvas, dtype=np.uint8)


@per_file
def photo_to_rgb(source: str | os.PathLike | bytes | Image.Image, size: int = 224,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A photo -> a ``size`` x ``size`` x 3 uint8 colour image for models whose input contract
    is colour at a size (``contract.source == "rgb"``, e.g. mobilenet_v2 with ImageNet
    weights): EXIF orientation, alpha onto white, the background trimmed, the longest side
    resized to ``size`` and letterboxed, centred, on the background's colour. No grey, no
    negation: ImageNet features were learnt on photos as they are. Raises PhotoError."""
    img = source if isinstance(source, Image.Image) else open_image(source, max_pixels)
    rgb = decode(img, "RGB", draft_side=2 * size)
    background = border_value(rgb)
    mask = (np.abs(rgb.astype(np.int16) - background.astype(np.int16)) > TRIM_TOLERANCE).any(-1)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        raise PhotoError("blank image: no pixel differs from the background")
    crop = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    item = Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in background))
    canvas.paste(item, ((size - new_w) // 2, (size - new_h) // 2))
    return np.array(canvas, dtype=np.uint8)


class PhotoTarget(Protocol):
    """What the photo conversion needs to know of a model's input contract
    (``fashionclf.models.contract.InputContract`` has both)."""

    @property
    def source(self) -> str: ...  # "grey" (28x28, as Fashion-MNIST) or "rgb"

    @property
    def image_size(self) -> int: ...


def photo_converter(contract: PhotoTarget | None = None) -> tuple[Callable[..., np.ndarray], str]:
    """The function that turns a photo into a model's input (a path, bytes or Pillow image in;
    ``max_pixels`` accepted) and a key naming that conversion, for caches: ``photo_to_28`` for
    the 28x28 grey contract (the default), ``photo_to_rgb`` at the model's size for
    ``contract.source == "rgb"``."""
    if contract is not None and contract.source == "rgb":
        size = int(contract.image_size)
        return functools.partial(photo_to_rgb, size=size), f"rgb{size}-v{PIPELINE_VERSION}"
    return photo_to_28, f"grey{SIZE}-v{PIPELINE_VERSION}"
