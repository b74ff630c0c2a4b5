"""Calibration and "unknown": temperature scaling on validation, the energy threshold stored in
the checkpoint, and the unknown flag through predict (both backends) and the ONNX graph."""

import json

import numpy as np
import pytest
import torch

from fashionclf.evaluation import ood
from fashionclf.inference.checkpoint import load_checkpoint
from fashionclf.inference.classifier import OnnxClassifier, TorchClassifier, check_parity
from fashionclf.training.config import TrainConfig
from fashionclf.training.fit import fit


def test_temperature_undoes_overconfidence_and_lowers_nll():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 4000)
    x = rng.normal(0, 1, (4000, 5))
    x[np.arange(4000), labels] += 1.5
    logits = 1.5 * x  # the exact posterior's logits for this Gaussian model: calibrated at T = 1
    t = ood.fit_temperature(3 * logits, labels)  # an overconfident model: 3x the logits
    assert t == pytest.approx(3, rel=0.1)
    assert ood.nll(3 * logits, labels, t) < ood.nll(3 * logits, labels) - 0.1
    before = ood.reliability(ood.softmax(3 * logits), labels)["ece"]
    after = ood.reliability(ood.softmax(3 * logits, t), labels)["ece"]
    assert after < 0.03 < before


def test_reliability_bins_and_ece_of_a_known_case():
    probs = np.array([[0.95, 0.05]] * 10 + [[0.35, 0.65]] * 10)
    labels = np.array([0] * 9 + [1] + [0] * 7 + [1] * 3)  # 90% right at 0.95; 30% right at 0.65
    r = ood.reliability(probs, labels, bins=10)
    assert r["count"][9] == 10 and r["count"][6] == 10 and sum(r["count"]) == 20
    assert r["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.35)


def test_threshold_keeps_the_share_of_validation_asked_for():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 2000)
    logits = rng.normal(0, 1, (2000, 3)) + 3 * np.eye(3)[labels]
    u = ood.calibrate(logits, labels)
    kept = (ood.energy_score(logits, u["temperature"]) >= u["threshold"]).mean()
    assert kept == pytest.approx(ood.KEEP, abs=0.002)


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory):
    from helpers import make_dataset

    root = tmp_path_factory.mktemp("unknown")
    out = root / "run"
    fit(TrainConfig(model="fast-cnn", data=[str(make_dataset(root / "idx", n_train=800, n_test=300))], verify=False,
                    classes="0,1,2,3,4,5", epochs=2, batch_size=32, threads=1, out=str(out)), log=lambda *_: None)
    return out


def test_training_stores_calibration_and_measures_near_and_far_unknowns(subset_run):
    ckpt = load_checkpoint(subset_run / "model.pt")
    u = ckpt.unknown
    assert u["score"] == "energy" and u["temperature"] > 0 and np.isfinite(u["threshold"])
    assert u["val_nll_after"] <= u["val_nll_before"] + 1e-9
    report = u["ood"]
    assert {"far: digits", "far: photo_crops", "near: held-out Fashion-MNIST classes"} <= set(report)  # noise: no item, refused
    assert report["near: held-out Fashion-MNIST classes"]["images"] == 120  # 4 of 10 classes x 30 test images
    assert all(0 <= v["auroc"] <= 1 for k, v in report.items() if k != "in_distribution_flagged")
    metrics = json.loads((subset_run / "metrics.json").read_text())
    assert metrics["unknown"]["threshold"] == u["threshold"]
    html = (subset_run / "report.html").read_text()
    assert "Calibration and unknown items" in html and "reliability" in html


def test_both_backends_flag_the_same_unknowns(subset_run):
    from fashionclf.inference.export import onnx_bytes

    ckpt = load_checkpoint(subset_run / "model.pt")
    rng = np.random.default_rng(0)
    images = np.concatenate([rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
                             np.stack(list(ood.far_ood_images()["digits"][:50]))])
    torch_clf, onnx_clf = TorchClassifier(ckpt), OnnxClassifier(onnx_bytes(ckpt))
    (p1, s1), (p2, s2) = torch_clf.predict(images), onnx_clf.predict(images)
    np.testing.assert_allclose(p1, p2, atol=1e-4)
    np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-4)
    assert np.array_equal(torch_clf.unknown(s1), onnx_clf.unknown(s2))
    # the probabilities are the calibrated ones, softmax(logits / T); the score T * logsumexp(logits / T)
    t = ckpt.temperature
    with torch.no_grad():
        from fashionclf.models.contract import predict_logits

        z = predict_logits(ckpt.build_model(), torch.from_numpy(images), ckpt.contract).numpy()
    np.testing.assert_allclose(p1, ood.softmax(z, t), atol=1e-5)
    np.testing.assert_allclose(s1, ood.energy_score(z, t), rtol=1e-5)
    assert check_parity(ckpt, onnx_bytes(ckpt), 64)["parity"] == "ok"


def test_a_model_without_validation_has_no_threshold_and_an_empty_unknown_column(tmp_path):
    from helpers import make_dataset

    out = tmp_path / "run"
    fit(TrainConfig(model="fast-cnn", data=[str(make_dataset(tmp_path / "idx"))], verify=False, val_fraction=0,
                    epochs=1, threads=1, out=str(out)), log=lambda *_: None)
    clf = TorchClassifier(load_checkpoint(out / "model.pt"))
    assert clf.threshold is None
    assert clf.unknown(clf.predict(np.zeros((2, 28, 28), np.uint8))[1]) is None


def test_a_validation_split_without_mistakes_keeps_temperature_one():
    labels = np.arange(20) % 4
    logits = np.eye(4)[labels] * 2.0
    assert ood.fit_temperature(logits, labels) == 1.0
    logits[0] = [0, 2, 0, 0]  # one mistake: now there is something to calibrate against
    assert ood.fit_temperature(logits, labels) != 1.0
