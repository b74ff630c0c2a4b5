"""fashionclf predict --dask: a real local Dask cluster gives a local run's rows, in order, even
when a worker is killed mid-run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import catalogue_photo, dataset_like_image, hostile_files, save_untrained_checkpoint

from fashionclf.cli import main

pytest.importorskip("distributed", reason="--dask needs the 'scale' extra (make test installs it)")
pytestmark = pytest.mark.slow  # starts clusters of worker processes


def photo_folder(folder: Path, count: int, bad: bool = True) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = dataset_like_image()
    for i in range(count):
        (folder / f"{i:05d}.jpg").write_bytes(catalogue_photo(np.roll(base, i % 7, axis=1), rng, "jpeg"))
    if bad:
        for name, (data, _) in hostile_files().items():
            (folder / name).write_bytes(data)
    return folder


def test_dask_rows_equal_a_local_runs_rows_in_order(tmp_path, capsys):
    model = save_untrained_checkpoint(tmp_path / "model.pt")
    folder = photo_folder(tmp_path / "photos", 600)  # three chunks, and every kind of bad file
    rc_local = main(["predict", str(model), str(folder), "--format", "json", "--backend", "onnx"])
    local = json.loads(capsys.readouterr().out)
    rc_dask = main(["predict", str(model), str(folder), "--format", "json", "--dask", "local:2"])
    remote = json.loads(capsys.readouterr().out)
    assert rc_local == rc_dask == 1  # some inputs failed, in both
    assert len(local) > 600 and sum(bool(r["error"]) for r in local) == len(local) - 600  # the bad files walked
    assert [(r["path"], r["label"], r["error"]) for r in remote] == [(r["path"], r["label"], r["error"]) for r in local]
    np.testing.assert_allclose([r["confidence"] or 0 for r in remote], [r["confidence"] or 0 for r in local], atol=1e-6)


def test_bad_dask_addresses_are_usage_errors(tmp_path, capsys):
    model = save_untrained_checkpoint(tmp_path / "model.pt")
    folder = photo_folder(tmp_path / "photos", 2, bad=False)
    assert main(["predict", str(model), str(folder), "--dask", "local:zero"]) == 2
    assert "local:N takes a number" in capsys.readouterr().err
    assert main(["predict", str(model), str(folder), "--dask", "tcp://127.0.0.1:9"]) == 2
    assert "no Dask scheduler answers" in capsys.readouterr().err


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_a_worker_killed_mid_run_loses_no_row_and_repeats_none(tmp_path):
    model = save_untrained_checkpoint(tmp_path / "model.pt")
    folder = photo_folder(tmp_path / "photos", 4000, bad=False)
    out = tmp_path / "tags.csv"
    proc = subprocess.Popen([sys.executable, "-m", "fashionclf", "predict", str(model), str(folder), "--dask", "local:2",
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    partial = tmp_path / f".tags.csv.{proc.pid}.tmp"
    for _ in range(1200):  # until the first rows are written: the workers are busy
        if partial.exists() and partial.stat().st_size > 1000:
            break
        time.sleep(0.05)
    # LocalCluster's nannies live in the client process; each worker is a spawned child process
    workers = [p for p in _descendants(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert proc.poll() is None and workers, "the run ended before a worker could be killed"
    os.kill(workers[-1], signal.SIGKILL)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log
    rows = list(csv.DictReader(open(out)))
    assert [r["path"] for r in rows] == [str(p) for p in sorted(folder.glob("*.jpg"))]  # each once, in order
    assert all(r["label"] and not r["error"] for r in rows)
