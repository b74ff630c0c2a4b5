"""How close training runs to this CPU's arithmetic peak, and which settings pay on it.

    python benchmarks/flops.py [--models fast-cnn strong-cnn] [--steps 30] [--compile]

Measures, on this machine: the fp32 (and bf16) matrix-product peak, 2048 x 2048 with torch's
threads; then for each recipe model one training step at its recipe's batch size (forward,
backward, SGD step, no augmentation): milliseconds per step and GFLOP/s (FLOPs counted by
``torch.utils.flop_counter`` for forward + backward), in fp32 and bf16 autocast, with the
weights and inputs in channels-last memory format or not, and optionally under
``torch.compile``. Medians of ``--steps`` steps after 5 untimed ones.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def median_seconds(fn, steps: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), 10) / 1e9


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(name: str, batch: int, steps: int, bf16: bool, channels_last: bool, compiled: bool) -> dict:
    from fashionclf.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    flops = step_flops(model, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    forward = torch.compile(model) if compiled else model

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = median_seconds(step, steps)
    return {"model": name, "batch": batch, "precision": "bf16" if bf16 else "fp32", "channels_last": channels_last,
            "compiled": compiled, "ms_per_step": 1000 * seconds, "gflops": flops / seconds / 1e9,
            "mflop_per_image": flops / batch / 1e6}


def main() -> int:
    from fashionclf.device import cpu_info, native_bf16
    from fashionclf.training.recipes import RECIPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fast-cnn", "strong-cnn"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    args = parser.parse_args()
    bf16_native = native_bf16(torch.device("cpu"))
    print(f"CPU: {cpu_info()['label']}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"matrix product 2048x2048: fp32 {matmul_peak(torch.float32):.0f} GFLOP/s"
          + (f", bf16 {matmul_peak(torch.bfloat16):.0f} GFLOP/s" if bf16_native else " (no hardware bf16)") + "\n")
    batch_of = {r["model"]: r["batch_size"] for r in RECIPES.values() if "model" in r}
    print("| model | batch | precision | channels-last | compiled | ms/step | GFLOP/s | MFLOP/image (fwd+bwd) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for bf16 in ([False, True] if bf16_native else [False]):
            for channels_last in (True, False):
                for compiled in ([False, True] if args.compile else [False]):
                    r = measure(name, batch_of.get(name, 128), args.steps, bf16, channels_last, compiled)
                    print(f"| {r['model']} | {r['batch']} | {r['precision']} | {'yes' if channels_last else 'no'} | "
                          f"{'yes' if compiled else 'no'} | {r['ms_per_step']:.1f} | {r['gflops']:.0f} | "
                          f"{r['mflop_per_image']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
