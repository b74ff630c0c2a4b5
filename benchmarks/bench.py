"""The benchmark suite behind docs/results.md's speed and accuracy figures (``make bench``).

    python benchmarks/bench.py --out runs/bench [--seeds 0 1 2] [--strong-seeds 0 1 2] [--skip keras strong]

In one run on one machine, one thing at a time (runs never overlap, so none slows another):

1. the reference Keras program (benchmarks/keras_reference.py, if TensorFlow is installed:
   ``pip install '.[bench]'``; else skipped with a note);
2. ``fashionclf train --recipe fast`` over ``--seeds``: time to the reference's 0.9184 test
   accuracy (the training seconds of a run whose final model reaches it), final accuracy;
3. ``fashionclf train --recipe strong`` over ``--strong-seeds``: test accuracy, training seconds;
4. inference through ``fashionclf.inference.classifier`` (preprocessing and TTA included) for each
   trained model and the reference CNN, on both backends: images/s at batch 256 over the
   10,000 test images, and batch-1 latency.

Writes OUT/results.json and OUT/results.md (Markdown tables, the machine, the commands) and
prints the Markdown. Every ratio in it compares figures measured in this run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py: an untrained checkpoint
from seeds import markdown, run_seeds  # noqa: E402

REFERENCE_ACCURACY = 0.9184  # the one-block reference program's published test accuracy


def machine() -> dict:
    from fashionclf.device import cpu_info

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnxruntime", "torchvision", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {
        **cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "versions": versions,
    }


def keras_peer(out: Path) -> dict:
    path = out / "keras.json"
    cmd = [sys.executable, str(Path(__file__).parent / "keras_reference.py"), "--json", str(path)]
    with open(out / "keras.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc or not path.exists():
        return {"skipped": f"keras_reference.py failed (exit {rc}); see {out / 'keras.log'}"}
    return json.loads(path.read_text())


def time_to_accuracy(summary: dict, target: float) -> dict:
    seeds = summary["seeds"].values()
    reached = [m["train_seconds"] for m in seeds if m["test_accuracy"] >= target]
    return {
        "target": target,
        "runs_reaching": f"{len(reached)}/{len(seeds)}",
        # A run that misses the target has no time to it: the median counts it as infinite.
        "median_seconds": statistics.median(
            [m["train_seconds"] if m["test_accuracy"] >= target else float("inf") for m in seeds]),
        "test_accuracy": {k: summary[k]["test_accuracy"] for k in ("median", "min", "max")},
        "train_seconds": {k: summary[k]["train_seconds"] for k in ("median", "min", "max")},
    }


def inference(checkpoints: dict[str, Path], images: np.ndarray, repeats: int = 5) -> list[dict]:
    from fashionclf.inference.classifier import load_classifier

    rows = []
    for name, path in checkpoints.items():
        for backend in ("torch", "onnx"):
            clf = load_classifier(path, backend)
            clf.predict_proba(images[:256])  # warm-up
            rates = []
            for _ in range(repeats):
                t = time.perf_counter()
                for start in range(0, len(images), 256):
                    clf.predict_proba(images[start : start + 256])
                rates.append(len(images) / (time.perf_counter() - t))
            one = images[:1]
            for _ in range(20):
                clf.predict_proba(one)
            lat = []
            for _ in range(300):
                t = time.perf_counter()
                clf.predict_proba(one)
                lat.append(time.perf_counter() - t)
            rows.append({"model": name, "backend": backend, "tta": clf.contract.tta,
                         "images_per_s_batch256": statistics.median(rates),
                         "latency_ms_batch1_p50": 1000 * statistics.median(lat),
                         "latency_ms_batch1_p99": 1000 * float(np.percentile(lat, 99))})
    return rows


def report(r: dict) -> str:
    m = r["machine"]
    lines = ["# fashionclf benchmark", "", "All figures below come from this one run on this one machine"
             + (f"; sections skipped: {', '.join(r['skipped'])}." if r.get("skipped") else "."), "",
             f"Machine: {m['label']}, torch threads {m['torch_threads']}, torch CPU capability {m['torch_cpu_capability']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), ""]
    keras = r.get("keras", {})
    if "skipped" in keras:
        lines += [f"Keras reference: skipped ({keras['skipped']})", ""]
    elif keras:
        lines += ["## Keras reference program (peer, same run)", "",
                  f"test accuracy {keras['test_accuracy']:.4f}, training {keras['train_seconds']:.1f} s, "
                  f"model.predict {keras['predict_images_per_s_batch256']:,.0f} images/s (batch 256), "
                  f"batch-1 latency {keras['latency_ms_batch1_p50']:.2f} ms; versions {keras['versions']}", ""]
    if "fast" in r:
        t = r["fast"]["time_to_accuracy"]
        reached = t["median_seconds"] != float("inf")
        lines += ["## Fast recipe", "", markdown(r["fast"]["summary"]), "",
                  f"Time to {t['target']} test accuracy: "
                  + (f"median {t['median_seconds']:.1f} s" if reached else "not reached by the median run")
                  + f" ({t['runs_reaching']} runs reach it); test accuracy median {t['test_accuracy']['median']:.4f} "
                  f"(min {t['test_accuracy']['min']:.4f}, max {t['test_accuracy']['max']:.4f})."]
        if "train_seconds" in keras and reached:
            lines.append(f"Keras reference training / fast recipe time to accuracy: "
                         f"**{keras['train_seconds'] / t['median_seconds']:.1f}x** (target: 10x).")
        lines.append("")
    if "strong" in r:
        s = r["strong"]
        lines += ["## Strong recipe", "", markdown(s), "",
                  f"Test accuracy median {s['median']['test_accuracy']:.4f} (min {s['min']['test_accuracy']:.4f}, "
                  f"max {s['max']['test_accuracy']:.4f}); training seconds median {s['median']['train_seconds']:.0f}.",
                  ""]
    if r.get("inference"):
        lines += ["## Inference (10,000 test images, preprocessing and TTA included)", "",
                  "| model | backend | TTA | images/s, batch 256 | batch-1 latency p50 / p99 ms | vs Keras predict |",
                  "|---|---|---|---|---|---|"]
        for row in r["inference"]:
            ratio = (f"{row['images_per_s_batch256'] / keras['predict_images_per_s_batch256']:.2f}x"
                     if "predict_images_per_s_batch256" in keras else "n/a")
            lines.append(f"| {row['model']} | {row['backend']} | {row['tta']} | {row['images_per_s_batch256']:,.0f} "
                         f"| {row['latency_ms_batch1_p50']:.3f} / {row['latency_ms_batch1_p99']:.3f} | {ratio} |")
        lines.append("")
    lines += ["Commands: " + "; ".join(f"`{c}`" for c in r["commands"].values()), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fast recipe seeds")
    parser.add_argument("--strong-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip", nargs="*", default=[], choices=("keras", "fast", "strong", "inference"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads everywhere (default: all cores)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = ["--threads", str(args.threads)] if args.threads else []
    # One run, one table: sections skipped this time are left out, never copied from an earlier
    # run (figures from two runs, possibly two machines, are not comparable).
    r: dict = {"machine": machine(), "commands": {}, "skipped": sorted(args.skip)}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(r, indent=2) + "\n")
        (out / "results.md").write_text(report(r))

    if "keras" not in args.skip:
        print("keras reference ...", flush=True)
        r["keras"] = keras_peer(out)
        r["commands"]["keras"] = "python benchmarks/keras_reference.py"
        save()
    for recipe, seeds in (("fast", args.seeds), ("strong", args.strong_seeds)):
        if recipe in args.skip:
            continue
        print(f"{recipe} recipe, seeds {seeds} ...", flush=True)
        summary = run_seeds(["--recipe", recipe, *threads], seeds, out / recipe)
        r["commands"][recipe] = f"fashionclf train --recipe {recipe} --seed S{' ' + ' '.join(threads) if threads else ''}"
        r[recipe] = ({"summary": summary, "time_to_accuracy": time_to_accuracy(summary, REFERENCE_ACCURACY)}
                     if recipe == "fast" else summary)
        save()
    if "inference" not in args.skip:
        print("inference ...", flush=True)
        from helpers import save_untrained_checkpoint

        from fashionclf.data.fashion_mnist import load_dataset

        images = load_dataset(None).test.images
        checkpoints = {f"{recipe} recipe": out / recipe / f"seed-{seeds[0]}" / "model.pt"
                       for recipe, seeds in (("fast", args.seeds), ("strong", args.strong_seeds))
                       if (out / recipe / f"seed-{seeds[0]}" / "model.pt").exists()}
        # The reference network's speed does not depend on its weights: an untrained copy will do.
        ref = out / "one-block-cnn-untrained.pt"
        save_untrained_checkpoint(ref, "one-block-cnn")
        r["inference"] = inference({"one-block-cnn (reference net)": ref, **checkpoints}, images)
        save()
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
