"""A checkpoint's ONNX graphs on disk, reached without torch: ``graph_bytes(checkpoint)``.

``predict`` and ``serve`` run a model.pt through ONNX Runtime by default. Exporting the graph
needs torch (``export.onnx_bytes``: seconds, and about 400 MB of memory that a serving process
would then hold for ever); running it does not. So the graph is exported once and kept beside
the checkpoint as ``.<stem>.<key>.onnx`` (``cache_file``: the key hashes the checkpoint's bytes,
the fashionclf version and the opset, so a changed checkpoint or fashionclf exports anew), and
a process without torch that finds no such file has a child process export it
(``python -m fashionclf.inference.export``), then reads the bytes: the serving process itself
never imports torch, even at the first start of a fresh model.pt.

This module imports no torch and nothing of fashionclf but the shared modules.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from fashionclf._version import __version__
from fashionclf.errors import UsageError

OPSET = 18  # the first opset whose Resize has the antialias attribute mobilenet_v2's resize needs
METADATA_KEY = "fashionclf"  # the graph's metadata entry holding the checkpoint's facts (classes, contract, ...)
GRAPH_FORMAT = 2  # raised when the graph or its metadata changes (2: the weights' fingerprint): kept graphs go stale
EXPORT_TIMEOUT = 900  # seconds for the child process's export (mobilenet_v2 takes about a minute)


def checkpoint_file(path: str | os.PathLike) -> Path:
    """``path``, or the model.pt in it when it is a run directory."""
    path = Path(path)
    return path / "model.pt" if path.is_dir() and (path / "model.pt").is_file() else path


def cache_file(checkpoint: Path, raw: bytes) -> Path:
    """Where the graph of the checkpoint file ``checkpoint`` (whose bytes are ``raw``) is kept."""
    key = hashlib.sha256(raw + f"fashionclf {__version__} opset {OPSET} {GRAPH_FORMAT}".encode()).hexdigest()[:16]
    return checkpoint.parent / f".{checkpoint.stem}.{key}.onnx"


def graph_bytes(checkpoint: str | os.PathLike) -> bytes:
    """The ONNX graph of ``checkpoint`` (model.pt or its run folder): the file kept beside it,
    else exported by a child process (which also keeps the file, where the folder can be
    written to). A process that has torch loaded anyway calls ``export.cached_onnx_bytes``."""
    path = checkpoint_file(checkpoint)
    try:
        cached = cache_file(path, path.read_bytes())
        if cached.is_file():
            return cached.read_bytes()
    except OSError:
        pass  # the export says what is wrong with the path, in one line
    return export_in_child(path)


def export_in_child(path: Path) -> bytes:
    """The graph of ``path`` exported by ``python -m fashionclf.inference.export PATH`` in a child
    process (which loads torch, and gives its memory back when it exits); its one-line error
    becomes this process's ``UsageError``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                      os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run([sys.executable, "-m", "fashionclf.inference.export", str(path)], capture_output=True,
                              env=env, timeout=EXPORT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise UsageError(f"exporting {path} to ONNX took over {EXPORT_TIMEOUT} s; "
                         f"run 'fashionclf export {path}' and serve the model.onnx it writes") from None
    if done.returncode != 0 or not done.stdout:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {done.returncode}"]
        raise UsageError(lines[-1].removeprefix("error: "))
    return done.stdout
