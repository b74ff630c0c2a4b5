"""The review page's own time per decision: a person sorting photos by keyboard.

    python benchmarks/review.py [--photos 200] [--model MODEL.pt] [--out runs/review-bench]

``--photos`` catalogue photos of two classes (a model of those classes: ``--model``, or an
untrained one) are put in a queue folder; ``fashionclf review`` serves it on 127.0.0.1 and
Debian's chromium (Playwright) presses a value key for every card, one after another, each
once the previous decision is saved. The page records, per decision, the time from the key
press to the saved decision's answer (the file written and fsynced): printed as median, p95
and max, with the wall time of the whole sort and that every decision is in the manifest.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py, test_review.py


def main() -> int:
    from helpers import save_untrained_checkpoint
    from playwright.sync_api import sync_playwright
    from test_review import open_page, review_server, write_queue

    from fashionclf.device import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--model")
    parser.add_argument("--out", default="runs/review-bench")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out / "queue", ignore_errors=True)
    half = args.photos // 2
    queue = write_queue(out / "queue", {"bags": [f"b{i:03d}.jpg" for i in range(half)],
                                        "shoes": [f"s{i:03d}.jpg" for i in range(args.photos - half)]})
    model = Path(args.model) if args.model else save_untrained_checkpoint(out / "model.pt", classes=["bags", "shoes"])
    rng = np.random.default_rng(0)
    with review_server(queue, model) as url, sync_playwright() as p:
        browser, page = open_page(p, url)
        started = page.evaluate("performance.now()")
        for i in range(args.photos):
            page.keyboard.press(str(int(rng.integers(1, 3))))
            page.wait_for_selector(f".card[data-id='{i}'].done", timeout=20_000)
        wall = (page.evaluate("performance.now()") - started) / 1000
        timings = page.evaluate("window.fashionclfTimings")
        browser.close()
    with open(queue / "decisions.csv", newline="") as f:
        written = sum(1 for _ in csv.DictReader(f))
    q = statistics.quantiles(timings, n=20)
    result = {"cpu": cpu_info()["label"], "decisions": len(timings), "written": written,
              "median_ms": statistics.median(timings), "p95_ms": q[18], "max_ms": max(timings), "wall_s": wall}
    print(json.dumps(result, indent=2))
    print(f"\n{result['cpu']}: {len(timings)} decisions by keyboard, key to saved decision median "
          f"{result['median_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, max {result['max_ms']:.1f} ms; "
          f"{written} rows in decisions.csv; {wall:.1f} s for the whole sort")
    return 0


if __name__ == "__main__":
    sys.exit(main())
