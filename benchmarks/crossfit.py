"""Small photo sets: cross-fitted calibration against carving validation and test splits.

    python benchmarks/crossfit.py --init strong/model.pt --out runs/crossfit
                                  [--per-class 50 100 200] [--seeds 0 1 2] [--ways split crossfit]

A shop of five categories (``shop.py``'s ``TAXONOMY``) with ``--per-class`` catalogue photos
a class, made from Fashion-MNIST *training* images, in class folders without splits. Each
size and seed is trained from ``--init`` with recipe ``shop`` once per ``--calibration`` way:
``split`` (val and test carved out of the photos, 10% and 20% of each class; the threshold set
on the val photos) and ``crossfit`` (every photo learnt from; temperature and threshold fitted
on five fold models' out-of-sample answers). Every model is then judged on photos it never
saw, through its own photo path (``Classifier.to_input``, as predict and serve do):

* the shop's own kind of photo: 200 catalogue photos a class made from Fashion-MNIST *test*
  images: accuracy, and the share called "unknown" (wrongly);
* things that are not garments: ``--non-garments`` photos of sample-photo crops and
  handwritten digits on white and on gradient backdrops (``tests/photo_styles.py``), and the
  digits, photo crops and noise of ``fashionclf.evaluation.ood``: the share flagged (rightly).

Prints a Markdown table (per run, then medians per size and way) and writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # photo_styles.py, helpers.py
sys.path.insert(0, str(Path(__file__).parent))  # shop.py

STYLES = ("white", "gradient")


def non_garments(count: int, seed: int) -> list[bytes]:
    from photo_styles import non_garment_photo

    rng = np.random.default_rng([seed, 7])
    return [non_garment_photo(STYLES[i % len(STYLES)], rng) for i in range(count)]


def shop_test(root: Path) -> tuple[list[bytes], np.ndarray]:
    classes = sorted(p.name for p in (root / "test").iterdir())
    photos, labels = [], []
    for c, name in enumerate(classes):
        for path in sorted((root / "test" / name).glob("*.jpg")):
            photos.append(path.read_bytes())
            labels.append(c)
    return photos, np.array(labels)


def judge(model: Path, shop: tuple[list[bytes], np.ndarray], others: list[bytes], seed: int) -> dict:
    from backdrops import convert_all

    from fashionclf.evaluation.ood import auroc, far_ood_images
    from fashionclf.inference.classifier import load_classifier

    clf = load_classifier(model, "torch")
    x, ok, _ = convert_all(clf.to_input, shop[0])
    probabilities, scores = clf.predict(x)
    unknown = clf.unknown(scores)
    out = {"accuracy": float((ok & (probabilities.argmax(1) == shop[1])).mean()),
           "shop_unknown": float((unknown & ok).mean())}
    ox, ok_others, _ = convert_all(clf.to_input, others)
    other_scores = clf.predict(ox)[1]
    out["non_garment_photos_flagged"] = float((clf.unknown(other_scores) | ~ok_others).mean())
    far = far_ood_images(seed, clf.contract)
    out["far_ood_flagged"] = {name: float(clf.unknown(clf.predict(images)[1]).mean()) for name, images in far.items()}
    # How well the score tells them apart, whatever the threshold: the model's part, not the calibration's.
    out["non_garment_photos_auroc"] = auroc(scores[ok], other_scores[ok_others])
    # The best any threshold could do here: the one that calls exactly 5% of these shop photos unknown.
    at_5 = np.quantile(scores[ok], 0.05)
    out["non_garment_photos_flagged_at_5pct"] = float(((other_scores < at_5) | ~ok_others).mean())
    out["non_garments_flagged"] = statistics.fmean([out["non_garment_photos_flagged"], *out["far_ood_flagged"].values()])
    return out


def train(shop: Path, init: str, way: str, seed: int, out: Path) -> dict:
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "fashionclf", "train", "--data", str(shop / "train"), "--init", init,
               "--recipe", "shop", "--calibration", way, "--seed", str(seed), "--out", str(out), "--exist-ok"]
        start = time.perf_counter()
        log = out.with_suffix(".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    m = json.loads((out / "metrics.json").read_text())
    return {"wall_seconds": float((out / "wall_seconds.txt").read_text()), "threshold": m["unknown"]["threshold"],
            "own_estimate": (m.get("crossfit") or {}).get("accuracy", m["test_accuracy"])}


def main() -> int:
    from shop import make_shop

    from fashionclf.device import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="a Fashion-MNIST checkpoint, e.g. the strong recipe's model.pt")
    parser.add_argument("--out", default="runs/crossfit")
    parser.add_argument("--per-class", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ways", nargs="+", choices=["split", "crossfit"], default=["split", "crossfit"])
    parser.add_argument("--non-garments", type=int, default=300)
    args = parser.parse_args()
    out = Path(args.out)
    others = non_garments(args.non_garments, 0)
    rows = []
    for n in args.per_class:
        shop = make_shop(out / f"shop-{n}", per_class=n)
        test = shop_test(shop)
        for seed in args.seeds:
            for way in args.ways:
                run = out / f"{n}-{way}-seed-{seed}"
                row = {"per_class": n, "way": way, "seed": seed, **train(shop, args.init, way, seed, run),
                       **judge(run / "model.pt", test, others, seed)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    (out / "summary.json").write_text(json.dumps({"cpu": cpu_info()["label"], "rows": rows}, indent=2) + "\n")
    print(f"\nCPU: {cpu_info()['label']}")
    print("| photos a class | calibration | seeds | accuracy on new photos | own estimate | shop photos called unknown "
          "| non-garments flagged (photos / digits, crops, noise) | wall s |\n|---|---|---|---|---|---|---|---|")
    for n in args.per_class:
        for way in args.ways:
            rs = [r for r in rows if r["per_class"] == n and r["way"] == way]

            def med(key, rs=rs):
                return statistics.median(r[key] for r in rs)

            far = statistics.median(statistics.fmean(r["far_ood_flagged"].values()) for r in rs)
            print(f"| {n} | {way} | {len(rs)} | {med('accuracy'):.4f} | {med('own_estimate'):.4f} | "
                  f"{med('shop_unknown'):.1%} | {med('non_garments_flagged'):.1%} "
                  f"({med('non_garment_photos_flagged'):.1%} / {far:.1%}) | {med('wall_seconds'):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
