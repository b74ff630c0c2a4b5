"""Product photos on any backdrop: how a Fashion-MNIST model does on photos as shops take them.

    python benchmarks/backdrops.py MODEL.pt [--per-style 300] [--non-garments 100] [--seed 0]
                                   [--styles white gradient ...] [--grid FILE.png] [--json FILE]

For each style of ``tests/photo_styles.py`` (white, gradient, vignette, shadow, dark, coloured,
rotated), ``--per-style`` JPEG photos made from Fashion-MNIST *test* images (the model never saw
them) and ``--non-garments`` photos of things that are not garments on the same backdrops go
through the model's own photo path (``Classifier.to_input``, as predict and serve do). Reported
per style: accuracy on the ten classes and on a coarse shop taxonomy (``COARSE``), the share of
the garments called "unknown" (wrongly), the share of the non-garments flagged (rightly), and
the median cost of converting one photo. ``--grid`` draws "what the model sees": photos of each
style beside their conversion. A different ``--seed`` makes a new set of the same styles.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # photo_styles.py

# A coarse taxonomy of Fashion-MNIST's classes, as a small shop might tag: tops, dresses and
# trousers, footwear, bags.
COARSE = {"tops": [0, 2, 4, 6], "dresses & trousers": [1, 3], "footwear": [5, 7, 9], "bags": [8]}


def coarse_of(labels: np.ndarray) -> np.ndarray:
    table = np.zeros(10, np.int64)
    for k, members in enumerate(COARSE.values()):
        table[members] = k
    return table[labels]


def convert_all(to_input, photos: list[bytes]) -> tuple[np.ndarray, np.ndarray, float]:
    """The converted photos, whether each could be converted (a photo the conversion refuses,
    e.g. as blank, is an error row in predict: counted here as wrong and not flagged), and the
    median seconds per photo."""
    from fashionclf.data.photos import PhotoError

    out, ok, seconds = [], [], []
    for photo in photos:
        start = time.perf_counter()
        try:
            out.append(to_input(photo))
            ok.append(True)
        except PhotoError:
            out.append(None)
            ok.append(False)
        seconds.append(time.perf_counter() - start)
    blank = np.zeros_like(next(x for x in out if x is not None))
    return np.stack([blank if x is None else x for x in out]), np.array(ok), statistics.median(seconds)


def measure_style(clf, style: str, images: np.ndarray, labels: np.ndarray, non_garments: int, seed: int) -> dict:
    from photo_styles import non_garment_photo, styled_photo

    rng = np.random.default_rng([seed, zlib.crc32(style.encode())])  # the same set in every process
    garments = [styled_photo(image, style, rng) for image in images]
    others = [non_garment_photo(style, rng) for _ in range(non_garments)]
    x, ok, cost = convert_all(clf.to_input, garments)
    probabilities, scores = clf.predict(x)
    predicted = np.where(ok, probabilities.argmax(1), -1)
    unknown = clf.unknown(scores)
    row = {"style": style, "photos": len(garments), "accuracy": float((predicted == labels).mean()),
           "coarse_accuracy": float((ok & (coarse_of(predicted.clip(0)) == coarse_of(labels))).mean()),
           "garments_unknown": None if unknown is None else float((unknown & ok).mean()),
           "unreadable": float(1 - ok.mean()), "convert_ms": cost * 1000, "samples": (garments[:4], x[:4])}
    if others:
        ox, ok_others, _ = convert_all(clf.to_input, others)
        flagged = clf.unknown(clf.predict(ox)[1])
        row["non_garments"] = len(others)
        row["non_garments_flagged"] = None if flagged is None else float((flagged | ~ok_others).mean())
        row["samples"] = (garments[:3] + others[:1], np.concatenate([x[:3], ox[:1]]))
    return row


def draw_grid(rows: list[dict], path: Path) -> None:
    """Per style: four photos (the last one not a garment) and, beside each, what the model sees."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(rows), 8, figsize=(10, 1.35 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        photos, seen = row["samples"]
        for k in range(4):
            axes[r, 2 * k].imshow(Image.open(io.BytesIO(photos[k])).convert("RGB"))
            axes[r, 2 * k + 1].imshow(seen[k], cmap="gray" if seen[k].ndim == 2 else None, vmin=0, vmax=255)
        axes[r, 0].set_ylabel(row["style"], rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("photo -> what the model sees (the fourth pair of each row is not a garment)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    from photo_styles import STYLES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--per-style", type=int, default=300)
    parser.add_argument("--non-garments", type=int, default=100)
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--grid")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from fashionclf.data.fashion_mnist import load_dataset
    from fashionclf.device import cpu_info
    from fashionclf.inference.classifier import load_classifier

    clf = load_classifier(args.model, args.backend)
    test = load_dataset(None).test
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(test.labels), args.per_style, replace=False)
    images, labels = test.images[pick], test.labels[pick]
    clean = clf.predict(images)
    clean_unknown = clf.unknown(clean[1])
    print(f"{args.model} ({clf.info['model']}, {clf.backend}); {cpu_info()['label']}; seed {args.seed}")
    print(f"the same {len(labels)} test images as the dataset stores them: accuracy "
          f"{(clean[0].argmax(1) == labels).mean():.3f}, coarse {(coarse_of(clean[0].argmax(1)) == coarse_of(labels)).mean():.3f}"
          + (f", unknown {clean_unknown.mean():.1%}" if clean_unknown is not None else ""))
    print("| style | accuracy | coarse accuracy | garments called unknown | refused as unreadable "
          "| non-garments flagged | convert ms/photo |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for style in args.styles:
        row = measure_style(clf, style, images, labels, args.non_garments, args.seed)
        rows.append(row)
        fmt = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
        print(f"| {style} | {row['accuracy']:.3f} | {row['coarse_accuracy']:.3f} | {fmt(row['garments_unknown'])} | "
              f"{fmt(row['unreadable'])} | {fmt(row.get('non_garments_flagged'))} | {row['convert_ms']:.2f} |", flush=True)
    keys = ("accuracy", "coarse_accuracy", "garments_unknown", "unreadable", "non_garments_flagged", "convert_ms")
    medians = {k: statistics.median(r[k] for r in rows if r.get(k) is not None) for k in keys
               if any(r.get(k) is not None for r in rows)}
    print("median over styles: " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))
    if args.grid:
        draw_grid(rows, Path(args.grid))
        print(f"grid: {args.grid}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "seed": args.seed, "medians": medians,
                                               "styles": [{k: v for k, v in r.items() if k != "samples"}
                                                          for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
