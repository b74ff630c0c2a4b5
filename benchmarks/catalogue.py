"""Accuracy on catalogue-style photos against the same images clean: what the photo path costs.

    python benchmarks/catalogue.py runs/strong/model.pt [more models...] [--images 1000]

Test images are turned back into shop photos (``tests/helpers.py``'s ``catalogue_photo``:
white background, a random colour, upscaled 6-12x, off-centre, in its nine formats and modes),
converted by ``fashionclf.data.photos.photo_to_28`` and tagged; the clean images are tagged too.
Prints a Markdown row per model: clean accuracy, photo accuracy and their ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py: catalogue photos


def photo_set(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean images, the same as converted photos, labels) for ``count`` seeded test images."""
    from helpers import CATALOGUE_FORMATS, catalogue_photo

    from fashionclf.data.fashion_mnist import load_dataset
    from fashionclf.data.photos import photo_to_28

    ds = load_dataset()
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(ds.test.labels), count, replace=False)
    photos = np.stack([photo_to_28(catalogue_photo(ds.test.images[i], rng, CATALOGUE_FORMATS[n % len(CATALOGUE_FORMATS)]))
                       for n, i in enumerate(picks)])
    return ds.test.images[picks], photos, ds.test.labels[picks]


def main() -> int:
    from fashionclf.inference.classifier import load_classifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    clean, photos, labels = photo_set(args.images)
    from fashionclf.device import cpu_info

    print(f"CPU: {cpu_info()['label']}")
    print(f"| model | clean | catalogue photos | ratio |  ({args.images} test images)\n|---|---|---|---|")
    for model in args.models:
        clf = load_classifier(model, "torch")
        a = float((clf.predict_proba(clean).argmax(1) == labels).mean())
        b = float((clf.predict_proba(photos).argmax(1) == labels).mean())
        print(f"| {model} | {a:.4f} | {b:.4f} | {b / a:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
