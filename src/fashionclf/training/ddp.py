"""Data-parallel training with torchrun: ``torchrun --nproc-per-node N -m fashionclf train ...``
(or ``fashionclf train --nproc N`` on one machine; ``--nnodes``/``--rdzv-endpoint`` across
machines).

Every rank holds the whole (in-memory) training set and draws the same seeded permutation
each epoch; a global batch of ``--batch-size`` images (global, not per rank: the same
setting gives the same optimisation whatever the number of processes) is cut into one
shard per rank, ``batch[rank::world_size]``, so the ranks together see every image exactly
once an epoch. DistributedDataParallel averages the gradients (gloo on CPU, NCCL on CUDA),
so the weights stay identical on every rank; BatchNorm buffers are broadcast from rank 0.
Every rank validates (the same figures); rank 0 alone writes the run folder and checkpoints,
so ``--resume DIR`` works as in a one-process run (every rank reads DIR's last.pt).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fashionclf.errors import UsageError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch(nproc: int, argv: list[str]) -> int:
    """``fashionclf train --nproc N ...``: the same command under torchrun with N processes on
    this machine (``--nproc`` left out); returns torchrun's exit status."""
    import subprocess
    import sys

    rest, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--nproc="):
            skip = False
        elif arg == "--nproc":
            skip = True
        else:
            rest.append(arg)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", "-m", "fashionclf", *rest]).returncode


def from_env() -> World:
    """The torchrun world of this process (one process, no backend, outside torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")),
                 int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def start(world: World, device: torch.device) -> tuple[World, torch.device]:
    """Join the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank)."""
    if world.size == 1:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return World(world.rank, world.size, world.local_rank, world.local_size, backend), device


def check_batch(batch_size: int, world: World) -> None:
    if batch_size % world.size:
        raise UsageError(f"--batch-size {batch_size} is the global batch and must divide into {world.size} equal "
                         f"shards, one per process; use a multiple of {world.size}")


def shard(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's share of one global batch."""
    return indices if world.size == 1 else indices[world.rank :: world.size]


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel when there are several ranks (built per phase:
    DDP fixes the set of trained parameters when it is made)."""
    if world.size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(*values: torch.Tensor) -> None:
    """Sum tensors over the ranks, in place (the epoch's loss and accuracy counts)."""
    if dist.is_initialized():
        for v in values:
            dist.all_reduce(v)


def broadcast_int(value: int, world: World) -> int:
    """Rank 0's ``value`` on every rank (e.g. the epochs a time budget buys)."""
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.long)
    dist.broadcast(t, 0)
    return int(t.item())


def finish(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
