"""A shop that tags three attributes per photo: one model with a head each, against one model
per attribute, and with --balance for a skewed attribute.

    python benchmarks/attributes.py --init runs/strong/model.pt --out runs/attributes [--seeds 0 1 2]
                                    [--runs joint separate-colour ...]

The shop (``make_tagged_shop``, catalogue JPEGs made from Fashion-MNIST: *training* images to
learn from, *test* images to score on) tags:

* ``category``: tops, dresses, trousers, footwear, bags (``shop.TAXONOMY``);
* ``colour``: the item's colour, skewed as a shop's stock is (``COLOURS``: blue 70%, red 20%,
  green 7%, grey 3%; red and blue of the same brightness); 30% of the cells left empty;
* ``occasion``: several values per photo, from the garment kind (``OCCASIONS``: a dress is
  office, summer and party wear), finer than the category; 20% of the cells left empty.

Runs, each over ``--seeds``, all ``--init`` from the given Fashion-MNIST checkpoint with recipe
``shop``: ``joint`` (one model, three heads), ``joint-balance`` and ``joint-sqrt`` (the same
with ``--balance weights`` / ``sqrt``), ``joint-occasion-0.3`` (the multi-label attribute's
loss weighted 0.3), and ``separate`` (one model per single-valued attribute, from a manifest of that attribute
alone; a multi-label attribute cannot be a model's only one, as the first attribute is the
category the unknown score comes from). Printed
as a Markdown table: per attribute its accuracy (colour: also the mean recall over its values,
which a skewed attribute needs) or mAP, and the training seconds, medians over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py: catalogue photos
sys.path.insert(0, str(Path(__file__).parent))  # seeds.py, shop.py

COLOURS = {"blue": ((45, 80, 215), 0.70), "red": ((190, 45, 45), 0.20), "green": ((40, 140, 60), 0.07),
           "grey": ((110, 110, 110), 0.03)}
OCCASIONS = {0: "casual;summer", 1: "office;casual", 2: "winter;casual", 3: "office;summer;party", 4: "winter;office",
             5: "summer", 6: "office", 7: "sport;casual", 8: "office;casual", 9: "winter"}
EMPTY = {"colour": 0.3, "occasion": 0.2}
ARGS = ["--recipe", "shop", "--val-fraction", "0.2"]


def make_tagged_shop(root: Path, per_category: int = 100, test_per_category: int = 200, seed: int = 0) -> Path:
    """``root/tags.csv`` (``path,category,colour,occasion,split``) over JPEGs in ``root/photos``,
    and ``root/<attribute>.csv`` holding that attribute alone (kept if already there)."""
    from helpers import catalogue_photo
    from shop import TAXONOMY

    from fashionclf.data.fashion_mnist import load_dataset

    if (root / "tags.csv").is_file():
        return root
    ds = load_dataset()
    rng = np.random.default_rng(seed)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    names, shares = list(COLOURS), np.array([share for _, share in COLOURS.values()])
    rows = []
    for split, images, labels, n in (("train", ds.train.images, ds.train.labels, per_category),
                                     ("test", ds.test.images, ds.test.labels, test_per_category)):
        for category, members in TAXONOMY.items():
            for k, i in enumerate(rng.choice(np.flatnonzero(np.isin(labels, members)), n, replace=False)):
                colour = names[rng.choice(len(names), p=shares)]
                tint = np.clip(np.add(COLOURS[colour][0], rng.uniform(-12, 12, 3)), 0, 255)
                name = f"photos/{split}-{category}-{k:03d}.jpg"
                (root / name).write_bytes(catalogue_photo(images[i], rng, colour=tuple(tint)))
                cells = {"colour": colour, "occasion": OCCASIONS[int(labels[i])]}
                cells = {a: "" if split == "train" and rng.random() < EMPTY[a] else v for a, v in cells.items()}
                rows.append((name, category, cells["colour"], cells["occasion"], "test" if split == "test" else ""))
    (root / "tags.csv").write_text("path,category,colour,occasion,split\n" + "".join(",".join(r) + "\n" for r in rows))
    for a, column in (("category", 1), ("colour", 2)):
        kept = [r for r in rows if r[column]]
        (root / f"{a}.csv").write_text(f"path,{a},split\n" + "".join(f"{r[0]},{r[column]},{r[4]}\n" for r in kept))
    return root


def figures(run_dir: Path, attribute: str | None) -> dict:
    """One run's figure per attribute: accuracy (and mean recall over values) or mAP; train seconds."""
    m = json.loads((run_dir / "metrics.json").read_text())
    out = {"train_seconds": m["train_seconds"]}
    sections = m.get("attributes") or {attribute: {"test_accuracy": m["test_accuracy"],
                                                   "test": {"kind": "single", "per_class": m["per_class"]}}}
    for name, a in sections.items():
        if a["test"]["kind"] == "multi-label":
            out[name] = {"mAP": a["test_mAP"]}
        else:
            recalls = [v["recall"] for v in a["test"]["per_class"].values() if v["support"]]
            out[name] = {"accuracy": a["test_accuracy"], "mean_recall": statistics.fmean(recalls)}
    return out


def main() -> int:
    from seeds import run_seeds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="a Fashion-MNIST checkpoint, e.g. the strong recipe's model.pt")
    parser.add_argument("--out", default="runs/attributes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", help="only these runs (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    shop = make_tagged_shop(out / "shop")
    runs = {"joint": (shop / "tags.csv", [], None), "joint-balance": (shop / "tags.csv", ["--balance", "weights"], None),
            "joint-sqrt": (shop / "tags.csv", ["--balance", "sqrt"], None),
            "joint-occasion-0.3": (shop / "tags.csv", ["--attribute-weights", "occasion=0.3"], None),
            **{f"separate-{a}": (shop / f"{a}.csv", [], a) for a in ("category", "colour")}}
    results = {}
    for name, (manifest, extra, attribute) in runs.items():
        if args.runs and name not in args.runs:
            continue
        run_seeds(["--data", str(manifest), "--init", args.init, *ARGS, *extra], args.seeds, out / name)
        results[name] = [figures(out / name / f"seed-{s}", attribute) for s in args.seeds]
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    from fashionclf.device import cpu_info

    def med(rows: list[dict], attribute: str, key: str) -> str:
        values = [r[attribute][key] for r in rows if attribute in r]
        return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})" if values else ""

    print(f"CPU: {cpu_info()['label']}; seeds {args.seeds}; medians (min-max)")
    print("| run | category accuracy | colour accuracy | colour mean recall | occasion mAP | train s |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        seconds = statistics.median(r["train_seconds"] for r in rows)
        print(f"| {name} | {med(rows, 'category', 'accuracy')} | {med(rows, 'colour', 'accuracy')} | "
              f"{med(rows, 'colour', 'mean_recall')} | {med(rows, 'occasion', 'mAP')} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
