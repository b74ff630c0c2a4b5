"""ONNX conversion: a checkpoint's whole inference function as one ONNX graph.

The graph is ``fashionclf.models.contract.ServingNet``: it takes what predict reads, uint8 images
``images: (N, 28, 28)``, and returns ``probabilities: (N, k)`` (calibrated) and ``score: (N,)``
(below the threshold in the metadata's ``unknown``: an item of none of the classes), with the
checkpoint's preprocessing, the model and its test-time augmentation inside, so an ONNX
Runtime client needs no fashionclf code. The checkpoint's facts (classes,
preprocessing, model name, test accuracy) travel in the file's metadata under "fashionclf".
``fashionclf.inference.classifier.check_parity`` compares the graph with PyTorch.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from fashionclf.errors import FashionclfError, UsageError
from fashionclf.fileio import write_bytes_atomic
from fashionclf.inference.checkpoint import Checkpoint, load_checkpoint
from fashionclf.inference.graphs import METADATA_KEY, OPSET, cache_file, checkpoint_file


def onnx_bytes(ckpt: Checkpoint) -> bytes:
    """The checkpoint's ``ServingNet`` as ONNX bytes, with fashionclf metadata."""
    import onnx

    net = ckpt.serving_net()
    example = torch.zeros(2, *ckpt.contract.source_shape, dtype=torch.uint8)
    names = output_names(ckpt)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals, not the user's concern
        torch.onnx.export(net, (example,), buf, input_names=["images"], output_names=names,
                          dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          opset_version=OPSET, dynamo=True, verbose=False)
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(ckpt.info())
    proto.producer_name = "fashionclf"
    return proto.SerializeToString()


def output_names(ckpt: Checkpoint) -> list[str]:
    """The graph's outputs: ``probabilities`` and ``score``; a model of several attributes has
    one output per attribute, ``attribute:<name>``, then ``score``."""
    if ckpt.attributes is None:
        return ["probabilities", "score"]
    return [f"attribute:{name}" for name in ckpt.attributes.names] + ["score"]


def cached_onnx_bytes(checkpoint: str | os.PathLike) -> bytes:
    """The checkpoint's ONNX graph, exported once and then read from a file beside it
    (``graphs.cache_file``; older cache files of the same checkpoint name are removed).
    Exporting takes seconds to minutes, reading milliseconds: this is what lets ``serve`` and
    ``predict --backend onnx`` start at once. A folder that cannot be written to only means
    exporting every time."""
    path = checkpoint_file(checkpoint)
    try:
        raw = path.read_bytes()
    except OSError:
        return onnx_bytes(load_checkpoint(path))  # load_checkpoint says what is wrong, in one line
    cache = cache_file(path, raw)
    if cache.is_file():
        return cache.read_bytes()
    data = onnx_bytes(load_checkpoint(path))
    try:
        write_bytes_atomic(cache, data)
        for stale in path.parent.glob(f".{path.stem}.*.onnx"):
            if stale != cache:
                stale.unlink(missing_ok=True)
    except (OSError, UsageError):
        pass
    return data


def export_onnx(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None) -> dict:
    """Export ``checkpoint`` to ``output`` (default: ``model.onnx`` beside it), written
    atomically; return what was written, with the checkpoint and the bytes."""
    ckpt = load_checkpoint(checkpoint)
    start = time.perf_counter()
    data = onnx_bytes(ckpt)
    seconds = time.perf_counter() - start
    src = Path(checkpoint)
    output = Path(output) if output else (src if src.is_dir() else src.parent) / "model.onnx"
    write_bytes_atomic(output, data)
    return {"output": str(output), "bytes": len(data), "export_seconds": seconds, "opset": OPSET,
            "checkpoint": ckpt, "onnx": data}


def main(argv: list[str]) -> int:
    """``python -m fashionclf.inference.export MODEL.pt``: the checkpoint's graph on stdout (kept
    beside it too, where possible): ``graphs.export_in_child`` runs this, so that a serving
    process never loads torch. An error is one line on stderr, exit status 2."""
    try:
        data = cached_onnx_bytes(argv[0])
    except FashionclfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
