"""Training and inference cost of registered models on the real data, per input size.

    python benchmarks/speed.py [--models one-block-cnn two-block-cnn] [--threads 2] [--repeats 3]
    python benchmarks/speed.py --models mobilenet_v2 --image-sizes 32 64 96 128 224 \\
        --classes tshirt,sneaker,bag --batch-size 64 --train-images 1024 --test-images 1024 --in-chans 3 1

Training: seconds per epoch over the (subset's) training images, extrapolated from
``--train-images`` (the whole training loop: slicing, augmentation, preprocessing, forward,
backward, step), and the share of it spent preparing batches (augmentation + preprocessing).
Inference: images/s through ``predict_logits`` at batch 256. Medians of ``--repeats``.
Prints a Markdown table; ``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from fashionclf.data.fashion_mnist import load_dataset, make_splits
from fashionclf.models import create_model, get_model_entry, list_models
from fashionclf.models.contract import predict_logits
from fashionclf.training.config import parse_augment
from fashionclf.training.loop import TrainStep, make_prepare, train_one_epoch


def measure(name: str, size: int, in_chans: int, args, data, num_classes: int, cpu: torch.device) -> dict:
    entry = get_model_entry(name)
    prep = entry.contract.replace(image_size=size)
    if in_chans != prep.channels:  # a grey input contract: one channel, the mean of the ImageNet stats
        prep = prep.replace(channels=in_chans, mean=(statistics.fmean(prep.mean),), std=(statistics.fmean(prep.std),))
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    prepare = make_prepare(prep, parse_augment(args.augment), g)
    n, total = min(args.train_images, len(data.train_x)), len(data.train_x)
    x, y = data.train_x[:n], data.train_y[:n]
    test = data.test_x[: args.test_images]
    epoch_s, prep_share, ips = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        train_one_epoch(TrainStep(model=model, optimizer=opt, prepare=prepare, device=cpu), x, y, args.batch_size, g)
        epoch_s.append((time.perf_counter() - t) * total / n)
        t = time.perf_counter()
        for start in range(0, n, args.batch_size):
            prepare(x[start : start + args.batch_size])
        prep_share.append((time.perf_counter() - t) * total / n / epoch_s[-1])
        t = time.perf_counter()
        predict_logits(model, test, prep, batch_size=256)
        ips.append(len(test) / (time.perf_counter() - t))
    return {"model": name, "image_size": size, "in_chans": in_chans, "train_images": total,
            "epoch_seconds": statistics.median(epoch_s), "prepare_share": statistics.median(prep_share),
            "predict_images_per_s": statistics.median(ips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[m for m in list_models() if m.endswith("cnn")])
    parser.add_argument("--image-sizes", type=int, nargs="+", help="default: each model's own")
    parser.add_argument("--in-chans", type=int, nargs="+", help="default: each model's own")
    parser.add_argument("--classes", help="class subset, e.g. tshirt,sneaker,bag")
    parser.add_argument("--augment", default="none")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(classes=args.classes)
    data = make_splits(dataset, 0.1, 0)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"batch {args.batch_size}, augment {args.augment}")
    print("| model | input | s/epoch (train) | of which preparing batches | predict images/s (batch 256) |")
    print("|---|---|---|---|---|")
    rows = []
    for name in args.models:
        entry = get_model_entry(name)
        for size in args.image_sizes or [entry.input_size]:
            for chans in args.in_chans or [entry.contract.channels]:
                r = measure(name, size, chans, args, data, len(dataset.classes), cpu)
                rows.append(r)
                print(f"| {name} | {size}x{size}x{chans} | {r['epoch_seconds']:.1f} ({r['train_images']:,} images) "
                      f"| {r['prepare_share']:.1%} | {r['predict_images_per_s']:,.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "torch": str(torch.__version__), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
