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
3. the item found on its backdrop (``cutout.find_item``: a smooth surface fitted to the
   border, so gradients, vignetting, soft shadows, dark and coloured backdrops all work):
   each pixel's distance from the backdrop is the item's strength, light on black as in the
   dataset, whatever the item's and the backdrop's colours;
4. crop to the item, stretch it to peak at 255 (the dataset's contrast); resize the longest
   edge to 28 (Lanczos), sharpen, centre on a 28x28 black canvas.

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

from fashionclf.data.cutout import find_item
from fashionclf.errors import DataError

SIZE = 28
MAX_PIXELS = 50_000_000  # 50 megapixels (e.g. 8,000 x 6,000): larger images are refused unread
CUT_SIDE = 2 * SIZE  # the item is cut from at least this many pixels a side (then Lanczos to 28)
# Grey models' JPEGs decode at 1/2, 1/4 or 1/8 scale while at least this many pixels a side: the
# item is found on block means of at most WORK_SIDE (64) pixels and cut from at least CUT_SIDE;
# libjpeg's cost falls with the scale (a catalogue photo of 400 px at 1/4 rather than 1/2: 0.8x
# the whole path, the same accuracy on benchmarks/backdrops.py). Colour models keep REDUCE_SIDE.
DRAFT_SIDE = 64
# Other images shrink by a whole factor (a box filter) while at least this many pixels a side:
# the box filter loses more of a thin edge than libjpeg's scaled decoding does
REDUCE_SIDE = 4 * SIZE
REDUCIBLE = {"L", "LA", "RGB", "RGBA", "RGBa", "La", "I", "F", "CMYK"}  # modes Image.reduce takes
PIPELINE_VERSION = 5  # raised whenever photo_to_28's output changes: converted-photo caches are keyed by it
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
# The only decoders a photo reaches (Pillow has about 40, EPS among them, which hands data to
# Ghostscript where installed): anything else is "unsupported" (415 from serve).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")

BLANK = "blank image: no item stands out from its background"


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
            if img.format != "JPEG" or "exif" in img.info:  # a JPEG keeps its orientation in EXIF, read at open
                img = ImageOps.exif_transpose(img)
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            sixteen = img.mode.startswith("I;16")
            if sixteen:
                img = img.convert("I")
            factor = max(img.size) // max(draft_side, REDUCE_SIDE)
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
            return np.array(img if img.mode == mode else img.convert(mode), dtype=np.uint8)  # a writable copy
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


def decode_for_cutout(img: Image.Image, size_hint: int = DRAFT_SIDE) -> np.ndarray:
    """The photo as ``find_item`` takes it: (H, W) grey for grey sources (a third of the work),
    else (H, W, 3) colour, so that an item differing from its backdrop only in hue is found."""
    grey = img.mode in ("1", "L", "LA", "I", "F") or img.mode.startswith("I;16")
    return decode(img, "L" if grey else "RGB", draft_side=size_hint)


@per_file
def photo_to_28(source: str | os.PathLike | bytes | Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A photo (path, bytes or open Pillow image) -> a 28x28 uint8 image in Fashion-MNIST's
    form: light item, black background, centred, longest side 28. Raises PhotoError."""
    img = source if isinstance(source, Image.Image) else open_image(source, max_pixels)
    pixels = decode_for_cutout(img)
    if pixels.shape[:2] == (SIZE, SIZE) and pixels.ndim == 3 and (pixels == pixels[..., :1]).all():
        pixels = pixels[..., 0]  # a grey image saved as RGB
    if pixels.shape == (SIZE, SIZE) and border_value(pixels) <= 127:
        return pixels  # already a dataset image
    item = find_item(pixels)
    if item is None:
        raise PhotoError(BLANK)
    crop = item.cut(pixels, max_side=CUT_SIDE).strength
    # The item's distance from its backdrop, stretched to peak at 255: the dataset's polarity
    # (light item, black background) and contrast (99% of Fashion-MNIST images peak at 254 or
    # 255), whatever the garment's and the backdrop's colours.
    return fit_on_canvas(np.clip(crop * (255.0 / max(float(crop.max()), 1.0)) + 0.5, 0, 255).astype(np.uint8), SIZE)


def fit_on_canvas(crop: np.ndarray, size: int, background=0, sharpen: bool = True) -> np.ndarray:
    """``crop`` (uint8, grey or RGB) resized so its longest side is ``size`` (Lanczos), sharpened
    as Fashion-MNIST's images were, centred on a ``size`` x ``size`` canvas of ``background``."""
    h, w = crop.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    item = Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if sharpen:
        item = item.filter(ImageFilter.UnsharpMask(radius=1, percent=50, threshold=0))
    canvas = Image.new(item.mode, (size, size), background)
    canvas.paste(item, ((size - new_w) // 2, (size - new_h) // 2))
    return np.array(canvas, dtype=np.uint8)


@per_file
def photo_to_colour(source: str | os.PathLike | bytes | Image.Image, size: int = SIZE,
                    max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A photo -> ``size`` x ``size`` x 3 uint8: Fashion-MNIST's form in colour. Each channel is
    the item's difference from its backdrop in that channel (``cutout.find_item``), stretched as
    ``photo_to_28`` stretches the grey one, on black: a grey item gives R = G = B = its grey
    image, so a model adapted from grey starts where it was, and colours stay apart (a red item
    on white is bright in green and blue, a blue one in red and green). Raises PhotoError."""
    img = source if isinstance(source, Image.Image) else open_image(source, max_pixels)
    rgb = decode(img, "RGB", draft_side=max(REDUCE_SIDE, 2 * size))  # colour's hues: the larger draft kept
    if rgb.shape[:2] == (size, size) and border_value(rgb.max(-1)) <= 127:
        return rgb  # already in this form
    item = find_item(rgb)
    if item is None:
        raise PhotoError(BLANK)
    channels = item.cut(rgb, max_side=2 * size).channels
    scale = 255.0 / max(float(channels.max()), 1.0)
    return fit_on_canvas(np.clip(channels * scale + 0.5, 0, 255).astype(np.uint8), size)


@per_file
def photo_to_rgb(source: str | os.PathLike | bytes | Image.Image, size: int = 224,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A photo -> a ``size`` x ``size`` x 3 uint8 colour image for models whose input contract
    is colour at a size (``contract.source == "rgb"``): EXIF orientation, alpha onto white, the
    item found on its backdrop (``cutout.find_item``) and cropped, the longest side resized to
    ``size`` and letterboxed, centred, on the backdrop's colour. No grey, no negation: colour
    models see the photo as it is. Raises PhotoError."""
    img = source if isinstance(source, Image.Image) else open_image(source, max_pixels)
    rgb = decode(img, "RGB", draft_side=2 * size)
    item = find_item(rgb)
    if item is None:
        raise PhotoError(BLANK)
    top, bottom, left, right = item.cut(rgb, max_side=2 * size).box  # the box only: block means do
    background = tuple(int(v) for v in np.clip(item.colour, 0, 255))
    return fit_on_canvas(rgb[top:bottom, left:right], size, background, sharpen=False)


class PhotoTarget(Protocol):
    """What the photo conversion needs to know of a model's input contract
    (``fashionclf.models.contract.InputContract`` has both)."""

    @property
    def source(self) -> str: ...  # "grey" (28x28, as Fashion-MNIST), "colour" or "rgb"

    @property
    def image_size(self) -> int: ...


def photo_converter(contract: PhotoTarget | None = None) -> tuple[Callable[..., np.ndarray], str]:
    """The function that turns a photo into a model's input (a path, bytes or Pillow image in;
    ``max_pixels`` accepted) and a key naming that conversion, for caches: ``photo_to_28`` for
    the 28x28 grey contract (the default), ``photo_to_colour`` or ``photo_to_rgb`` at the
    model's size for ``contract.source`` "colour" or "rgb"."""
    source = "grey" if contract is None else contract.source
    if source in ("rgb", "colour"):
        size = int(contract.image_size)
        convert = photo_to_rgb if source == "rgb" else photo_to_colour
        return functools.partial(convert, size=size), f"{source}{size}-v{PIPELINE_VERSION}"
    return photo_to_28, f"grey{SIZE}-v{PIPELINE_VERSION}"
