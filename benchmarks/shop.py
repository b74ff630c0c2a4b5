"""A shop teaches fashionclf its own categories: 5 classes, 50 catalogue photos each.

    python benchmarks/shop.py --init runs/strong/model.pt --out runs/shop
           [--shop plain|colour] [--inputs grey rgb] [--starts init scratch] [--seeds 0 1 2]

The shop's taxonomy groups Fashion-MNIST's classes (tops = T-shirt/top + Pullover + Shirt +
Coat, dresses, trousers, footwear = Sandal + Sneaker + Ankle boot, bags). Its photos are
catalogue-style JPEGs (``tests/helpers.py``'s ``catalogue_photo``) made from *training*
images, 50 per class, in ``OUT/shop/train/<class>/``; it is tested on such photos made from
*test* images (200 per class) in ``OUT/shop/test/<class>/``. Trained over three seeds:

* ``--init`` from the given Fashion-MNIST checkpoint (body kept, new head): ``INIT_ARGS``
  (recipe ``shop``);
* from scratch, strong-cnn with recipe ``strong``'s settings: ``SCRATCH_ARGS``.

``--shop colour`` makes a shop whose categories depend on colour: tops and footwear, each in red
or in blue of the same brightness (``COLOUR_TAXONOMY``), which a grey model cannot tell apart.
``--inputs grey rgb`` trains each start once per input (``--input``); ``--starts init`` leaves
out the runs from scratch.

Each run's accuracy, training time and unknown-item figures (``metrics.json``) are printed as a
Markdown table with medians and written to ``OUT/summary.json``. ``--convert N`` also times the
photo conversion of N JPEGs: first run (empty cache) and second run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py: catalogue photos
sys.path.insert(0, str(Path(__file__).parent))  # seeds.py

TAXONOMY = {"tops": [0, 2, 4, 6], "dresses": [3], "trousers": [1], "footwear": [5, 7, 9], "bags": [8]}
# Red and blue of nearly the same luma (ITU-R 601: 88 and 85 of 255), so that only colour tells them apart.
RED, BLUE = (190, 45, 45), (45, 80, 215)
COLOUR_TAXONOMY = {"red tops": ([0, 2, 4, 6], RED), "blue tops": ([0, 2, 4, 6], BLUE),
                   "red footwear": ([5, 7, 9], RED), "blue footwear": ([5, 7, 9], BLUE)}
INIT_ARGS = ["--recipe", "shop", "--val-fraction", "0.2"]  # 40 photos per class train, 10 choose
SCRATCH_ARGS = ["--recipe", "strong", "--batch-size", "16", "--val-fraction", "0.2"]


def make_shop(root: Path, per_class: int = 50, test_per_class: int = 200, seed: int = 0,
              colour_classes: bool = False) -> Path:
    """The shop's split folders of catalogue-style JPEGs (kept if already there): ``TAXONOMY``
    in random colours, or ``COLOUR_TAXONOMY`` (each class in its colour, +-12 per channel)."""
    from helpers import catalogue_photo

    from fashionclf.data.fashion_mnist import load_dataset

    if (root / "test").is_dir():
        return root
    ds = load_dataset()
    rng = np.random.default_rng(seed)
    taxonomy = COLOUR_TAXONOMY if colour_classes else {name: (m, None) for name, m in TAXONOMY.items()}
    for split, images, labels, n in (("train", ds.train.images, ds.train.labels, per_class),
                                     ("test", ds.test.images, ds.test.labels, test_per_class)):
        for name, (members, colour) in taxonomy.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(rng.choice(np.flatnonzero(np.isin(labels, members)), n, replace=False)):
                tint = None if colour is None else np.clip(np.add(colour, rng.uniform(-12, 12, 3)), 0, 255)
                (folder / f"{k:03d}.jpg").write_bytes(catalogue_photo(images[i], rng, colour=tint))
    return root


def unknown_figures(run_dir: Path) -> dict:
    u = json.loads((run_dir / "metrics.json").read_text()).get("unknown") or {}
    ood = u.get("ood", {})
    far = [v for k, v in ood.items() if k.startswith("far")]
    return {"in_distribution_flagged": ood.get("in_distribution_flagged"),
            "far_auroc": statistics.fmean(v["auroc"] for v in far) if far else None,
            "far_flagged": statistics.fmean(v["flagged"] for v in far) if far else None,
            "val_ece_before": u.get("val_ece_before"), "val_ece_after": u.get("val_ece_after")}


def conversion_speed(count: int, seed: int = 0) -> dict:
    """Photos/s converting ``count`` catalogue JPEGs with an empty cache, and the second load's seconds."""
    from helpers import catalogue_photo

    from fashionclf.data.fashion_mnist import load_dataset
    from fashionclf.data.sources import load_data

    ds = load_dataset()
    rng = np.random.default_rng(seed)
    work = Path(tempfile.mkdtemp(prefix="fashionclf-convert-"))
    try:
        for i in range(count):
            folder = work / "photos" / ds.classes[ds.train.labels[i]].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:05d}.jpg").write_bytes(catalogue_photo(ds.train.images[i], rng))
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")
        t0 = time.perf_counter()
        load_data(str(work / "photos"))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_data(str(work / "photos"))
        second = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"photos": count, "first_run_photos_per_s": count / first, "first_run_s": first, "second_run_s": second}


def main() -> int:
    from seeds import run_seeds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="a Fashion-MNIST checkpoint, e.g. the strong recipe's model.pt")
    parser.add_argument("--out", default="runs/shop")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--convert", type=int, default=0, metavar="N", help="also time converting N JPEGs")
    parser.add_argument("--shop", choices=["plain", "colour"], default="plain",
                        help="colour: categories that only colour tells apart (COLOUR_TAXONOMY)")
    parser.add_argument("--inputs", nargs="+", choices=["grey", "rgb"], default=[],
                        help="train each start once per --input (default: the input fashionclf chooses)")
    parser.add_argument("--starts", nargs="+", choices=["init", "scratch"], default=["init", "scratch"])
    args = parser.parse_args()
    out = Path(args.out)
    shop = make_shop(out / f"shop-{args.shop}", colour_classes=args.shop == "colour")
    starts = {"init": ["--init", args.init, *INIT_ARGS], "scratch": SCRATCH_ARGS}
    runs = {f"{start}-{i}" if i else start: [*starts[start], *(["--input", i] if i else [])]
            for start in args.starts for i in (args.inputs or [None])}
    summary = {}
    for name, extra in runs.items():
        s = run_seeds(["--data", str(shop), *extra], args.seeds, out / name)
        s["unknown"] = {seed: unknown_figures(out / name / f"seed-{seed}") for seed in args.seeds}
        summary[name] = s
    if args.convert:
        summary["conversion"] = conversion_speed(args.convert)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from fashionclf.device import cpu_info

    print(f"CPU: {cpu_info()['label']}")
    print("| start | seed | test acc | train s | test photos flagged unknown | far-OOD AUROC | far-OOD flagged |"
          " val ECE before / after |\n|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        if name == "conversion":
            continue
        for seed, m in s["seeds"].items():
            u = s["unknown"][seed]
            print(f"| {name} | {seed} | {m['test_accuracy']:.4f} | {m['train_seconds']:.1f} | "
                  f"{u['in_distribution_flagged']:.1%} | {u['far_auroc']:.3f} | {u['far_flagged']:.1%} | "
                  f"{u['val_ece_before']:.3f} / {u['val_ece_after']:.3f} |")
        med = s["median"]
        print(f"| {name} | median | {med['test_accuracy']:.4f} | {med['train_seconds']:.1f} | | | | |")
    if "conversion" in summary:
        c = summary["conversion"]
        print(f"\nconversion of {c['photos']:,} JPEGs: {c['first_run_photos_per_s']:,.0f} photos/s on the first run "
              f"({c['first_run_s']:.1f} s), second run {c['second_run_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
