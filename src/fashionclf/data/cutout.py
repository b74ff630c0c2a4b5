"""Find the item in a product photo, whatever the backdrop: ``find_item``.

A shop's backdrop is rarely one flat colour: studio sweeps are gradients, lenses vignette,
items cast soft shadows, and some shops shoot on dark or coloured paper. One value taken from
the border (what Fashion-MNIST's own pipeline did) leaves grey bands and frames wherever the
backdrop is not flat. Here the backdrop is a smooth surface fitted to the photo's border:

1. a quadratic in x and y, per colour channel, fitted by least squares to a band along the
   four edges, refitted once without the band pixels that do not fit it (where the item
   touches an edge); a flat band (most catalogue photos) or one that is mostly item: the
   border's median colour, no fit;
2. each pixel's distance from that surface is the item's strength: its difference in
   brightness (on a white backdrop, Fashion-MNIST's own "darkness") plus half its difference
   in hue, so a red item on green paper of the same brightness still stands out;
3. the item is every connected region of pixels over the floor (the band's own noise, or 5%)
   that holds strong pixels (hysteresis: an item's faint parts stay in, specks of dust do
   not); in colour photos, weak pixels of the backdrop's own hue, only darker, are taken for
   a soft shadow and do not widen the box (in grey a light-grey garment would look the same).

Why this and not another method (docs/results.md, "Photos on any backdrop"): it runs offline
on the small image the decoder gives (a JPEG decodes at 1/2 to 1/8 scale) and the search on
block means of at most ``WORK_SIDE`` pixels, for about 1.1-1.4 ms a photo on a 2-core AMD EPYC
Zen 3, which the service pays on every request (measured there: still over the 1 ms the
service may lose). OpenCV's GrabCut would add a 60 MB dependency and an iterative graph cut
seeded by a rectangle this method would have to find first; it was not tried. A learnt
matting model would cost more than the classifier itself.

This module imports nothing of fashionclf.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import ndimage  # imported here once: inside find_item, the import statement cost ~1% a photo

BAND = 0.04  # the border band the backdrop is fitted to: 4% of the shorter side (at least 2 px)
MIN_INLIERS = 0.3  # under this share of the band fitting the surface, the item fills the border
# Under this distance a pixel is backdrop whatever the noise: the paper's "close to the corner colour".
NOISE_FLOOR = 0.05 * 255
STRONG = 0.2  # a pixel belongs to the item's box when over this share of the 99th-percentile strength
MIN_REGION = 0.02  # regions under this share of the largest one are specks, not the item
EIGHT_NEIGHBOURS = np.ones((3, 3), bool)
SHADOW = 0.4  # a shadow-like pixel under this share of the 99th-percentile strength does not widen the box
SHADOW_HUE = 12.0  # colour units a shadow's pixel may differ from the darkened backdrop's colour
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as Pillow's convert('L')
CHROMA = 0.5  # weight of a pure hue difference against a brightness difference
REFITS = 1  # refits without the band pixels that do not fit (where the item touches an edge)
RIDGE = 1e-3 * np.eye(6, dtype=np.float32)  # keeps the 6x6 solve regular when the band is thin
WORK_SIDE = 64  # the item is searched for on block means of about this many pixels a side


@functools.lru_cache(maxsize=64)
def _terms(h: int, w: int) -> np.ndarray:
    """The quadratic's terms (1, x, y, x², xy, y²) at every pixel of an (h, w) image, x and y
    in [-1, 1] whatever the size, so a surface fitted at one size applies at any other."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = x / max(w - 1, 1) * 2 - 1, y / max(h - 1, 1) * 2 - 1
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], -1).reshape(h, w, 6)


def surface_at(coef: np.ndarray, shape: tuple[int, int], rows: range, cols: range) -> np.ndarray:
    """The fitted surface (``coef`` of ``_terms``) at pixels ``rows`` x ``cols`` of an image of
    ``shape``, (len(rows), len(cols), C): evaluated separably, c0 + c1 x + c3 x² + y (c2 + c4 x)
    + c5 y², three image-sized operations instead of twelve. A flat backdrop (most catalogue
    photos: only ``c0``) is one colour, (1, 1, C), which the callers broadcast: no image-sized
    work at all."""
    if not coef[1:].any():
        return coef[:1][None]
    h, w = shape
    y = (np.asarray(rows, np.float32) / max(h - 1, 1) * 2 - 1)[:, None, None]
    x = (np.asarray(cols, np.float32) / max(w - 1, 1) * 2 - 1)[None, :, None]
    along_x = coef[0] + x * (coef[1] + x * coef[3])
    return along_x + y * (coef[2] + x * coef[4] + y * coef[5])


def _channel_max(values: np.ndarray) -> np.ndarray:
    """``values.max(-1)``: the largest over the channels, written out (numpy's reduction over a
    last axis of 3 is several times slower than two elementwise maxima)."""
    if values.shape[-1] == 1:
        return values[..., 0]
    return np.maximum(np.maximum(values[..., 0], values[..., 1]), values[..., 2])


@functools.lru_cache(maxsize=64)
def _band(h: int, w: int) -> np.ndarray:
    b = max(2, round(BAND * min(h, w)))
    band = np.zeros((h, w), bool)
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True
    return band


def fit_backdrop(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The quadratic surface of an (H, W, C) float image's backdrop, as (6, C) coefficients of
    ``_terms``, and the band's noise: the median distance of its fitting pixels from it."""
    h, w, c = image.shape
    band = _band(h, w)
    values = image[band]
    # The first fit leaves out what is far from the band's median colour (an item on the edge:
    # half a band of it would bend the surface towards it); a gradient's spread stays in.
    k = len(values) // 2  # the upper median per channel, by one partition (np.median: 5x the time)
    median = np.partition(values.T, k, axis=1)[:, k]
    residual = _channel_max(np.abs(values - median))
    typical = _median(residual)
    keep = residual <= max(3 * (1.4826 * typical + 1.0), NOISE_FLOOR)
    flat = np.zeros((6, c), np.float32)
    flat[0] = median
    # A flat backdrop (most catalogue photos: nearly every band pixel within a few levels of one
    # colour) needs no surface: its median is the backdrop, and the fits below are skipped.
    if keep.mean() < MIN_INLIERS or _quantile(residual, 0.95) <= NOISE_FLOOR / 2:
        return flat, typical  # or the item fills most of the border: one colour, the median
    a = _terms(h, w)[band]
    for _ in range(REFITS + 1):
        if keep.mean() < MIN_INLIERS:
            return flat, typical
        fit = a[keep]  # the normal equations: a 6x6 solve, 100x cheaper here than lstsq's SVD
        coef = np.linalg.solve(_gram(fit, fit) + RIDGE, _gram(fit, values[keep]))
        residual = _channel_max(np.abs(values - _dot(a, coef)))
        typical = _median(residual[keep])
        keep = residual <= max(3 * (1.4826 * typical + 1.0), NOISE_FLOOR)
    return coef.astype(np.float32), typical


def shadow_like(image: np.ndarray, surface: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Pixels that look like a soft shadow on the backdrop: weak next to the item (``weak``),
    the backdrop's own colour darkened by up to 50%, with no hue of their own. They stay in the
    item's strength (a shadow under the item is hard to tell from it) but do not widen its box:
    a shadow cast to one side would otherwise shrink the item and move it off-centre. Only for
    colour photos: in grey, a light-grey part of a garment would look the same."""
    luma_x, luma_s = _dot(image, LUMA), np.maximum(_dot(surface, LUMA), 1.0)
    ratio = luma_x / luma_s
    hue = _channel_max(np.abs(image - ratio[..., None] * surface))
    return weak & (ratio >= 0.5) & (ratio < 1.0) & (hue <= SHADOW_HUE)


def _distance(difference: np.ndarray) -> np.ndarray:
    """How far each pixel is from the backdrop, from (H, W, C) differences: the difference in
    brightness (what Fashion-MNIST's grey images record: on a white backdrop exactly the old
    "darkness"), plus ``CHROMA`` of the difference in colour at equal brightness, so that an
    item that differs from its backdrop only in hue is found too."""
    if difference.shape[-1] == 1:
        return np.abs(difference[..., 0])
    luma = _dot(difference, LUMA)
    chroma = difference - luma[..., None]
    squares = chroma * chroma
    return np.sqrt(luma * luma + CHROMA**2 * (squares[..., 0] + squares[..., 1] + squares[..., 2]))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` over the last axis of ``a`` (of 3 or 6), written out. Not BLAS: these products
    are tiny, and in a server BLAS's own thread pool fought the classifier's threads for the
    cores (measured: 2.5x the p50 latency under load with ``@``)."""
    if b.ndim == 1:
        out = a[..., 0] * b[0]
        for k in range(1, len(b)):
            out += a[..., k] * b[k]
        return out
    return (a[..., :, None] * b).sum(-2)


def _gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a.T @ b`` for (n, 6) and (n, C) arrays, without BLAS (see ``_dot``)."""
    return (a[:, :, None] * b[:, None, :]).sum(0)


def _median(values: np.ndarray) -> float:
    """The (upper) median of a 1-D array: ``np.partition`` alone, a third of ``np.median``'s cost
    at this size, which is paid several times per photo."""
    return _quantile(values, 0.5)


def _quantile(values: np.ndarray, q: float) -> float:
    k = min(len(values) - 1, int(q * len(values)))
    return float(np.partition(values, k)[k])


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    """Block means (Pillow's ``reduce``, in C) that bring the longest side to at most about
    ``side`` pixels, as float32 (H, W, C)."""
    from PIL import Image

    f = -(-max(image.shape[:2]) // side)
    x = np.asarray(Image.fromarray(image).reduce(f)) if f > 1 else image
    return (x if x.ndim == 3 else x[..., None]).astype(np.float32)


@dataclass(frozen=True)
class Item:
    """Where the item is in a photo (``box``: top, bottom, left, right, exclusive ends, in the
    photo's pixels) and its backdrop (``coef``: the fitted surface; ``floor``: the distance
    under which a pixel is backdrop)."""

    box: tuple[int, int, int, int]
    coef: np.ndarray
    floor: float
    peak: float = 255.0  # the 99th percentile of the strength (``shadow_like``'s scale)
    # Found on the photo itself (no block means): its strength, difference and item mask, which
    # ``cut`` at full scale would only compute again.
    maps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def colour(self) -> np.ndarray:
        """The backdrop's mean colour along the border (for letterboxing)."""
        return _dot(_terms(9, 9)[_band(9, 9)].mean(0), self.coef)

    def cut(self, image: np.ndarray, max_side: int | None = None) -> Cut:
        """``strength``, each channel's own distance from the backdrop beside it (float
        (h, w, C), 0 where the strength is), and the tight box they were cut from (in the
        photo's pixels). ``max_side``: cut from block means of the box, by a whole factor that
        leaves its longest side at least this long (a 28-pixel output needs no more than 2-3x
        that, and the cost falls with the square of the factor). ``image``: the photo
        ``find_item`` was given."""
        top, bottom, left, right = self.box
        f = max(1, max(bottom - top, right - left) // max_side) if max_side else 1
        if f == 1 and self.maps is not None and self.maps[0].shape == image.shape[:2]:
            strength, difference, item = (m[top:bottom, left:right] for m in self.maps)  # the same arithmetic
            strength = np.maximum(strength, 0.0)
        else:
            strength, difference, item = self._measure(image, f)
        rows, cols = np.flatnonzero(item.any(1)), np.flatnonzero(item.any(0))
        if len(rows) == 0:
            return Cut(strength, difference, self.box)
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # the box has a margin: trim it
        box = (top + f * r0, min(bottom, top + f * r1), left + f * c0, min(right, left + f * c1))
        return Cut(strength[r0:r1, c0:c1], difference[r0:r1, c0:c1], box)


    def _measure(self, image: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Strength, difference and item mask over the box, on block means of ``f`` pixels."""
        from PIL import Image

        top, bottom, left, right = self.box
        x = image[top:bottom, left:right]
        if f > 1:
            x = np.asarray(Image.fromarray(x).reduce(f))
        x = (x if x.ndim == 3 else x[..., None]).astype(np.float32)
        surface = surface_at(self.coef, image.shape[:2], range(top, bottom, f), range(left, right, f))
        difference = x - surface
        strength = np.maximum(_distance(difference) - self.floor, 0.0)
        item = strength > 0
        if x.shape[-1] == 3:
            item &= ~shadow_like(x, surface, strength < SHADOW * self.peak)
        return strength, difference, item


class Cut(NamedTuple):
    strength: np.ndarray  # float (h, w)
    difference: np.ndarray  # float (h, w, C): the photo less its backdrop
    box: tuple[int, int, int, int]  # where in the photo: top, bottom, left, right (exclusive ends)

    @property
    def channels(self) -> np.ndarray:
        """Each channel's own distance from the backdrop, 0 where the strength is (float (h, w, C))."""
        return np.where(self.strength[..., None] > 0, np.abs(self.difference), 0.0)


def find_item(image: np.ndarray, work_side: int = WORK_SIDE) -> Item | None:
    """An (H, W) grey or (H, W, 3) colour uint8 photo -> where its item is (``Item``), or None
    for a blank photo. The search runs on block means of at most about ``work_side`` pixels a
    side: the box needs no more, and it keeps the cost per photo flat whatever its size."""
    small = _shrink(image, work_side)
    coef, noise = fit_backdrop(small)
    h, w = small.shape[:2]
    surface = surface_at(coef, (h, w), range(h), range(w))
    difference = small - surface
    strength = _distance(difference) - max(NOISE_FLOOR, 4 * noise)
    if not (strength > 0).any():
        return None
    positive = strength[strength > 0]
    k = int(0.99 * (len(positive) - 1))
    peak = float(np.partition(positive, k)[k])  # the 99th percentile
    # Hysteresis: the item is every region over the floor that holds strong pixels, so its faint
    # parts (a light sole, a thin strap) stay in the box while specks and soft shadows do not.
    above = strength > 0
    if small.shape[-1] == 3:
        above &= ~shadow_like(small, surface, strength < SHADOW * peak)
    labels, _ = ndimage.label(above, EIGHT_NEIGHBOURS)
    strong = np.bincount(labels[above & (strength > STRONG * peak)], minlength=labels.max() + 1)[1:]
    parts = [s for s, size in zip(ndimage.find_objects(labels), strong) if size and size >= MIN_REGION * strong.max()]
    top, bottom = min(s[0].start for s in parts), max(s[0].stop for s in parts)
    left, right = min(s[1].start for s in parts), max(s[1].stop for s in parts)
    sy, sx = image.shape[0] / h, image.shape[1] / w  # back to the photo's pixels, a block's margin kept
    box = (max(0, int((top - 1) * sy)), min(image.shape[0], int(np.ceil((bottom + 1) * sy))),
           max(0, int((left - 1) * sx)), min(image.shape[1], int(np.ceil((right + 1) * sx))))
    maps = (strength, difference, above) if (h, w) == image.shape[:2] else None  # searched on the photo itself
    return Item(box, coef, max(NOISE_FLOOR, 4 * noise), peak, maps)
