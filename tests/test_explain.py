"""Heatmaps of where a model looked (Grad-CAM): every registered model, a model that must
look at one place, predict --explain and serve's /explain."""

from __future__ import annotations

import csv

import httpx
import numpy as np
import pytest
import torch

from fashionclf.models import create_model, get_model_entry, list_models
from fashionclf.models.explain import grad_cam, overlay


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_gets_a_heatmap_of_its_input_size(name):
    entry = get_model_entry(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    side = entry.input_size
    shape = (3, side, side) if entry.contract.channels == 1 else (3, side, side, 3)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    heat, targets = grad_cam(model, images, entry.contract, np.array([0, 1, 2]))
    assert heat.shape == (3, side, side) and np.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1 and targets.tolist() == [0, 1, 2]
    assert overlay(images[0], heat[0], scale=2).shape == (2 * side, 2 * side, 3)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind on the model


def test_the_heatmap_falls_where_the_answer_is():
    """Classes told apart only by a small square somewhere on noise, filled or hollow: the
    heatmap of a trained model is hottest on the square, wherever it is."""
    from fashionclf.models.contract import GREY_28, preprocess

    rng = np.random.default_rng(0)
    torch.manual_seed(0)

    def batch(n):
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        y, boxes = rng.integers(0, 2, n), rng.integers(1, 20, (n, 2))
        for i, (c, (top, left)) in enumerate(zip(y, boxes)):
            x[i, top : top + 7, left : left + 7] = 255
            if c:
                x[i, top + 2 : top + 5, left + 2 : left + 5] = 0
        return x, y, boxes

    model = create_model("fast-cnn", num_classes=2)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for _ in range(80):
        x, y, _ = batch(64)
        loss = torch.nn.functional.cross_entropy(model(preprocess(torch.from_numpy(x), GREY_28)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y, boxes = batch(40)
    heat, targets = grad_cam(model, x, GREY_28)
    assert (targets == y).mean() > 0.9
    peaks = [np.unravel_index(h.argmax(), h.shape) for h in heat]
    on_square = [top - 3 <= r < top + 10 and left - 3 <= c < left + 10 for (r, c), (top, left) in zip(peaks, boxes)]
    assert np.mean(on_square) >= 0.85


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from helpers import save_untrained_checkpoint

    return save_untrained_checkpoint(tmp_path_factory.mktemp("explain") / "model.pt", classes=["bags", "shoes"])


def test_predict_explain_writes_a_heatmap_per_photo(small_model, tmp_path, capsys):
    from helpers import catalogue_photo, dataset_like_image

    from fashionclf.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"p{i}.jpg").write_bytes(catalogue_photo(dataset_like_image(), np.random.default_rng(i)))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 no")
    assert main(["predict", str(small_model), str(photos), "--explain", str(tmp_path / "why"),
                 "-o", str(tmp_path / "tags.csv")]) == 1  # the broken one failed; the others explained
    rows = list(csv.DictReader(open(tmp_path / "why" / "explained.csv")))
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in rows) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    from PIL import Image

    assert all(Image.open(r["heatmap"]).size == (112, 112) for r in rows)
    assert "3 heatmaps" in capsys.readouterr().err
    from fashionclf.errors import UsageError
    from fashionclf.inference.explain import Explainer

    with pytest.raises(UsageError, match="model.pt"):
        Explainer(tmp_path / "model.onnx")


@pytest.mark.slow
def test_serve_answers_explain_with_a_png_and_keeps_the_key_rule(small_model):
    from helpers import catalogue_photo, dataset_like_image, running_server

    photo = catalogue_photo(dataset_like_image(), np.random.default_rng(0))
    with running_server(small_model) as url:
        r = httpx.post(url + "/explain", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
        r = httpx.post(url + "/explain?attribute=colour", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert r.status_code == 422 and "valid: label" in r.json()["detail"]
        r = httpx.post(url + "/explain", files={"file": ("a.txt", b"not a photo", "text/plain")})
        assert r.status_code == 415
    key = "k" * 20
    with running_server(small_model, "--api-key-file", str(small_model.parent / "key")) if (
            small_model.parent / "key").write_text(key) else None as url:
        assert httpx.post(url + "/explain", files={"file": ("a.jpg", photo, "image/jpeg")}).status_code == 401
