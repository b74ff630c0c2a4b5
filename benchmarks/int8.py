"""int8 against fp32 for every registered model, on the CPU at hand: does ``export --int8`` pay?

    python benchmarks/int8.py [--checkpoint NAME=MODEL.pt ...] [--rounds 7] [--json FILE]

For each registered model: its ONNX graph (from ``--checkpoint`` where given, trained, so that
accuracy can be compared on Fashion-MNIST's test split; else freshly initialised, speed only),
quantized as ``export --int8`` does (``quantize.quantize_int8``, calibrated on 1,000 training
images, or on random images for a colour model without its photos), both graphs timed in turns
at a large batch and at batch 1, with two ONNX Runtime threads, as ``export --int8`` compares
them (``quantize.compare_int8``); where int8 is not 1.05x as fast at both, the reason from the
operator profile.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py: untrained checkpoints


def graphs(name: str, checkpoint: str | None, tmp: Path, dataset) -> tuple[bytes, bytes, np.ndarray, np.ndarray | None]:
    """(fp32 bytes, int8 bytes, test images, their labels or None) for one model."""
    from helpers import save_untrained_checkpoint

    from fashionclf.inference.checkpoint import load_checkpoint
    from fashionclf.inference.export import onnx_bytes
    from fashionclf.inference.quantize import calibration_images, quantize_int8

    path = checkpoint or save_untrained_checkpoint(tmp / f"{name}.pt", name)
    ckpt = load_checkpoint(path)
    fp32 = onnx_bytes(ckpt)
    if ckpt.contract.source == "grey":
        images, labels = dataset.test.images[:2048], (dataset.test.labels[:2048] if checkpoint else None)
        calibration = calibration_images(dataset)
    else:  # a colour model: random photos of its input size (speed only)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (128, *ckpt.contract.source_shape), dtype=np.uint8)
        calibration, labels = images[:64], None
    return fp32, quantize_int8(fp32, calibration), images, labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=MODEL.pt",
                        help="a trained checkpoint for a registered model (accuracy compared too)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    from fashionclf.data.fashion_mnist import load_dataset
    from fashionclf.device import cpu_info
    from fashionclf.inference.classifier import OnnxClassifier
    from fashionclf.inference.quantize import compare_int8
    from fashionclf.models import list_models

    torch.set_num_threads(args.threads)
    given = dict(item.split("=", 1) for item in args.checkpoint)
    dataset = load_dataset(None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in list_models():
            fp32, int8, images, labels = graphs(name, given.get(name), Path(tmp), dataset)
            batch = min(256, OnnxClassifier(fp32).contract.eval_batch)
            row = {"model": name, "trained": name in given,
                   **compare_int8(fp32, int8, images, labels, args.threads, args.rounds, batch)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(f"`python benchmarks/int8.py {' '.join('--checkpoint ' + c for c in args.checkpoint)}` "
          f"({cpu_info()['label']}; {args.threads} ONNX Runtime threads)\n")
    print("| model | int8/fp32 images/s, large batch | at batch 1 | test accuracy fp32 → int8 | int8 pays |")
    print("|---|---|---|---|---|")
    for r in rows:
        acc = (f"{r['fp32_accuracy']:.4f} → {r['int8_accuracy']:.4f}" if "fp32_accuracy" in r else "untrained")
        print(f"| {r['model']} | {r['speedup']:.2f}x (batch {r['batch']}) | {r['speedup_single']:.2f}x | {acc} "
              f"| {'yes' if r['pays'] else 'no: ' + r['why_not']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_info(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
