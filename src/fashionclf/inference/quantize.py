"""int8 inference: ``fashionclf export MODEL.pt --int8``.

Static quantization of the exported ONNX graph with ONNX Runtime's tools, in the QDQ format
(QuantizeLinear/DequantizeLinear pairs around the convolutions and matrix products, which
ONNX Runtime fuses into int8 kernels): weights int8 per output channel, activations uint8
with ranges calibrated on training images (the test split is only measured on, never used to
choose). Dynamic quantization would touch only the Gemm layers, not the convolutions that
take the time in these CNNs. The preprocessing, test-time augmentation and softmax in the
graph stay fp32, and so do the convolutions that read the image (``input_convs``: at most 3
input channels, so cheap, and the most sensitive: in int8, strong-cnn's first convolution
alone cost 4.4 points of test accuracy). The result is an ordinary fashionclf ONNX file:
``predict`` and ``serve`` take it like any other, and ``--graph fastest`` picks whichever of
the two graphs is faster on the CPU at hand.

Whether int8 pays depends on the CPU (VNNI's int8 dot products, or AVX2's 16-bit
multiply-adds) and on how much of the graph is left in fp32 around the int8 kernels:
``export_int8`` measures both graphs at a large batch and at batch 1, and when int8 is not
faster, says why from ONNX Runtime's own per-operator profile (``why_not_faster``).
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
# An int8 graph counts as faster from this ratio of images/s on: timings of one process on a
# shared machine move by a few percent, and a change of answers should buy more than noise.
PAYS = 1.05
CONVERSIONS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
LAYOUT = ("ReorderInput", "ReorderOutput", "Transpose")  # ONNX Runtime's blocked fp32 and NHWC int8 layouts


def input_convs(proto) -> list[str]:
    """The convolutions that read the image (weights of at most 3 input channels): kept fp32."""
    weights = {t.name: t for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node
            if n.op_type == "Conv" and n.input[1] in weights and weights[n.input[1]].dims[1] <= 3]


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
                        op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=input_convs(onnx.load(str(prepared))))
        proto = onnx.load(str(out))
    meta = {p.key: p.value for p in onnx.load_from_string(fp32).metadata_props}
    info = dict(json.loads(meta[METADATA_KEY]), int8=True)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    proto.producer_name = "fashionclf"
    return proto.SerializeToString()


def compare_int8(fp32: bytes, int8: bytes, images: np.ndarray, labels: np.ndarray | None, threads: int | None = None,
                 rounds: int = 7, batch: int = 256) -> dict:
    """Accuracy of both graphs on ``images`` (with ``labels``; None: speed only); their images/s
    at ``batch`` (``speedup``: int8's over fp32's) and at batch 1 (``speedup_single``, as a
    server calls it), the fastest of ``rounds`` passes, the graphs taking turns; ``pays`` when
    int8 is at least ``INT8_PAYS`` times as fast at both, else ``why_not``, from the profile
    (``why_not_faster``)."""
    from fashionclf.inference.classifier import INT8_PAYS, OnnxClassifier, images_per_second

    graphs = {"fp32": OnnxClassifier(fp32, threads), "int8": OnnxClassifier(int8, threads)}
    result: dict = {"images": len(images), "batch": batch}
    if labels is not None:
        top = {}
        for name, clf in graphs.items():
            top[name] = np.concatenate([clf.predict_proba(images[i : i + batch])
                                        for i in range(0, len(images), batch)]).argmax(1)
            result[f"{name}_accuracy"] = float((top[name] == labels).mean())
        result["agreement"] = float((top["fp32"] == top["int8"]).mean())
        result["change_points"] = 100 * (result["int8_accuracy"] - result["fp32_accuracy"])
    large = images_per_second(graphs, images, batch, rounds)
    single = images_per_second(graphs, images[: min(1024, len(images))], 1, rounds)
    for name in graphs:
        result[f"{name}_images_per_second"] = large[name]
        result[f"{name}_images_per_second_single"] = single[name]
    result["speedup"] = large["int8"] / large["fp32"]
    result["speedup_single"] = single["int8"] / single["fp32"]
    result["pays"] = min(result["speedup"], result["speedup_single"]) >= INT8_PAYS
    if not result["pays"]:
        result["why_not"] = why_not_faster(fp32, int8, images[:batch], threads)
    return result


def op_shares(model: bytes, images: np.ndarray, threads: int | None = None) -> dict[str, float]:
    """Share of a graph's time per operator kind, from ONNX Runtime's own profile of a few
    calls on ``images`` (one batch): {"QLinearConv": 0.41, ...}."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads or 0, 1
    with tempfile.TemporaryDirectory(prefix="fashionclf-profile-") as tmp:
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp, "profile"))
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        for _ in range(4):
            session.run(None, {"images": images})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + event["dur"]
    whole = sum(totals.values()) or 1.0
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def why_not_faster(fp32: bytes, int8: bytes, images: np.ndarray, threads: int | None = None) -> str:
    """Why the int8 graph is not faster here, from both graphs' operator profiles and the CPU's
    int8 instructions: the share of the int8 graph spent converting between fp32 and int8,
    and what is left in fp32 around the int8 kernels."""
    from fashionclf.device import cpu_info

    shares = op_shares(int8, images, threads)
    conversions = sum(v for op, v in shares.items() if op in CONVERSIONS)
    def int8_kernel(op: str) -> bool:  # QLinearConv, QGemm, ...: ONNX Runtime's fused int8 operators
        return op.startswith(("Q", "ConvInteger", "MatMulInteger")) and op not in CONVERSIONS

    int8_ops = sum(v for op, v in shares.items() if int8_kernel(op))
    layout = sum(v for op, v in shares.items() if op in LAYOUT)
    rest = sorted(((v, op) for op, v in shares.items()
                   if op not in CONVERSIONS and op not in LAYOUT and not int8_kernel(op)), reverse=True)[:2]
    flags = set(cpu_info().get("flags", []))
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return (f"of the int8 graph's time, {int8_ops:.0%} goes to its int8 kernels, {conversions:.0%} to converting "
            f"between fp32 and int8, {layout:.0%} to changing tensor layouts between the int8 and fp32 kernels and "
            "the rest to operators left in fp32 (" + ", ".join(f"{op} {v:.0%}" for v, op in rest) + "); this CPU "
            + ("has VNNI int8 dot products" if vnni else "has no VNNI, so int8 dot products run on AVX2's "
               "16-bit multiply-adds"))


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
