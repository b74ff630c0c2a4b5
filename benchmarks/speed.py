"""Training and inference speed of every registered model on the real data.

    python benchmarks/speed.py [--threads 2] [--repeats 3]

Training: seconds for one epoch of 60,000 images (extrapolated from --train-images),
median of --repeats. Inference: images/s through ``predict_logits`` at batch 256, median
of --repeats. Compare with the Keras figures in the README (same machine, same run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fashionclf.data import load_dataset
from fashionclf.evaluate import predict_logits
from fashionclf.models import create_model, get_model_entry, list_models
from fashionclf.train import train_one_epoch
from fashionclf.transforms import GREY_28


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--models", nargs="+", default=list_models())
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset()
    x, y = torch.from_numpy(ds.train.images), torch.from_numpy(ds.train.labels)
    test = torch.from_numpy(ds.test.images)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print("| model | s/epoch (60k, train) | predict images/s (batch 256) |")
    print("|---|---|---|")
    for name in args.models:
        prep = dict(GREY_28, image_size=get_model_entry(name).input_size)
        torch.manual_seed(0)
        model = create_model(name)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        g = torch.Generator().manual_seed(0)
        n = args.train_images
        epoch_s, ips = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            train_one_epoch(model, opt, x[:n], y[:n], args.batch_size, g, prep, torch.device("cpu"))
            epoch_s.append((time.perf_counter() - t) * len(x) / n)
            t = time.perf_counter()
            predict_logits(model, test, prep, batch_size=256)
            ips.append(len(test) / (time.perf_counter() - t))
        print(f"| {name} | {statistics.median(epoch_s):.1f} | {statistics.median(ips):,.0f} |")


if __name__ == "__main__":
    main()
