"""``fashionclf export MODEL.pt --output model.onnx``: the whole inference function in one
ONNX graph, checked against PyTorch.

The graph takes what predict reads, uint8 images ``images: (N, 28, 28)``, and returns
``probabilities: (N, k)``: the checkpoint's preprocessing (scaling, channel repeat, resize,
normalisation), the model, its test-time augmentation and the softmax are all inside, so
an ONNX Runtime client needs no fashionclf code. The checkpoint's facts (classes,
preprocessing, model name, test accuracy) travel in the file's metadata under "fashionclf".
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, model_from_checkpoint, write_atomic
from .transforms import preprocess

OPSET = 18  # the first opset whose Resize has the antialias attribute mobilenet_v2's resize needs
PARITY_TOLERANCE = 1e-4  # largest acceptable |p_onnx - p_torch| over the check images


class ProbabilityModel(nn.Module):
    """uint8 images -> class probabilities, exactly as ``predict_logits`` + softmax."""

    def __init__(self, model: nn.Module, preprocessing: dict):
        super().__init__()
        self.model = model.eval()
        self.preprocessing = dict(preprocessing)
        self.flip = preprocessing.get("tta", "none") == "flip"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images, self.preprocessing)
        logits = self.model(x)
        if self.flip:
            logits = (logits + self.model(x.flip(-1))) / 2
        return torch.softmax(logits, 1)


def export_onnx_bytes(ckpt: dict) -> bytes:
    """The checkpoint's ``ProbabilityModel`` as ONNX bytes, with fashionclf metadata."""
    import onnx

    from .inference import model_info

    wrapper = ProbabilityModel(model_from_checkpoint(ckpt), ckpt["preprocessing"])
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals, not the user's concern
        torch.onnx.export(wrapper, (example,), buf, input_names=["images"], output_names=["probabilities"],
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=OPSET, dynamo=True, verbose=False)
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fashionclf", json.dumps(model_info(ckpt))
    proto.producer_name = "fashionclf"
    return proto.SerializeToString()


def check_images(count: int = 1000, data_dir: str | None = None) -> tuple[np.ndarray, str]:
    """Test images for the parity check; seeded random images if the data is not at hand."""
    from .data import find_data, load_dataset
    from .errors import DataError

    try:
        find_data(data_dir, download=False)
        return load_dataset(data_dir, verify=False).test.images[:count], f"{count} test images"
    except DataError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), f"{count} random images (no data found)"


def export_onnx(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None,
                data_dir: str | None = None, check_count: int = 1000) -> dict:
    """Export ``checkpoint`` to ``output`` (default: next to it, ``model.onnx``), written
    atomically; then run both backends on the same images and report their agreement."""
    from .inference import OnnxClassifier, TorchClassifier

    ckpt = load_checkpoint(checkpoint)
    start = time.perf_counter()
    data = export_onnx_bytes(ckpt)
    seconds = time.perf_counter() - start
    src = Path(checkpoint)
    output = Path(output) if output else (src if src.is_dir() else src.parent) / "model.onnx"
    write_atomic(output, lambda f: f.write(data))

    images, what = check_images(check_count, data_dir)
    p_torch = TorchClassifier(ckpt).predict_proba(images)
    p_onnx = OnnxClassifier(data).predict_proba(images)
    max_diff = float(np.abs(p_torch - p_onnx).max())
    return {
        "output": str(output),
        "bytes": len(data),
        "export_seconds": seconds,
        "opset": OPSET,
        "checked_on": what,
        "max_abs_diff": max_diff,
        "argmax_agreement": float((p_torch.argmax(1) == p_onnx.argmax(1)).mean()),
        "parity": "ok" if max_diff <= PARITY_TOLERANCE else "failed",
        "tolerance": PARITY_TOLERANCE,
    }
