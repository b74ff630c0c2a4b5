"""Model files are input: a checkpoint's metadata and an ONNX file's contents are checked before
anything is built, downloaded or read from them."""


import pytest
from helpers import save_untrained_checkpoint

from fashionclf.errors import UsageError
from fashionclf.inference.checkpoint import load_checkpoint
from fashionclf.inference.classifier import load_classifier


@pytest.fixture
def ckpt_path(tmp_path):
    return save_untrained_checkpoint(tmp_path / "model.pt")


@pytest.mark.parametrize("change, message", [
    (lambda c: c["model"]["kwargs"].update(width=100_000), r"width=100000 is not allowed"),
    (lambda c: c["model"]["kwargs"].update(weights="imagenet"), r"weights='imagenet' is not allowed"),
    (lambda c: c["model"]["kwargs"].update(evil=1), r"evil=1 is not allowed"),
    (lambda c: c["model"].update(name="os.system"), r"unknown model 'os.system'"),
    (lambda c: c["preprocessing"].update(image_size=1_000_000), r"input 1000000x1000000x1 out of range"),
    (lambda c: c["preprocessing"].update(std=[0.0]), r"std must be positive"),
    (lambda c: c["preprocessing"].update(mean=[float("nan")]), r"mean must be 1 finite number"),
    (lambda c: c.update(classes=[f"c{i}" for i in range(5000)]), r"2 to 1000 names"),
    (lambda c: c.update(classes=["a", "b" * 10_000]), r"2 to 1000 names of 1 to 200 characters"),
    (lambda c: c.update(unknown={"temperature": 0.0, "threshold": 1.0}), r"temperature 0.0"),
])
def test_checkpoint_metadata_is_checked_before_anything_is_built(ckpt_path, change, message):
    import torch

    raw = torch.load(ckpt_path, weights_only=True)  # a forged file: the dict on disk, changed
    change(raw)
    torch.save(raw, ckpt_path)
    with pytest.raises(UsageError, match=message) as exc:
        load_classifier(ckpt_path, "torch")
    assert "load only model files you trust" in str(exc.value)


def _onnx_with(tmp_path, tamper) -> bytes:
    import onnx

    from fashionclf.inference.export import onnx_bytes

    proto = onnx.load_from_string(onnx_bytes(load_checkpoint(save_untrained_checkpoint(tmp_path / "m.pt"))))
    tamper(proto)
    return proto.SerializeToString()


def test_onnx_tensors_stored_outside_the_file_are_refused(tmp_path):
    from onnx import TensorProto

    def external(proto):
        tensor = proto.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "../../../../etc/passwd"

    path = tmp_path / "model.onnx"
    path.write_bytes(_onnx_with(tmp_path, external))
    with pytest.raises(UsageError, match=r"keeps its data in an external file"):
        load_classifier(path)


def test_onnx_custom_operators_are_refused(tmp_path):
    def custom(proto):
        proto.graph.node[0].domain = "com.example.evil"

    path = tmp_path / "model.onnx"
    path.write_bytes(_onnx_with(tmp_path, custom))
    with pytest.raises(UsageError, match=r"custom domain 'com.example.evil'"):
        load_classifier(path)
