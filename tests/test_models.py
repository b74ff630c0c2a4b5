import numpy as np
import pytest
import torch

from fashionclf.models import count_parameters, create_model, get_model_entry, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_classes", [10, 3])
def test_model_contract(name, num_classes):
    """Every registered model: output shape, a backward pass reaching every parameter, no NaN."""
    torch.manual_seed(0)
    contract = get_model_entry(name).contract
    model = create_model(name, num_classes=num_classes, in_chans=contract.channels)
    x = torch.rand(4, contract.channels, contract.image_size, contract.image_size)
    logits = model(x)
    assert logits.shape == (4, num_classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1])  # eval mode: no batch dependence


@pytest.mark.parametrize("name, params", [("one-block-cnn", 693_962), ("two-block-cnn", 121_930)])
def test_reference_cnns_match_keras_parameter_counts(name, params):
    assert count_parameters(create_model(name, num_classes=10)) == params


@pytest.mark.parametrize("name", ["one-block-cnn", "two-block-cnn"])
def test_keras_like_initialisation(name):
    """Keras' start: zero biases and Glorot-uniform weights, U(-a, a) with a = sqrt(6 / (fan_in + fan_out))
    (PyTorch's default Kaiming-uniform has a = sqrt(1 / fan_in) and random biases)."""
    torch.manual_seed(0)
    model = create_model(name)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) >= 3
    for module in layers:
        assert torch.count_nonzero(module.bias) == 0
        w = module.weight
        receptive = w[0, 0].numel() if w.ndim > 2 else 1
        bound = (6 / (w.shape[1] * receptive + w.shape[0] * receptive)) ** 0.5
        assert w.abs().max() <= bound
        # Uniform on (-a, a): standard deviation a / sqrt(3), and the extremes are reached.
        assert w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.1)
        assert w.abs().max() > 0.9 * bound


def test_unknown_model_lists_valid_names():
    from fashionclf.errors import UsageError

    with pytest.raises(UsageError, match="unknown model 'resnet9000'.*one-block-cnn.*two-block-cnn"):
        create_model("resnet9000")


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_onnx_export_matches_torch(name, tta):
    """Every registered model: the exported graph (preprocessing, TTA and softmax inside)
    gives PyTorch's probabilities on uint8 images, for any batch size."""
    import numpy as np

    from fashionclf.inference.checkpoint import Checkpoint
    from fashionclf.inference.classifier import PARITY_TOLERANCE, OnnxClassifier, TorchClassifier
    from fashionclf.inference.export import onnx_bytes

    torch.manual_seed(0)
    entry = get_model_entry(name)
    contract = entry.contract.replace(tta=tta)
    model = create_model(name, num_classes=3)
    ckpt = Checkpoint.of(model, model=name, model_kwargs={"in_chans": contract.channels}, classes=["a", "b", "c"],
                         class_indices=[0, 1, 2], contract=contract, config={})
    onnx_clf = OnnxClassifier(onnx_bytes(ckpt))
    assert onnx_clf.classes == ["a", "b", "c"] and onnx_clf.info["model"] == name
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    p_torch = TorchClassifier(ckpt).predict_proba(images)
    for batch in (images, images[:1]):
        p_onnx = onnx_clf.predict_proba(batch)
        assert p_onnx.shape == (len(batch), 3)
        np.testing.assert_allclose(p_onnx, p_torch[: len(batch)], atol=PARITY_TOLERANCE)


def test_a_checkpoint_is_exported_to_onnx_once_and_read_back_after(tmp_path, monkeypatch):
    """The ONNX backend keeps the exported graph beside the checkpoint, keyed by its bytes:
    a second start reads it instead of exporting; a changed checkpoint is exported anew and
    the old graph removed; a folder that cannot be written to still serves."""

    import numpy as np
    from helpers import save_untrained_checkpoint

    from fashionclf.inference import export
    from fashionclf.inference.classifier import load_classifier

    path = save_untrained_checkpoint(tmp_path / "model.pt")
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    first = load_classifier(path, "onnx").predict_proba(images)
    cached = list(tmp_path.glob(".model.*.onnx"))
    assert len(cached) == 1

    def no_export(ckpt):
        raise AssertionError("exported again")

    with monkeypatch.context() as m:
        m.setattr(export, "onnx_bytes", no_export)
        np.testing.assert_array_equal(load_classifier(tmp_path, "onnx").predict_proba(images), first)  # the run folder too

    save_untrained_checkpoint(path, classes=["a", "b"])  # the same name, other weights and classes
    assert load_classifier(path, "onnx").predict_proba(images).shape == (4, 2)
    assert [p.name for p in tmp_path.glob(".model.*.onnx")] != [cached[0].name]
    assert len(list(tmp_path.glob(".model.*.onnx"))) == 1

    for p in tmp_path.glob(".model.*.onnx"):
        p.unlink()

    def read_only(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(export, "write_bytes_atomic", read_only)  # as in a folder this user cannot write to
    assert load_classifier(path, "onnx").predict_proba(images).shape == (4, 2)
    assert not list(tmp_path.glob(".model.*.onnx"))


def test_the_whitened_first_layer_decorrelates_patches_and_refuses_layers_it_cannot_fill():
    """--stem-init whiten: the first convolution's responses to training patches come out
    uncorrelated with unit variance (the leading directions), the second half being the negatives."""
    import torch.nn.functional as F
    from helpers import synthetic_images

    from fashionclf.errors import UsageError
    from fashionclf.training.config import TrainConfig, resolve_config
    from fashionclf.training.whitening import first_conv, whiten_first_conv

    images = torch.from_numpy(synthetic_images(np.arange(400) % 10, seed=0))
    contract = get_model_entry("strong-cnn").contract
    model = create_model("strong-cnn", num_classes=10)
    assert whiten_first_conv(model, images, contract) == 8
    conv = first_conv(model)
    from fashionclf.models.contract import preprocess

    x = preprocess(images, contract).float()
    out = F.conv2d(x, conv.weight.detach().float()).permute(0, 2, 3, 1).reshape(-1, 16)  # no padding: whole patches
    cov = out[:, :8].T @ out[:, :8] / len(out)
    torch.testing.assert_close(cov, torch.diag(torch.diagonal(cov)), atol=2e-3, rtol=0)  # uncorrelated
    assert torch.diagonal(cov).min() > 0.5 and torch.diagonal(cov).max() < 1.0 + 1e-3  # lambda / (lambda + eps)
    torch.testing.assert_close(out[:, 8:], -out[:, :8])

    with pytest.raises(UsageError, match="32 filters of 1x3x3"):
        whiten_first_conv(create_model("one-block-cnn", num_classes=10), images, contract, "one-block-cnn")
    with pytest.raises(UsageError, match="--init keeps"):
        resolve_config(TrainConfig(recipe="fast", init="model.pt"))


def test_fast_cnn_flatten_returns_the_plain_gradient_in_the_layout_of_its_input():
    """The gradient through fast-cnn's Flatten equals nn.Flatten's value for value, and comes
    back channels-last like the ReLU output it meets (mixed layouts take oneDNN's slow path)."""
    from torch import nn

    from fashionclf.models.bncnn import Flatten

    x = torch.randn(4, 8, 7, 7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 8 * 7 * 7)
    grads = []
    for flatten in (nn.Flatten(), Flatten()):
        leaf = x.clone().requires_grad_()
        y = torch.relu(leaf)
        (flatten(y) * w).sum().backward()
        grads.append(leaf.grad)
        assert torch.equal(flatten(y), y.flatten(1))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    a = torch.randn(4, 8, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    seen = []
    a.register_hook(lambda g: seen.append(g))
    (Flatten()(a) * w).sum().backward()
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    model = create_model("fast-cnn", num_classes=10)
    assert isinstance(model[6], Flatten) and not list(model[6].parameters())  # checkpoints keep their keys
