"""How well ``fashionclf audit`` finds planted wrong labels and near-duplicates.

    python benchmarks/audit.py --init runs/strong/model.pt --out runs/audit-bench [--noise 0.02 0.08 0.2]
                               [--per-class 60] [--seed 0]

A shop of catalogue photos made from Fashion-MNIST *training* images (``--per-class`` per
class, the ten classes), written as class folders; for each ``--noise`` level that share of
the photos is moved to a wrong class folder (chosen at random), and ``DUPLICATES`` photos get
a near-duplicate (the same item re-photographed: another JPEG quality, a few pixels of crop,
another size) beside them. ``fashionclf audit --init INIT`` judges each shop. Reported per
level: the ``label`` rows' recall and precision against the planted labels, how often the
suggested label is the true one among the hits, how many planted near-duplicates the
``duplicate`` rows name, and the audit's wall time. Printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py: catalogue photos

DUPLICATES = 10


def make_noisy_shop(root: Path, per_class: int, noise: float, seed: int) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Class folders of catalogue photos; returns {planted path: true class} and the
    near-duplicate pairs (original, copy)."""
    from helpers import catalogue_photo

    from fashionclf.data.fashion_mnist import load_dataset

    ds = load_dataset()
    rng = np.random.default_rng(seed)
    names = [c.replace("/", "-") for c in ds.classes]
    paths, truth = [], []
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(rng.choice(np.flatnonzero(ds.train.labels == c), per_class, replace=False)):
            path = root / name / f"{k:03d}.jpg"
            path.write_bytes(catalogue_photo(ds.train.images[i], rng))
            paths.append(path)
            truth.append(name)
    planted = {}
    for j in rng.choice(len(paths), int(round(noise * len(paths))), replace=False):
        wrong = names[(names.index(truth[j]) + int(rng.integers(1, len(names)))) % len(names)]
        target = root / wrong / f"moved-{truth[j]}-{paths[j].name}"
        shutil.move(paths[j], target)
        planted[str(target)] = truth[j]
        paths[j] = target
    pairs = []
    for j in rng.choice([i for i, p in enumerate(paths) if str(p) not in planted], DUPLICATES, replace=False):
        image = Image.open(paths[j]).convert("RGB")
        w, h = image.size
        crop = image.crop((3, 2, w - 2, h - 3)).resize((int(w * 0.9), int(h * 0.9)))
        copy = paths[j].with_name(f"copy-{paths[j].name}")
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=70)
        copy.write_bytes(buf.getvalue())
        pairs.append((str(paths[j]), str(copy)))
    return planted, pairs


def score(rows: list[dict], planted: dict[str, str], pairs: list[tuple[str, str]]) -> dict:
    flagged = {r["path"]: r for r in rows if r["kind"] == "label"}
    hits = [p for p in flagged if p in planted]
    found_pairs = {frozenset((r["path"], r["other"])) for r in rows if r["kind"] == "duplicate"}
    return {"planted": len(planted), "flagged": len(flagged), "recall": len(hits) / max(len(planted), 1),
            "precision": len(hits) / max(len(flagged), 1),
            "suggested_right": sum(flagged[p]["suggested"] == planted[p] for p in hits) / max(len(hits), 1),
            "duplicates_found": sum(frozenset(p) in found_pairs for p in pairs), "duplicates_planted": len(pairs),
            "duplicate_rows": sum(r["kind"] == "duplicate" for r in rows),
            "outliers": sum(r["kind"] == "outlier" for r in rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True)
    parser.add_argument("--out", default="runs/audit-bench")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.08, 0.2])
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from fashionclf.device import cpu_info
    from fashionclf.quality.find import AuditSettings, audit
    from fashionclf.training.config import TrainConfig

    out, results = Path(args.out), {}
    for noise in args.noise:
        shop = out / f"shop-{noise:g}"
        planted, pairs = make_noisy_shop(shop, args.per_class, noise, args.seed)
        start = time.perf_counter()
        audit(TrainConfig(data=[str(shop)], init=args.init, seed=args.seed),
              AuditSettings(str(out / f"suspects-{noise:g}.csv"), str(out / f"audit-{noise:g}")), log=lambda _: None)
        rows = list(csv.DictReader((out / f"suspects-{noise:g}.csv").open()))
        results[noise] = {**score(rows, planted, pairs), "seconds": time.perf_counter() - start}
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"CPU: {cpu_info()['label']}; {args.per_class} photos per class, seed {args.seed}")
    print("| planted wrong | label rows | recall | precision | suggested right | near-duplicates found | outliers | s |")
    print("|---|---|---|---|---|---|---|---|")
    for noise, r in results.items():
        print(f"| {noise:.0%} ({r['planted']}) | {r['flagged']} | {r['recall']:.3f} | {r['precision']:.3f} | "
              f"{r['suggested_right']:.3f} | {r['duplicates_found']} of {r['duplicates_planted']} "
              f"({r['duplicate_rows']} rows) | {r['outliers']} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
