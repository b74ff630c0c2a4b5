"""fashionclf audit: confident learning written from the paper, and the command on a small set
with planted wrong labels and a planted near-duplicate."""

from __future__ import annotations

import csv
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from fashionclf.quality.confident import calibrate_joint, confident_joint, find_label_issues, per_class_thresholds


def noisy_probabilities(n=4000, k=10, flip=0.08, strength=3.0, seed=0):
    """Out-of-sample-like probabilities of a decent model, and labels with ``flip`` of them wrong."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += strength
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    wrong = rng.random(n) < flip
    given[wrong] = (true[wrong] + rng.integers(1, k, wrong.sum())) % k
    return probs, given, true, wrong


@pytest.mark.parametrize("ranking", ["self_confidence", "normalized_margin"])
def test_confident_learning_finds_planted_wrong_labels_and_estimates_their_share(ranking):
    probs, given, true, wrong = noisy_probabilities()
    found = find_label_issues(probs, given, ranking)
    hits = found.issues & wrong
    assert hits.sum() / wrong.sum() >= 0.8 and hits.sum() / found.issues.sum() >= 0.7
    assert (found.suggested[hits] == true[hits]).mean() >= 0.9
    assert np.abs(found.noise_share - 0.08).max() < 0.05  # per class, the share of wrong labels
    ranked = found.ranked()
    assert len(ranked) == found.issues.sum() and (np.diff(found.score[ranked]) <= 0).all()
    # the most suspect tenth is almost all planted
    assert wrong[ranked[: len(ranked) // 10]].mean() >= 0.95


def test_clean_labels_give_few_issues_and_the_joint_follows_the_paper():
    probs, given, _, _ = noisy_probabilities(flip=0.0)
    found = find_label_issues(probs, given)
    assert found.issues.mean() < 0.01
    t = per_class_thresholds(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]), np.array([0, 0, 1]))
    assert t.tolist() == pytest.approx([0.75, 0.8])
    joint = confident_joint(np.array([[0.9, 0.1], [0.6, 0.4], [0.1, 0.9], [0.3, 0.7]]), np.array([0, 0, 0, 1]),
                            np.array([0.75, 0.8]))
    assert joint.tolist() == [[1, 1], [0, 0]]  # the second photo passes no threshold; the last none either
    q = calibrate_joint(joint, np.array([0, 0, 0, 1]))
    assert q.sum() == pytest.approx(1.0) and q[1, 1] == pytest.approx(0.25)  # a class with no confident row: kept
    with pytest.raises(ValueError, match="self_confidence, normalized_margin"):
        find_label_issues(probs, given, "loss")


@pytest.fixture
def planted_shop(tmp_path, real_data_dir):
    """90 photos of three distinct Fashion-MNIST classes (trousers, sneakers, bags: 28x28 PNGs),
    one of each class moved to another class's folder, and a near-duplicate of one photo (a
    few pixels changed)."""
    from fashionclf.data.fashion_mnist import load_dataset

    ds = load_dataset(real_data_dir, verify=False)
    root, rng, planted = tmp_path / "shop", random.Random(0), {}
    written = {}
    for name, c in (("trouser", 1), ("sneaker", 7), ("bag", 8)):
        (root / name).mkdir(parents=True)
        written[name] = []
        for k, i in enumerate(np.flatnonzero(ds.train.labels == c)[:30]):
            path = root / name / f"{k:03d}.png"
            Image.fromarray(ds.train.images[i]).save(path)
            written[name].append(path)
    for cls, paths in written.items():
        p = rng.choice(paths[1:])
        other = rng.choice([c for c in written if c != cls])
        target = root / other / f"moved-{p.name}"
        shutil.move(p, target)
        planted[str(target)] = cls
    original = written["bag"][0]
    pixels = np.array(Image.open(original))
    pixels[0, :3] = 255
    Image.fromarray(pixels).save(root / "bag" / "again.png")
    return root, planted, (str(original), str(root / "bag" / "again.png"))


@pytest.mark.slow
def test_audit_flags_the_planted_labels_and_the_near_duplicate_and_keeps_the_csv(planted_shop, tmp_path, capsys):
    from fashionclf.cli import main

    root, planted, twins = planted_shop
    output, out = tmp_path / "suspects.csv", tmp_path / "audit"
    args = ["audit", "--data", str(root), "--output", str(output), "--out", str(out), "--model", "fast-cnn",
            "--input", "grey", "--epochs", "15", "--folds", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "labels to check" in printed and "wrong labels" in printed
    rows = list(csv.DictReader(output.open()))
    assert list(rows[0]) == ["path", "label", "suggested", "score", "kind", "other"]
    labels = [r for r in rows if r["kind"] == "label"]
    hits = [r for r in labels if r["path"] in planted]
    assert len(hits) >= 2 and len(hits) / len(labels) >= 0.5  # 3 planted among 91
    assert all(r["suggested"] == planted[r["path"]] for r in hits)
    assert [float(r["score"]) for r in labels] == sorted((float(r["score"]) for r in labels), reverse=True)
    assert any({r["path"], r["other"]} == set(twins) for r in rows if r["kind"] == "duplicate")
    assert (out / "report.html").is_file() and "Estimated share of wrong labels" in (out / "report.html").read_text()
    before = output.read_bytes()
    assert main(args) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err and output.read_bytes() == before


def test_the_likelier_rule_narrows_issues_to_labels_another_class_clearly_beats():
    probs, given, _, wrong = noisy_probabilities(strength=2.0)  # a weaker model: more of its own confusions
    broad, narrow = find_label_issues(probs, given), find_label_issues(probs, given, likelier=10)
    assert (narrow.issues <= broad.issues).all() and narrow.issues.sum() < broad.issues.sum()
    assert (narrow.issues & wrong).sum() / narrow.issues.sum() > (broad.issues & wrong).sum() / broad.issues.sum()
    others = probs.copy()
    others[np.arange(len(given)), given] = 0
    flagged = np.flatnonzero(narrow.issues)
    assert (others[flagged].max(1) >= 10 * probs[flagged, given[flagged]]).all()


@pytest.mark.slow
def test_audit_judges_each_single_valued_attribute_of_a_tagged_manifest(tmp_path):
    from helpers import write_tagged_shop

    import fashionclf

    manifest = write_tagged_shop(tmp_path / "shop", per_category=20)
    lines = manifest.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if ",red," in line)
    lines[i] = lines[i].replace(",red,", ",blue,")  # a planted wrong colour
    manifest.write_text("\n".join(lines) + "\n")
    result = fashionclf.audit(data=manifest, output=tmp_path / "s.csv", out=tmp_path / "audit", model="fast-cnn",
                              epochs=6, folds=3, log=None)
    assert set(result.issues) == {"category", "colour"}  # looks is multi-label: no single label to doubt
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert list(rows[0]) == ["path", "label", "suggested", "score", "kind", "attribute", "other"]
    assert {r["attribute"] for r in rows if r["kind"] == "label"} <= {"category", "colour"}
    assert {name for name, *_ in result.noise_table()} == {"category", "colour"}


@pytest.mark.slow
def test_audit_of_fashion_mnist_judges_its_training_images(real_data_dir, tmp_path):
    import fashionclf

    result = fashionclf.audit(data=real_data_dir, classes="trouser,bag", folds=2, output=tmp_path / "s.csv",
                              out=tmp_path / "audit", log=None)
    assert len(result.pool.names) == 12000 and result.pool.names[0] == "train[0]"
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    labels = [r for r in rows if r["kind"] == "label"]
    assert labels and all(r["path"].startswith("train[") for r in labels)
    assert {r["label"] for r in labels} | {r["suggested"] for r in labels} <= {"Trouser", "Bag"}
    assert len(labels) < 0.02 * 12000  # two classes a model tells apart: few doubts


def test_near_duplicates_stand_out_from_their_surroundings_not_from_the_set():
    """A dense cluster of similar photos (as Fashion-MNIST's plain items) gives no pair; a copy
    far closer to its original than to anything else does, and so do identical photos."""
    from fashionclf.quality.find import close_pairs

    rng = np.random.default_rng(0)
    centre = rng.normal(size=32)
    dense = centre + 0.05 * rng.normal(size=(200, 32))  # all alike, none a copy of another
    spread = rng.normal(size=(50, 32))
    copy = spread[0] + 0.001 * rng.normal(size=32)
    twin = dense[5].copy()
    x = np.vstack([dense, spread, copy, twin])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = close_pairs(x)
    assert set(pairs) == {(200, 250), (5, 251)}
    assert pairs[(5, 251)] == pytest.approx(1.0, abs=1e-3) and 0.8 < pairs[(200, 250)] <= 1.0
