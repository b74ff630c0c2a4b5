"""The checkpoint format: ``Checkpoint`` and ``InputContract`` read files of earlier fashionclf
versions, write the same plain dict, and are the only code that indexes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_untrained_checkpoint, synthetic_images

from fashionclf.errors import UsageError
from fashionclf.inference.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fashionclf.inference.classifier import TorchClassifier, load_classifier
from fashionclf.models.contract import GREY_28, InputContract

V1 = Path(__file__).parent / "data" / "checkpoint-v1"
SRC = Path(__file__).parents[1] / "src" / "fashionclf"


def test_a_version_1_file_loads_and_predicts_what_it_predicted_when_written():
    expected = json.loads((V1 / "expected.json").read_text())
    ckpt = load_checkpoint(V1 / "model.pt")
    assert ckpt.model == "two-block-cnn" and ckpt.classes == expected["classes"] == ["shoe", "top"]
    assert ckpt.contract == GREY_28 and ckpt.epoch == 2 and ckpt.resume is None
    assert ckpt.metrics["test_accuracy"] == ckpt.test_accuracy and ckpt.unknown["threshold"] == expected["threshold"]
    seen = ckpt.seen_photos()
    assert len(seen["train"]) == 42 and len(seen["val"]) == 6 and all(len(h) == 64 for h in seen["train"])
    probabilities, scores = TorchClassifier(ckpt).predict(synthetic_images(np.array([0, 7, 0, 7]), seed=11))
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    np.testing.assert_allclose(scores, expected["scores"], atol=1e-4)


def test_writing_a_loaded_checkpoint_gives_back_the_same_dict(tmp_path):
    raw = torch.load(V1 / "model.pt", weights_only=True)
    save_checkpoint(load_checkpoint(V1 / "model.pt"), tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert sorted(again) == sorted(raw)
    for key in raw:
        if key in ("state_dict", "photos_seen"):
            assert all(torch.equal(raw[key][k], again[key][k]) for k in raw[key])
        else:
            assert again[key] == raw[key], key


def test_last_pt_keeps_what_resume_needs(tmp_path):
    from fashionclf.inference.checkpoint import ResumeState

    path = save_untrained_checkpoint(tmp_path / "model.pt")
    ckpt = load_checkpoint(path)
    state = ResumeState({"state": {}, "param_groups": []}, torch.Generator().get_state(), torch.get_rng_state(),
                        [{"epoch": 1}], {"val_acc": 0.5, "epoch": 1})
    save_checkpoint(ckpt.replace(epoch=1, resume=state), tmp_path / "last.pt")
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert "budget" in raw and raw["budget"] is None and "ema" not in raw  # as version 1 writes last.pt
    back = load_checkpoint(tmp_path / "last.pt").resume
    assert back.history == [{"epoch": 1}] and back.best == {"val_acc": 0.5, "epoch": 1}
    assert torch.equal(back.torch_rng, state.torch_rng) and back.ema is None


@pytest.mark.parametrize("change, message", [
    ({"image_size": 0}, "input 0x0x1 out of range"),
    ({"channels": 2}, "out of range"),
    ({"mean": (0.0, 0.0)}, "mean must be 1 finite number"),
    ({"std": (-1.0,)}, "std must be positive"),
    ({"tta": "rotate"}, "unknown test-time augmentation"),
    ({"source": "cmyk"}, "unknown test-time augmentation or source"),
])
def test_an_input_contract_that_cannot_work_is_refused_when_made(change, message):
    with pytest.raises(UsageError, match=message):
        GREY_28.replace(**change)


def test_the_input_contract_reads_back_what_it_writes():
    colour = InputContract(64, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "flip", "rgb")
    assert InputContract.from_dict(colour.to_dict()) == colour and colour.source_shape == (64, 64, 3)
    assert "source" not in GREY_28.to_dict() and GREY_28.source_shape == (28, 28)
    assert InputContract.from_dict({"image_size": 28, "channels": 1, "mean": [0], "std": [1]}) == GREY_28
    with pytest.raises(UsageError, match="unknown field"):
        InputContract.from_dict({**GREY_28.to_dict(), "gamma": 2.2})


def test_a_checkpoint_without_its_marker_is_not_one(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(UsageError, match="not a fashionclf checkpoint"):
        load_classifier(tmp_path / "x.pt", "torch")
    with pytest.raises(UsageError, match="not a fashionclf checkpoint"):
        Checkpoint.from_dict([1, 2, 3])


def test_only_the_checkpoint_module_indexes_the_checkpoint_dict():
    keys = "preprocessing|class_indices|photos_seen|torch_rng"
    pattern = re.compile(rf"""\[["']({keys})["']\]|\.get\(["']({keys})["']|\["model"\]\["(name|kwargs)"\]""")
    found = [f"{path.relative_to(SRC)}:{n}: {line.strip()}" for path in SRC.rglob("*.py")
             if path.name not in ("checkpoint.py", "inputs.py")  # inputs: contract_of_info, without torch
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
