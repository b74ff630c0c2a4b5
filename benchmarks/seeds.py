"""Train one configuration over several seeds and report the median, not one lucky number.

    python benchmarks/seeds.py --out runs/seeds/one-block -- --model one-block-cnn --epochs 10 --batch-size 32

Everything after ``--`` is passed to ``fashionclf train``; each seed writes ``OUT/seed-N``.
Prints a Markdown table and writes ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_seeds(train_args: list[str], seeds: list[int], out: Path, jobs: int = 1) -> dict:
    """``fashionclf train TRAIN_ARGS --seed S --out OUT/seed-S`` for each seed; the per-seed
    figures and their median, also written to ``OUT/summary.json``."""

    def one(seed: int) -> dict:
        run_dir = out / f"seed-{seed}"
        cmd = [sys.executable, "-m", "fashionclf", "train", *train_args, "--seed", str(seed), "--out", str(run_dir)]
        log = run_dir.with_suffix(".log")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc:
            raise SystemExit(f"seed {seed} failed (exit {rc}); see {log}")
        return json.loads((run_dir / "metrics.json").read_text())

    with ThreadPoolExecutor(jobs) as pool:
        results = dict(zip(seeds, pool.map(one, seeds)))
    keys = ("test_accuracy", "val_accuracy", "train_accuracy", "best_epoch", "train_seconds")
    summary = {
        "command": "fashionclf train " + " ".join(train_args),
        "seeds": {s: {k: m[k] for k in keys} for s, m in results.items()},
        "median": {k: statistics.median(m[k] for m in results.values()) for k in keys},
        "min": {k: min(m[k] for m in results.values()) for k in keys},
        "max": {k: max(m[k] for m in results.values()) for k in keys},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def markdown(summary: dict) -> str:
    lines = [f"`{summary['command']}`", "",
             "| seed | test acc | val acc | train acc (eval mode) | best epoch | train s |", "|---|---|---|---|---|---|"]
    for s, m in summary["seeds"].items():
        lines.append(f"| {s} | {m['test_accuracy']:.4f} | {m['val_accuracy']:.4f} | {m['train_accuracy']:.4f} "
                     f"| {m['best_epoch']} | {m['train_seconds']:.1f} |")
    med = summary["median"]
    lines.append(f"| median | {med['test_accuracy']:.4f} | {med['val_accuracy']:.4f} | {med['train_accuracy']:.4f} "
                 f"| {med['best_epoch']:g} | {med['train_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each uses --threads of its own)")
    parser.add_argument("--out", required=True)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    print(markdown(run_seeds(train_args, args.seeds, Path(args.out), args.jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
