import pytest
import torch

from fashionclf.models import count_parameters, create_model, get_model_entry, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_classes", [10, 3])
def test_model_contract(name, num_classes):
    """Every registered model: output shape, a backward pass reaching every parameter, no NaN."""
    torch.manual_seed(0)
    prep = get_model_entry(name).preprocessing
    model = create_model(name, num_classes=num_classes, in_chans=prep["channels"])
    x = torch.rand(4, prep["channels"], prep["image_size"], prep["image_size"])
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


def test_keras_like_initialisation():
    model = create_model("one-block-cnn")
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            assert torch.count_nonzero(module.bias) == 0


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*one-block-cnn.*two-block-cnn"):
        create_model("resnet9000")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_onnx_export_matches_torch(name, tta):
    """Every registered model: the exported graph (preprocessing, TTA and softmax inside)
    gives PyTorch's probabilities on uint8 images, for any batch size."""
    import numpy as np

    from fashionclf.checkpoint import make_checkpoint
    from fashionclf.export import PARITY_TOLERANCE, export_onnx_bytes
    from fashionclf.inference import OnnxClassifier, TorchClassifier

    torch.manual_seed(0)
    entry = get_model_entry(name)
    prep = dict(entry.preprocessing, tta=tta)
    model = create_model(name, num_classes=3)
    ckpt = make_checkpoint(model, name, {"in_chans": prep["channels"]}, ["a", "b", "c"], [0, 1, 2], prep, {})
    onnx_clf = OnnxClassifier(export_onnx_bytes(ckpt))
    assert onnx_clf.classes == ["a", "b", "c"] and onnx_clf.info["model"] == name
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    p_torch = TorchClassifier(ckpt).predict_proba(images)
    for batch in (images, images[:1]):
        p_onnx = onnx_clf.predict_proba(batch)
        assert p_onnx.shape == (len(batch), 3)
        np.testing.assert_allclose(p_onnx, p_torch[: len(batch)], atol=PARITY_TOLERANCE)
