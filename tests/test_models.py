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
