"""One interface over the two inference backends: a ``Classifier`` maps uint8 ``(N, 28, 28)``
images to ``(N, k)`` class probabilities, through PyTorch or ONNX Runtime.

``load_classifier(path, backend)``: ``path`` is a checkpoint (model.pt or its run directory)
or an ONNX file written by ``fashionclf export``; ``backend`` is ``torch``, ``onnx`` or
``auto`` (the file's own kind). A checkpoint asked for with ``backend="onnx"`` runs the graph
kept beside it (``graphs.graph_bytes``: exported by a child process the first time), so a
process that serves ONNX never imports torch; only the torch backend and ``check_parity`` do,
when called. Both backends compute ``fashionclf.models.contract.InferenceNet`` with its softmax;
``check_parity`` measures how closely they agree.

Adding a backend: a ``Classifier`` subclass here and its name in ``config.BACKENDS``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fashionclf.data.attributes import Schema
from fashionclf.errors import DataError, UsageError
from fashionclf.models.inputs import InputContract, contract_of_info
from fashionclf.training.config import BACKENDS, GRAPHS

if TYPE_CHECKING:
    from fashionclf.inference.checkpoint import Checkpoint

NAN_ERROR = "the model's output for this image is not a number (NaN or infinite); the model file may be damaged"
PARITY_TOLERANCE = 1e-4  # largest acceptable |p_onnx - p_torch| over the check images
# An int8 graph counts as faster from this ratio of fp32's images/s on: one process's timings on
# a shared machine move by a few percent, and changed answers should buy more than noise.
INT8_PAYS = 1.05


class Classifier:
    """What predict and serve need: class names, the input contract, probabilities and the
    in-distribution score with its threshold (``fashionclf.evaluation.ood``)."""

    backend: str
    classes: list[str]
    contract: InputContract
    info: dict  # model name, preprocessing, accuracy, unknown (score, temperature, threshold) where known
    schema: Schema | None = None  # a model of several attributes; None: one, ``classes``
    graph: str = "fp32"  # the ONNX graph's precision ("int8" for an ``export --int8`` file)
    graph_note: str = ""  # why this graph, when ``load_classifier`` chose it (``--graph fastest``)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, k) probabilities (of the first attribute, for a model of several) and (N,)
        in-distribution scores (None from an ONNX file without them)."""
        probabilities, scores = self.predict_attributes(images)
        return probabilities[0], scores

    def predict_attributes(self, images: np.ndarray) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Per attribute its (N, values) probabilities (one attribute: ``classes``), and the scores."""
        raise NotImplementedError

    def empty(self) -> tuple[list[np.ndarray], np.ndarray]:
        sizes = [len(self.classes)] if self.schema is None else [len(a.values) for a in self.schema.attributes]
        return [np.empty((0, k), np.float32) for k in sizes], np.empty(0, np.float32)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)[0]

    @property
    def to_input(self):
        """The photo conversion of this model's input contract (``photos.photo_converter``)."""
        from fashionclf.data.photos import photo_converter

        return photo_converter(self.contract)[0]

    @property
    def threshold(self) -> float | None:
        """Scores below this are "unknown"; None for a model without a calibrated threshold."""
        return (self.info.get("unknown") or {}).get("threshold")

    @staticmethod
    def finite(probabilities: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        """Per image: True where the output is usable (no NaN or infinity); the rest are that
        image's error (``NAN_ERROR``), never the batch's."""
        ok = np.isfinite(probabilities).all(1)
        return ok if scores is None else ok & np.isfinite(scores)

    def unknown(self, scores: np.ndarray | None) -> np.ndarray | None:
        """True where the item is of none of the classes; None when the model cannot tell."""
        return None if scores is None or self.threshold is None else scores < self.threshold


class TorchClassifier(Classifier):
    backend = "torch"

    def __init__(self, ckpt: Checkpoint, device: str = "cpu"):
        self.device = device
        self.classes = list(ckpt.classes)
        self.contract = ckpt.contract
        self.info = ckpt.info()
        self.schema = ckpt.attributes
        self.net = ckpt.serving_net().to(device)

    def predict_attributes(self, images: np.ndarray) -> tuple[list[np.ndarray], np.ndarray | None]:
        import torch

        if len(images) == 0:
            return self.empty()
        x = torch.from_numpy(np.ascontiguousarray(images))
        n = self.contract.eval_batch
        with torch.no_grad():
            out = [self.net(x[i : i + n].to(self.device)) for i in range(0, len(x), n)]
        *probabilities, scores = [torch.cat(parts).cpu().numpy() for parts in zip(*out)]
        return probabilities, scores


MAX_ONNX_BYTES = 512 * 1024 * 1024
MAX_ONNX_NODES = 20_000
ONNX_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}  # the standard operator sets; no custom-op libraries


def check_onnx(proto, size: int) -> None:
    """Refuse what a model file can do beyond computing: tensors stored outside the file (a path
    that ONNX Runtime would read, traversal included), operators from custom domains, and
    graphs far larger than any fashionclf export. Load only model files you trust."""
    from onnx import TensorProto

    def refuse(why: str):
        raise UsageError(f"refusing this ONNX file: {why}; export the checkpoint with 'fashionclf export MODEL.pt'")

    if size > MAX_ONNX_BYTES or len(proto.graph.node) > MAX_ONNX_NODES:
        refuse(f"{size:,} bytes and {len(proto.graph.node):,} nodes, over {MAX_ONNX_BYTES:,} / {MAX_ONNX_NODES:,}")
    for tensor in proto.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            refuse(f"tensor {tensor.name!r} keeps its data in an external file")
    for node in _all_nodes([proto.graph, *proto.functions]):
        if node.domain not in ONNX_DOMAINS:
            refuse(f"operator {node.op_type!r} from the custom domain {node.domain!r}")
        for attr in node.attribute:
            if attr.t.data_location == TensorProto.EXTERNAL or attr.t.external_data:
                refuse(f"a constant of {node.op_type!r} keeps its data in an external file")


def _all_nodes(graphs):
    """Every node of ``graphs`` (graphs or functions), subgraphs of If/Loop/Scan included."""
    for graph in graphs:
        for node in graph.node:
            yield node
            for attr in node.attribute:
                yield from _all_nodes([attr.g] if attr.HasField("g") else [])
                yield from _all_nodes(attr.graphs)


class OnnxClassifier(Classifier):
    backend = "onnx"

    def __init__(self, model_bytes: bytes, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError("the onnx backend needs onnxruntime: pip install onnxruntime "
                             "(or use --backend torch)") from None
        import onnx

        from fashionclf.inference.graphs import METADATA_KEY

        proto = onnx.load_from_string(model_bytes)
        check_onnx(proto, len(model_bytes))
        meta = {p.key: p.value for p in proto.metadata_props}
        if METADATA_KEY not in meta:
            raise UsageError("this ONNX file was not written by 'fashionclf export' (no fashionclf metadata); "
                             "export the checkpoint with 'fashionclf export MODEL.pt'")
        self.info = json.loads(meta[METADATA_KEY])
        self.graph = "int8" if self.info.get("int8") else "fp32"
        self.classes = self.info["classes"]
        self.schema = Schema.from_dict(self.info["attributes"]) if self.info.get("attributes") else None
        self.contract = contract_of_info(self.info)
        options = ort.SessionOptions()
        # default: torch's thread count where torch is loaded (``--threads`` sets it), else ONNX
        # Runtime's own choice (0: one per physical core)
        torch = sys.modules.get("torch")
        options.intra_op_num_threads = threads or (torch.get_num_threads() if torch else 0)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    def predict_attributes(self, images: np.ndarray) -> tuple[list[np.ndarray], np.ndarray | None]:
        if len(images) == 0:
            return self.empty()
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8)})
        if self.schema is not None:  # one output per attribute, then the score
            return outputs[:-1], outputs[-1]
        return [outputs[0]], (outputs[1] if len(outputs) > 1 else None)  # files exported before scores: none


def load_classifier(path: str | os.PathLike, backend: str = "auto", device: str = "cpu",
                    threads: int | None = None, graph: str = "fp32", batch: int = 1) -> Classifier:
    """``threads``: ONNX Runtime's intra-op threads (default: torch's thread count). ``graph``
    (a model.pt served through ONNX Runtime): ``fp32``, ``int8`` (the ``<stem>.int8.onnx`` that
    ``fashionclf export --int8`` wrote beside it) or ``fastest`` (whichever is faster here at
    ``batch`` images a call, timed now); the classifier's ``graph`` and ``graph_note`` say
    which and why."""
    if backend not in BACKENDS or graph not in GRAPHS:
        raise UsageError(f"unknown backend {backend!r} or graph {graph!r}; valid: {', '.join(BACKENDS)}; "
                         f"{', '.join(GRAPHS)}")
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise UsageError(f"{path} is an ONNX file; the torch backend needs the model.pt it was exported from")
        if not path.is_file():
            raise UsageError(f"ONNX model {path} not found; write one with 'fashionclf export MODEL.pt'")
        if graph != "fp32":
            raise UsageError(f"--graph {graph} picks among the graphs of a model.pt; give the model.pt, or the "
                             ".onnx file to serve as it is")
        return OnnxClassifier(path.read_bytes(), threads)
    if graph != "fp32" and backend == "torch":
        raise UsageError(f"--graph {graph} runs ONNX graphs; leave --backend torch out")
    if backend == "onnx" or graph != "fp32":
        if "torch" in sys.modules:  # exporting here costs nothing more
            from fashionclf.inference.export import cached_onnx_bytes as graph_bytes
        else:
            from fashionclf.inference.graphs import graph_bytes
        fp32 = OnnxClassifier(graph_bytes(path), threads)
        return fp32 if graph == "fp32" else pick_graph(fp32, int8_file(path), graph, threads, batch)
    import torch

    from fashionclf.inference.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if threads:
        torch.set_num_threads(threads)
    return TorchClassifier(ckpt, device)


def int8_file(checkpoint: Path) -> Path:
    """Where ``fashionclf export --int8`` writes a checkpoint's int8 graph by default."""
    from fashionclf.inference.graphs import checkpoint_file

    path = checkpoint_file(checkpoint)
    return path.parent / f"{path.stem}.int8.onnx"


def pick_graph(fp32: OnnxClassifier, int8_path: Path, graph: str, threads: int | None, batch: int) -> OnnxClassifier:
    """``--graph int8`` or ``fastest``: the int8 graph beside the checkpoint (refused when it was
    made from other weights), or, for ``fastest``, whichever of the two is faster here at
    ``batch`` images a call (int8 from ``INT8_PAYS`` times fp32's images/s)."""
    stale = None
    if int8_path.is_file():
        int8 = OnnxClassifier(int8_path.read_bytes(), threads)
        if int8.info.get("weights_sha256") != fp32.info.get("weights_sha256") or not int8.info.get("int8"):
            stale = f"{int8_path} was not made from these weights"
    else:
        stale = f"no {int8_path} beside the model"
    if stale:
        if graph == "int8":
            raise UsageError(f"--graph int8: {stale}; write it with 'fashionclf export {int8_path.parent} --int8'")
        fp32.graph_note = f"--graph fastest: {stale} ('fashionclf export --int8' writes one): fp32"
        return fp32
    if graph == "int8":
        return int8
    # 512 calls at batch 1 (about a second for both graphs): fewer moved by ±15% between runs here
    count = max(512, 8 * batch) if fp32.contract.source == "grey" else max(64, 4 * batch)
    images = np.random.default_rng(0).integers(0, 256, (count, *fp32.contract.source_shape), np.uint8)
    speed = images_per_second({"fp32": fp32, "int8": int8}, images, batch)
    ratio = speed["int8"] / speed["fp32"]
    chosen = int8 if ratio >= INT8_PAYS else fp32
    chosen.graph_note = (f"--graph fastest: int8 {ratio:.2f}x fp32's images/s at batch {batch} on this CPU "
                         f"(faster from {INT8_PAYS}x): {chosen.graph}")
    return chosen


def images_per_second(classifiers: dict[str, Classifier], images: np.ndarray, batch: int,
                      rounds: int = 5) -> dict[str, float]:
    """Each classifier's images/s on ``images`` at ``batch`` a call, from its fastest of
    ``rounds`` passes after an untimed one, the classifiers taking turns (a shared machine's
    drift falls on all of them alike, and what else runs there only ever adds time: medians
    moved the int8/fp32 ratio by ±15% between two starts, the fastest pass by a few %)."""
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    seconds: dict[str, list[float]] = {name: [] for name in classifiers}
    for round_ in range(rounds + 1):
        for name, clf in classifiers.items():
            start = time.perf_counter()
            for chunk in chunks:
                clf.predict(chunk)
            if round_:
                seconds[name].append(time.perf_counter() - start)
    return {name: len(images) / min(t) for name, t in seconds.items()}


def parity_images(count: int = 1000, data: list[str] | str | None = None) -> tuple[np.ndarray, str]:
    """Test images for a parity check (``data``: as ``--data``, default Fashion-MNIST); seeded
    random images if the data is not at hand."""
    from fashionclf.data.sources import load_data

    try:
        images = load_data(data, verify=False, download=False).test.images[:count]
        return images, f"{len(images)} test images"
    except DataError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), f"{count} random images (no data found)"


def check_parity(ckpt: Checkpoint, model_bytes: bytes, count: int = 1000, data: list[str] | str | None = None) -> dict:
    """Run the checkpoint through PyTorch and the ONNX graph on the same images; report the
    largest probability difference and how often the top class agrees."""
    if ckpt.contract.source != "grey":  # photos in colour: random colour images
        shape = ckpt.contract.source_shape
        images, what = np.random.default_rng(0).integers(0, 256, (count, *shape), dtype=np.uint8), f"{count} random images"
    else:
        images, what = parity_images(count, data)
    p_torch, s_torch = TorchClassifier(ckpt).predict(images)
    p_onnx, s_onnx = OnnxClassifier(model_bytes).predict(images)
    max_diff = float(np.abs(p_torch - p_onnx).max())
    score_diff = float(np.abs(s_torch - s_onnx).max() / max(1.0, np.abs(s_torch).max()))
    ok = max_diff <= PARITY_TOLERANCE and score_diff <= PARITY_TOLERANCE
    return {"checked_on": what, "max_abs_diff": max_diff, "max_score_rel_diff": score_diff,
            "argmax_agreement": float((p_torch.argmax(1) == p_onnx.argmax(1)).mean()),
            "parity": "ok" if ok else "failed", "tolerance": PARITY_TOLERANCE}
