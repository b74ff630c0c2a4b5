"""The person in the loop, end to end: a shop with wrong labels -> audit -> review -> train.

    python benchmarks/loop.py --init strong/model.pt --out runs/loop [--noise 0.2] [--per-class 60] [--seed 0]

A shop of catalogue photos of Fashion-MNIST's ten classes (``audit.py``'s ``make_noisy_shop``:
``--per-class`` a class from *training* images, ``--noise`` of them moved to a wrong class
folder, ten near-duplicates) is trained on as it is (``train --init INIT --recipe shop``);
``fashionclf audit`` lists its suspects; ``fashionclf review`` serves them and Debian's
chromium (Playwright) plays a person who knows each photo's true class: on every card it
presses the key of that class (the current one where the label was right), each decision
written to decisions.csv; then ``train --data SHOP --data decisions.csv`` again. Both models
are scored on 100 catalogue photos a class made from Fashion-MNIST *test* images; printed
with the audit's recall and precision, the decisions taken and the time of each step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py, test_review.py
sys.path.insert(0, str(Path(__file__).parent))  # audit.py

TRAIN = ["--recipe", "shop", "--calibration", "split"]  # the same training before and after


def test_photos(per_class: int, seed: int) -> tuple[list[bytes], np.ndarray]:
    from helpers import catalogue_photo

    from fashionclf.data.fashion_mnist import load_dataset

    ds, rng = load_dataset(), np.random.default_rng([seed, 99])
    picks = np.concatenate([rng.choice(np.flatnonzero(ds.test.labels == c), per_class, replace=False)
                            for c in range(10)])
    return [catalogue_photo(ds.test.images[i], rng) for i in picks], ds.test.labels[picks]


def accuracy(model: Path, photos: list[bytes], labels: np.ndarray) -> float:
    from backdrops import convert_all

    from fashionclf.data.fashion_mnist import CLASSES
    from fashionclf.inference.classifier import load_classifier

    clf = load_classifier(model, "torch")
    names = [c.replace("/", "-") for c in CLASSES]
    x, ok, _ = convert_all(clf.to_input, photos)
    predicted = [names.index(clf.classes[i]) for i in clf.predict(x)[0].argmax(1)]
    return float((ok & (np.array(predicted) == labels)).mean())


def train(args: list[str], out: Path) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "fashionclf", "train", *args, "--out", str(out), "--exist-ok"]
    if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT).returncode:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return time.perf_counter() - start


def review_by_keyboard(suspects: Path, model: Path, truth, screenshot: Path | None = None
                       ) -> tuple[int, float, list[float]]:
    """Every card decided by the key of its photo's true class; (decisions, seconds, page timings).
    ``screenshot``: a picture of the page first."""
    from playwright.sync_api import sync_playwright
    from test_review import open_page, review_server

    start = time.perf_counter()
    with review_server(suspects, model) as url, sync_playwright() as p:
        browser, page = open_page(p, url)
        queue = page.evaluate("fetch('/api/queue').then(r => r.json())")
        values = queue["attributes"][0]["values"]
        if screenshot is not None:  # the page as a person sees it: a heatmap shown, two cards selected
            page.keyboard.press("h")
            page.wait_for_selector(".card[data-id='0'][data-heatmap=true]", timeout=30_000)
            page.keyboard.press("ArrowDown")
            page.keyboard.press("Space")
            page.keyboard.press("ArrowDown")
            page.keyboard.press("Space")
            page.wait_for_timeout(500)  # the thumbnails
            page.screenshot(path=str(screenshot))
            page.keyboard.press("Escape")
            page.keyboard.press("ArrowUp")
            page.keyboard.press("ArrowUp")
        for i, card in enumerate(queue["cards"]):
            page.keyboard.press(str((values.index(truth(card["path"])) + 1) % 10))
            page.wait_for_selector(f".card[data-id='{i}'].done", timeout=20_000)
        timings = page.evaluate("window.fashionclfTimings")
        browser.close()
    return len(queue["cards"]), time.perf_counter() - start, timings


def main() -> int:
    from audit import make_noisy_shop, score

    from fashionclf.device import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True)
    parser.add_argument("--out", default="runs/loop")
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0, help="the shop's and the audit's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="of the trainings before and after")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shop, suspects, decisions = out / "shop", out / "suspects.csv", out / "decisions.csv"
    planted, pairs = make_noisy_shop(shop, args.per_class, args.noise, args.seed)
    photos, labels = test_photos(100, args.seed)
    seconds = {}
    if not suspects.exists():  # a run of this script that stopped later keeps its audit and decisions
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "fashionclf", "audit", "--data", str(shop), "--init", args.init, "--output",
               str(suspects), "--out", str(out / "audit"), "--seed", str(args.seed)]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT).returncode:
            raise SystemExit("audit failed")
        seconds["audit"] = time.perf_counter() - start
    import csv

    found = score(list(csv.DictReader(suspects.open())), planted, pairs)

    def truth(path: str) -> str:
        return planted.get(path, Path(path).parent.name)

    timings: list[float] = []
    if not decisions.exists():
        train(["--data", str(shop), "--init", args.init, *TRAIN, "--seed", str(args.seed)], out / "before-0")
        decided, seconds["review"], timings = review_by_keyboard(suspects, out / "before-0" / "model.pt", truth,
                                                                 out / "review-page.png")
    decided_paths = {str((decisions.parent / r["path"]).resolve()) for r in csv.DictReader(decisions.open())}
    corrected = sum(1 for p in planted if p in decided_paths)
    accuracy_of: dict[str, dict[int, float]] = {"before": {}, "after": {}}
    for seed in args.seeds:
        for when, data in (("before", [str(shop)]), ("after", [str(shop), str(decisions)])):
            run = out / f"{when}-{seed}"
            if not (run / "metrics.json").exists():
                seconds[f"train {when} seed {seed}"] = train(
                    [*(a for d in data for a in ("--data", d)), "--init", args.init, *TRAIN, "--seed", str(seed)], run)
            accuracy_of[when][seed] = accuracy(run / "model.pt", photos, labels)
    result = {"cpu": cpu_info()["label"], "planted": len(planted), "photos": 10 * args.per_class + len(pairs),
              "audit": found, "decisions": len(decided_paths), "planted_corrected": corrected,
              "accuracy": accuracy_of, "median_before": float(np.median(list(accuracy_of["before"].values()))),
              "median_after": float(np.median(list(accuracy_of["after"].values()))), "seconds": seconds,
              **({"page_median_ms": float(np.median(timings)), "page_p95_ms": float(np.quantile(timings, 0.95))}
                 if timings else {})}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
