"""One interface over the two inference backends: a ``Classifier`` maps uint8 ``(N, 28, 28)``
images to ``(N, k)`` class probabilities, through PyTorch or ONNX Runtime.

``load_classifier(path, backend)``: ``path`` is a checkpoint (model.pt or its run directory)
or an ONNX file written by ``fashionclf export``; ``backend`` is ``torch``, ``onnx`` or
``auto`` (the file's own kind). A checkpoint asked for with ``backend="onnx"`` is exported in
memory first. Both backends compute the same function: the checkpoint's preprocessing and
test-time augmentation, then a softmax (``fashionclf export`` reports the largest difference).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

BACKENDS = ("auto", "torch", "onnx")


class Classifier:
    """What predict and serve need: class names, the input contract and probabilities."""

    backend: str
    classes: list[str]
    info: dict  # model name, preprocessing, accuracy where known

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TorchClassifier(Classifier):
    backend = "torch"

    def __init__(self, ckpt: dict, device: str = "cpu"):
        from .checkpoint import model_from_checkpoint

        self.model = model_from_checkpoint(ckpt).to(device)
        self.device = device
        self.classes = list(ckpt["classes"])
        self.preprocessing = dict(ckpt["preprocessing"])
        self.info = model_info(ckpt)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        from .evaluate import predict_logits

        logits = predict_logits(self.model, torch.from_numpy(np.ascontiguousarray(images)), self.preprocessing,
                                self.device)
        return torch.softmax(logits, 1).numpy()


class OnnxClassifier(Classifier):
    backend = "onnx"

    def __init__(self, model_bytes: bytes, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError("the onnx backend needs onnxruntime: pip install onnxruntime "
                             "(or use --backend torch)") from None
        import onnx

        meta = {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}
        if "fashionclf" not in meta:
            raise UsageError("this ONNX file was not written by 'fashionclf export' (no fashionclf metadata); "
                             "export the checkpoint with 'fashionclf export MODEL.pt'")
        self.info = json.loads(meta["fashionclf"])
        self.classes = self.info["classes"]
        self.preprocessing = self.info["preprocessing"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.empty((0, len(self.classes)), np.float32)
        return self.session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8)})[0]


def model_info(ckpt: dict) -> dict:
    """The facts about a checkpoint that a client of predict/serve may want."""
    metrics = ckpt.get("metrics") or {}
    return {
        "model": ckpt["model"]["name"],
        "classes": list(ckpt["classes"]),
        "preprocessing": dict(ckpt["preprocessing"]),
        "test_accuracy": metrics.get("test_accuracy"),
        "input": {"dtype": "uint8", "shape": ["N", 28, 28],
                  "polarity": "light garment on a dark background, as Fashion-MNIST"},
    }


def load_classifier(path: str | os.PathLike, backend: str = "auto", device: str = "cpu",
                    threads: int | None = None) -> Classifier:
    """``threads``: ONNX Runtime's intra-op threads (default: torch's thread count)."""
    from .checkpoint import load_checkpoint

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise UsageError(f"{path} is an ONNX file; the torch backend needs the model.pt it was exported from")
        if not path.is_file():
            raise UsageError(f"ONNX model {path} not found; write one with 'fashionclf export MODEL.pt'")
        return OnnxClassifier(path.read_bytes(), threads)
    ckpt = load_checkpoint(path)
    if backend == "onnx":
        from .export import export_onnx_bytes

        return OnnxClassifier(export_onnx_bytes(ckpt), threads)
    if threads:
        torch.set_num_threads(threads)
    return TorchClassifier(ckpt, device)
