"""Data-parallel training under torchrun: two CPU processes (gloo) on one machine."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from fashionclf.training.ddp import World, shard


def test_the_ranks_shards_cover_every_batch_exactly_once():
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    for start in range(0, 1000, 64):
        batch = order[start : start + 64]
        parts = [shard(batch, World(rank, 2)) for rank in range(2)]
        assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())
        assert abs(len(parts[0]) - len(parts[1])) <= 1
    assert torch.equal(shard(order, World()), order)


def _train(args, nproc=None):
    """A training command, under torchrun when nproc is given; on a hang, its ranks die with it."""
    import os
    import signal

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "fashionclf", "train", *args] if nproc else [sys.executable, "-m", "fashionclf", "train", *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(cmd)} hung for 300 s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_two_processes_train_like_one_write_once_and_resume(tiny_data, tmp_path):
    common = ["--model", "fast-cnn", "--data", str(tiny_data), "--no-verify", "--batch-size", "32", "--seed", "1",
              "--precision", "fp32", "--lr", "3e-3", "--optimizer", "adamw"]
    two = _train([*common, "--epochs", "2", "--out", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stdout + two.stderr
    one = _train([*common, "--epochs", "3", "--threads", "1", "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert (config["world_size"], config["backend"]) == (2, "gloo")
    assert sum("epoch   1/2" in line for line in two.stdout.splitlines()) == 1  # one voice: rank 0's
    assert not list((tmp_path / "two").glob(".*.tmp"))
    # --resume with a longer run continues from last.pt on both ranks
    more = _train(["--resume", str(tmp_path / "two"), "--epochs", "3"], nproc=2)
    assert more.returncode == 0, more.stdout + more.stderr
    rows = list(csv.DictReader(open(tmp_path / "two" / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m1["world_size"] == 1
    assert abs(m2["val_accuracy"] - m1["val_accuracy"]) <= 0.05  # the same global batch, seed and epochs


@pytest.mark.slow
def test_kill_9_of_a_two_process_run_mid_epoch_then_resume_ends_as_an_uninterrupted_run(tmp_path):
    """SIGKILL to torchrun and both ranks in the second epoch (a machine lost); --resume under
    torchrun then ends with the figures and weights of a two-process run never killed."""
    import os
    import signal
    import time

    from helpers import make_dataset

    from fashionclf.inference.checkpoint import load_checkpoint

    data = make_dataset(tmp_path / "idx", n_train=4000, n_test=200)
    args = ["--model", "fast-cnn", "--data", str(data), "--no-verify", "--epochs", "3", "--batch-size", "16",
            "--seed", "5", "--augment", "flip,shift", "--precision", "fp32"]
    full = _train([*args, "--out", str(tmp_path / "full")], nproc=2)
    assert full.returncode == 0, full.stdout + full.stderr
    part = tmp_path / "part"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "fashionclf", "train", *args, "--out", str(part)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not (part / "history.csv").exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.3)  # into the second epoch
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rows = lambda d: [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(d / "history.csv"))]
    assert len(rows(part)) == 1  # killed after the first epoch, before the second ended
    from fashionclf.training.rundir import RunBusy, claim

    for _ in range(1200):  # the orphaned ranks notice torchrun is gone, end, and let go of the folder
        try:
            with claim(part, resume=True):
                break
        except RunBusy:
            time.sleep(0.1)
    more = _train(["--resume", str(part)], nproc=2)
    assert more.returncode == 0, more.stdout + more.stderr
    assert "resuming" in more.stdout
    assert rows(tmp_path / "full") == rows(part)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "full", part))
    assert (a["test_accuracy"], a["test_loss"], a["world_size"]) == (b["test_accuracy"], b["test_loss"], 2)
    x, y = load_checkpoint(tmp_path / "full"), load_checkpoint(part)
    assert all(torch.equal(x.state_dict[k], y.state_dict[k]) for k in x.state_dict)


@pytest.mark.slow
def test_nproc_launches_torchrun_for_this_machine(tiny_data, tmp_path):
    r = subprocess.run([sys.executable, "-m", "fashionclf", "train", "--nproc", "2", "--model", "fast-cnn", "--data",
                        str(tiny_data), "--no-verify", "--epochs", "1", "--batch-size", "31", "--out",
                        str(tmp_path / "x")], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "--batch-size 31 is the global batch" in r.stderr + r.stdout
    r = subprocess.run([sys.executable, "-m", "fashionclf", "train", "--nproc", "2", "--model", "fast-cnn", "--data",
                        str(tiny_data), "--no-verify", "--epochs", "1", "--batch-size", "32", "--out",
                        str(tmp_path / "x")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "x" / "metrics.json").read_text())["world_size"] == 2


def _one_step(rank: int, port: int, out: str) -> None:
    """A rank of a two-process gloo group: one train_one_epoch step of fast-cnn on its shard."""
    import os

    import torch.distributed as dist

    from fashionclf.models import create_model
    from fashionclf.training import ddp
    from fashionclf.training.loop import TrainStep, train_one_epoch

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world, device = ddp.start(ddp.from_env(), torch.device("cpu"))
    torch.manual_seed(rank)  # different starts on purpose: DDP must hand rank 0's weights to rank 1
    model = create_model("fast-cnn", num_classes=10)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (64,), generator=gen)
    step = TrainStep(ddp.wrap(model, world, device), torch.optim.SGD(model.parameters(), lr=0.1),
                     lambda x: x.float().unsqueeze(1) / 255, device, world=world)
    stats = train_one_epoch(step, images, labels, 64, torch.Generator().manual_seed(1))
    torch.save({"state": model.state_dict(), "stats": stats}, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_after_one_step_the_ranks_hold_identical_weights(tmp_path):
    import torch.multiprocessing as mp
    from helpers import free_port

    mp.spawn(_one_step, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for key in a["state"]:
        if "running" in key or "num_batches" in key:  # BatchNorm's statistics: each rank's own batches
            continue
        torch.testing.assert_close(a["state"][key], b["state"][key], rtol=0, atol=0)
    assert a["stats"]["loss"] == b["stats"]["loss"]  # the epoch's figures are summed over both shards
