"""Product photos as shops take them, made from Fashion-MNIST images, for tests and benchmarks:
the item on a backdrop of one of ``STYLES``, in colour, saved as JPEG.

A Fashion-MNIST image is the item's strength ``v`` (0: background, 1: item) after the dataset's
negation, so a photo is ``backdrop * (1 - v) + v * colour``: a dark or light, grey or coloured
item on a backdrop that is white (the catalogue baseline), a gradient, vignetted, under a soft
shadow, dark, coloured, or turned a few degrees and off-centre. Non-garment photos (a crop of
scikit-learn's sample photos, a handwritten digit) go on the same backdrops, for the unknown
check. Everything is drawn from the ``rng`` given, so a seed fixes a set.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

STYLES = ("white", "gradient", "vignette", "shadow", "dark", "coloured", "rotated")


def _light_grey(rng, low=200, high=255) -> np.ndarray:
    base = rng.uniform(low, high)
    return np.clip(base + rng.normal(0, 4, 3), 0, 255)  # near-grey, a slight tint


def _gradient(h: int, w: int, rng, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (x - w / 2) * np.cos(angle) + (y - h / 2) * np.sin(angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    return a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]


def backdrop(style: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An (h, w, 3) float backdrop of ``style`` (``rotated`` and ``shadow`` use a white or light one)."""
    if style in ("white", "rotated", "shadow"):
        colour = np.full(3, 255.0) if style == "white" or rng.random() < 0.5 else _light_grey(rng, 225)
        return np.broadcast_to(colour, (h, w, 3)).astype(np.float32).copy()
    if style == "gradient":
        a = _light_grey(rng, 215, 255)
        return _gradient(h, w, rng, a, np.clip(a - rng.uniform(35, 80), 0, 255))
    if style == "vignette":
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((x - w / 2) / (w / 2)) ** 2 / 2 + ((y - h / 2) / (h / 2)) ** 2 / 2  # 1 in the corners
        return _light_grey(rng, 225)[None, None] * (1 - rng.uniform(0.25, 0.45) * r2[..., None])
    if style == "dark":
        a = np.full(3, rng.uniform(10, 60))
        return _gradient(h, w, rng, a, a + rng.uniform(0, 30))
    if style == "coloured":
        hue = Image.new("HSV", (1, 1), (int(rng.integers(0, 256)), int(rng.integers(70, 200)),
                                        int(rng.integers(140, 245))))
        a = np.asarray(hue.convert("RGB"), np.float32)[0, 0]
        return _gradient(h, w, rng, a, np.clip(a * rng.uniform(0.8, 1.0), 0, 255))
    raise ValueError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")


def _item_colour(background: np.ndarray, rng) -> np.ndarray:
    """A garment colour that stands out from the backdrop (at least 80 levels of luminance or a
    clearly different hue): dark, mid, light or saturated."""
    for _ in range(50):
        kind = rng.random()
        if kind < 0.5:
            colour = rng.uniform(0.0, 0.6, 3) * 255
        elif kind < 0.75:
            colour = np.full(3, rng.uniform(0.85, 1.0) * 255) + rng.normal(0, 5, 3)
        else:
            colour = np.zeros(3)
            colour[rng.integers(0, 3)] = rng.uniform(150, 255)
            colour[rng.integers(0, 3)] += rng.uniform(0, 100)
        colour = np.clip(colour, 0, 255)
        if np.abs(colour - background).max() >= 80:
            return colour
    return 255 - background


def _place(h: int, w: int, side_h: int, side_w: int, rng) -> tuple[int, int]:
    return int(rng.integers(0, w - side_w + 1)), int(rng.integers(0, h - side_h + 1))


def compose(strength: np.ndarray, style: str, rng: np.random.Generator, colour: np.ndarray | None = None,
            texture: np.ndarray | None = None) -> Image.Image:
    """The photo of an item of ``strength`` (float (h, w) in [0, 1]) on a ``style`` backdrop:
    coloured ``colour`` (default: drawn), or ``texture`` ((h, w, 3) pixels, for a non-garment photo)."""
    if style == "rotated":
        angle = rng.uniform(-12, 12)
        turned = Image.fromarray((strength * 255).astype(np.uint8)).rotate(angle, Image.Resampling.BICUBIC, expand=True)
        strength = np.asarray(turned, np.float32) / 255
        if texture is not None:
            texture = np.asarray(Image.fromarray(texture.astype(np.uint8)).rotate(angle, Image.Resampling.BICUBIC,
                                                                                  expand=True), np.float32)
    sh, sw = strength.shape
    h, w = sh + int(rng.integers(10, max(11, sh))), sw + int(rng.integers(10, max(11, sw)))
    bg = backdrop(style, h, w, rng)
    x0, y0 = _place(h, w, sh, sw, rng)
    v = np.zeros((h, w), np.float32)
    v[y0 : y0 + sh, x0 : x0 + sw] = strength
    if style == "shadow":  # a soft shadow cast down and to one side
        mask = Image.fromarray(((v > 0.05) * 255).astype(np.uint8))
        blurred = np.asarray(mask.filter(ImageFilter.GaussianBlur(max(sh, sw) * rng.uniform(0.04, 0.08))),
                             np.float32) / 255
        dx, dy = (int(max(sh, sw) * rng.uniform(0.02, 0.07)) * rng.choice([-1, 1]),
                  int(max(sh, sw) * rng.uniform(0.03, 0.08)))
        shifted = np.roll(np.roll(blurred, dy, 0), dx, 1)
        bg = bg * (1 - rng.uniform(0.25, 0.5) * shifted[..., None])
    if texture is None:
        mean_bg = bg[y0 : y0 + sh, x0 : x0 + sw].reshape(-1, 3).mean(0)
        paint = np.broadcast_to(colour if colour is not None else _item_colour(mean_bg, rng), (h, w, 3))
    else:
        paint = bg.copy()
        paint[y0 : y0 + sh, x0 : x0 + sw] = texture
    rgb = bg * (1 - v[..., None]) + paint * v[..., None]
    rgb = rgb + rng.normal(0, 1.5, rgb.shape)  # sensor noise
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")


def jpeg(img: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def styled_photo(image: np.ndarray, style: str, rng: np.random.Generator) -> bytes:
    """A 28x28 Fashion-MNIST image as a JPEG product photo of ``style``, 168-336 px item."""
    side = int(rng.integers(6, 13)) * 28
    strength = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    return jpeg(compose(np.clip(strength, 0, 1), style, rng))


_SAMPLES: list[np.ndarray] = []


def non_garment_photo(style: str, rng: np.random.Generator) -> bytes:
    """Something that is not a garment, photographed as one: a rectangular crop of one of
    scikit-learn's sample photos (a temple, a flower) or a handwritten digit drawn in ink."""
    from sklearn.datasets import load_digits, load_sample_images

    if not _SAMPLES:
        _SAMPLES.extend(load_sample_images().images)
    side = int(rng.integers(5, 12)) * 28
    if rng.random() < 0.6:
        photo = _SAMPLES[int(rng.integers(len(_SAMPLES)))]
        y, x = int(rng.integers(0, photo.shape[0] - side)), int(rng.integers(0, photo.shape[1] - side))
        texture = photo[y : y + side, x : x + side].astype(np.float32)
        return jpeg(compose(np.ones((side, side), np.float32), style, rng, texture=texture))
    digit = load_digits().images[int(rng.integers(0, 1797))] / 16.0
    strength = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC),
                          np.float32) / 255
    return jpeg(compose(np.clip(strength, 0, 1), style, rng))  # ink that stands out from the backdrop
