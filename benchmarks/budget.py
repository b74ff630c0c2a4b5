"""How much of a time budget a run spends: ``fashionclf train --time-budget B`` for each budget,
one after another, with the whole command timed from outside.

    python benchmarks/budget.py --out runs/budget --budgets 2m 10m [--cold] -- --recipe strong

Everything after ``--`` goes to ``fashionclf train``. ``--cold`` drops the operating system's
file cache before each run (needs root), as after a fresh install or a reboot: the libraries
and the data are read from disk again. Prints a Markdown table (budget, epochs planned and run,
re-plans, the run's own "run took" figure and the command's wall time, both as a share of the
budget) and writes OUT/budget.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "src"))
from fashionclf.device import cpu_info  # noqa: E402
from fashionclf.training.config import parse_duration  # noqa: E402


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def one(budget: str, train_args: list[str], out: Path, cold: bool) -> dict:
    run_dir = out / f"budget-{budget}"
    if cold:
        drop_caches()
    cmd = [sys.executable, "-m", "fashionclf", "train", *train_args, "--time-budget", budget, "--out", str(run_dir)]
    t0 = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); see {run_dir.with_suffix('.log')}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plan, seconds = metrics["time_budget"], parse_duration(budget)
    return {"budget": budget, "budget_seconds": seconds, "epochs_planned": plan["epochs"],
            "epochs_run": metrics["total_epochs"], "replanned": plan.get("replanned", []),
            "run_seconds": metrics["run_seconds"], "command_seconds": wall,
            "median_epoch_seconds": metrics["median_epoch_seconds"], "planned_epoch_seconds": plan["epoch_seconds"],
            "test_accuracy": metrics["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budgets", nargs="+", default=["2m", "10m"])
    parser.add_argument("--cold", action="store_true", help="drop the file cache before each run (root)")
    args, train_args = parser.parse_known_args()
    train_args = [a for a in train_args if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [one(b, train_args, args.out, args.cold) for b in args.budgets]
    result = {"cpu": cpu_info()["label"], "train_args": train_args, "cold": args.cold, "runs": rows}
    (args.out / "budget.json").write_text(json.dumps(result, indent=2))
    cold = " (file cache dropped first)" if args.cold else ""
    print(f"CPU: {result['cpu']}; `fashionclf train {' '.join(train_args)}`{cold}\n")
    print("| budget | epochs planned -> run | re-plans | epoch s (planned / median) | run took | command | test acc |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        replans = ", ".join(f"{x['epochs_from']}->{x['epochs_to']} after {x['after_epoch']}" for x in r["replanned"])
        print(f"| {r['budget']} | {r['epochs_planned']} -> {r['epochs_run']} | {replans or 'none'} | "
              f"{r['planned_epoch_seconds']:.1f} / {r['median_epoch_seconds']:.1f} | {r['run_seconds']:.0f} s "
              f"({r['run_seconds'] / r['budget_seconds']:.0%}) | {r['command_seconds']:.0f} s "
              f"({r['command_seconds'] / r['budget_seconds']:.0%}) | {r['test_accuracy']:.4f} |")


if __name__ == "__main__":
    main()
