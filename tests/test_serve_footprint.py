"""What a serving process holds: no torch while it serves an ONNX graph (the graph of a fresh
model.pt exported by a child process), torch only once /explain is called."""

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import catalogue_photo, dataset_like_image, save_untrained_checkpoint, server_process

pytestmark = pytest.mark.slow  # starts servers

IDLE_MB = 200  # a serving process's resident memory when idle, at most


def mapped(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


def resident_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")
def test_a_fresh_checkpoint_is_served_without_torch_until_explain_is_called(tmp_path):
    model = save_untrained_checkpoint(tmp_path / "model.pt")
    assert not list(tmp_path.glob(".*.onnx"))  # nothing exported yet
    photo = catalogue_photo(dataset_like_image(), np.random.default_rng(0))
    with server_process(model) as (url, proc):
        assert list(tmp_path.glob(".model.*.onnx"))  # the child process kept the graph beside the model
        answer = httpx.post(url + "/predict", files={"file": ("a.jpg", photo)}, timeout=30)
        assert answer.status_code == 200 and answer.json()[0]["label"]
        assert httpx.get(url + "/model").json()["graph"] == "fp32"
        assert not mapped(proc.pid, "libtorch"), "the ONNX serving process loaded torch"
        assert resident_mb(proc.pid) <= IDLE_MB
        heatmap = httpx.post(url + "/explain", files={"file": ("a.jpg", photo)}, timeout=120)
        assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"
        assert mapped(proc.pid, "libtorch")  # /explain needs the network, and loads torch for it


def test_a_bad_checkpoint_fails_the_child_export_with_one_line(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    done = subprocess.run([sys.executable, "-m", "fashionclf", "serve", str(bad), "--port", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "not a readable checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_the_graph_is_reused_not_exported_again(tmp_path):
    from fashionclf.inference.graphs import cache_file, graph_bytes

    model = save_untrained_checkpoint(tmp_path / "model.pt")
    first = graph_bytes(model)  # exported by a child process
    cached = cache_file(model, model.read_bytes())
    assert cached.read_bytes() == first
    cached.write_bytes(b"kept")
    assert graph_bytes(model) == b"kept"  # the kept file is what the next start reads: no export
    shutil.copy(model, tmp_path / "copy.pt")  # another name, the same bytes: exported for its own name
    assert graph_bytes(tmp_path / "copy.pt")[:64] == first[:64] and list(tmp_path.glob(".copy.*.onnx"))
