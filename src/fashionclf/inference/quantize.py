"""int8 inference: ``fashionclf export MODEL.pt --int8``.

Static quantization of the exported ONNX graph with ONNX Runtime's tools, in the QDQ format
(QuantizeLinear/DequantizeLinear pairs around the convolutions and matrix products, which
ONNX Runtime fuses into int8 kernels): weights int8 per output channel, activations uint8
with ranges calibrated on training images (the test split is only measured on, never used to
choose). Dynamic quantization would touch only the Gemm layers, not the convolutions that
take the time in these CNNs. The preprocessing, test-time augmentation and softmax in the
graph stay fp32. The result is an ordinary fashionclf ONNX file: ``predict`` and ``serve``
take it like any other.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

CALIBRATION_IMAGES = 1000  # training images; min-max ranges settle within a few hundred
CALIBRATION_BATCH = 100
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]  # where the time goes; Add/Mul/pooling in int8 cost accuracy for ~nothing


def calibration_images(dataset, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """A seeded sample of ``count`` training images of ``dataset`` (a ``Dataset``)."""
    images = dataset.train.images
    pick = np.random.default_rng(seed).choice(len(images), size=min(count, len(images)), replace=False)
    return images[np.sort(pick)]


def quantize_int8(fp32: bytes, images: np.ndarray) -> bytes:
    """The int8 (QDQ) version of the fashionclf ONNX graph ``fp32``, calibrated on ``images``
    (uint8, the graph's input); its metadata says ``"int8": true``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from fashionclf.inference.graphs import METADATA_KEY

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": images[i : i + CALIBRATION_BATCH]}
                                 for i in range(0, len(images), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="fashionclf-int8-") as tmp:
        src, prepared, out = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32)
        # shape inference and graph clean-up, as ORT's docs advise (its symbolic shape inference
        # fails on the exporter's Reshape nodes; ONNX's own shape inference is enough here)
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS)
        proto = onnx.load(str(out))
    meta = {p.key: p.value for p in onnx.load_from_string(fp32).metadata_props}
    info = dict(json.loads(meta[METADATA_KEY]), int8=True)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    proto.producer_name = "fashionclf"
    return proto.SerializeToString()


def compare_int8(fp32: bytes, int8: bytes, images: np.ndarray, labels: np.ndarray, threads: int | None = None,
                 repeats: int = 3) -> dict:
    """Accuracy of both graphs on ``images`` and their images/s at batch 256 (median of
    ``repeats`` passes over the images, the two graphs alternating)."""
    from fashionclf.inference.classifier import OnnxClassifier

    graphs = {"fp32": OnnxClassifier(fp32, threads), "int8": OnnxClassifier(int8, threads)}
    result: dict = {"images": len(images)}
    seconds: dict[str, list[float]] = {name: [] for name in graphs}
    for name, clf in graphs.items():
        probs = np.concatenate([clf.predict_proba(images[i : i + 256]) for i in range(0, len(images), 256)])
        result[f"{name}_accuracy"] = float((probs.argmax(1) == labels).mean())
        result[f"{name}_top"] = probs.argmax(1)
    for _ in range(repeats):
        for name, clf in graphs.items():
            t0 = time.perf_counter()
            for i in range(0, len(images), 256):
                clf.predict(images[i : i + 256])
            seconds[name].append(time.perf_counter() - t0)
    for name in graphs:
        result[f"{name}_images_per_second"] = len(images) / float(np.median(seconds[name]))
    result["agreement"] = float((result.pop("fp32_top") == result.pop("int8_top")).mean())
    result["change_points"] = 100 * (result["int8_accuracy"] - result["fp32_accuracy"])
    result["speedup"] = result["int8_images_per_second"] / result["fp32_images_per_second"]
    return result


def export_int8(checkpoint, output=None, data=None, calibration: int = CALIBRATION_IMAGES, verify: bool = True,
                log=print) -> dict:
    """``fashionclf export MODEL.pt --int8``: quantize the checkpoint's graph (calibrated on
    ``calibration`` training images of its data, or of ``data``), write it atomically to
    ``output`` (default: ``model.int8.onnx`` beside the checkpoint) and compare it with the
    fp32 graph on the test split."""
    from fashionclf.fileio import write_bytes_atomic
    from fashionclf.inference.checkpoint import checkpoint_file, load_checkpoint
    from fashionclf.inference.export import cached_onnx_bytes
    from fashionclf.training.results import dataset_of_checkpoint

    path = checkpoint_file(checkpoint)
    ckpt = load_checkpoint(path)
    dataset = dataset_of_checkpoint(ckpt, data, verify, log=log)
    if not len(dataset.train.images) or not len(dataset.test.images):
        from fashionclf.errors import UsageError

        raise UsageError(f"--int8 calibrates on photos the model trained on and compares on others; {dataset.source} "
                         f"holds {len(dataset.train.images)} of the first and {len(dataset.test.images)} of the "
                         "second: pass the run's own data (leave --data out)")
    fp32 = cached_onnx_bytes(path)
    start = time.perf_counter()
    int8 = quantize_int8(fp32, calibration_images(dataset, calibration))
    seconds = time.perf_counter() - start
    output = Path(output) if output else path.parent / f"{path.stem}.int8.onnx"
    write_bytes_atomic(output, int8)
    images, labels = dataset.test.images, dataset.test.labels
    if dataset.schema is not None:  # a model of several attributes: compared on its first (the graph's first output)
        first = dataset.schema.category(labels)
        images, labels = images[first >= 0], first[first >= 0]
    comparison = compare_int8(fp32, int8, images, labels)
    return {"output": str(output), "bytes": len(int8), "fp32_bytes": len(fp32), "quantize_seconds": seconds,
            "calibration_images": min(calibration, len(dataset.train.images)), **comparison}
