"""A shop's own photos as training data: folder, split-folder and CSV layouts, the conversion
cache, and dirty data (each problem's documented outcome)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import png_bytes, synthetic_images, write_photo_folder
from PIL import Image

from fashionclf.data import photo_folders as photoset
from fashionclf.data.photos import photo_converter, photo_to_28
from fashionclf.data.sources import load_data, relabel
from fashionclf.data.split import SplitSettings
from fashionclf.errors import DataError, UsageError


def _counts(dataset, split):
    s = getattr(dataset, split)
    return np.bincount(s.labels, minlength=len(dataset.classes)).tolist()


def test_class_folders_with_unicode_names_nested_folders_hidden_and_other_files(tmp_path):
    root = tmp_path / "shop"
    written = write_photo_folder(root, {"tops": 20, "sacs à main": 20, "Schuhe ß": 10})
    nested = root / "tops" / "summer 2026"
    nested.mkdir()
    shutil.copy(written["Schuhe ß"][0], nested / "extra.PNG")  # nested folder and upper-case suffix: a top
    (root / "tops" / "notes.txt").write_text("not a photo")
    (root / "tops" / ".thumb.png").write_bytes(b"hidden")
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(b"hidden folder")
    (root / "_unknown").mkdir()
    shutil.copy(written["tops"][0], root / "_unknown" / "watch.png")  # not a class
    (root / "README.png").write_bytes(b"a file at the top level belongs to no class")

    ds = load_data(str(root), split=SplitSettings(val_fraction=0.1, test_fraction=0.2, seed=0))
    assert ds.classes == ["Schuhe ß", "sacs à main", "tops"]
    totals = [a + b + c for a, b, c in zip(_counts(ds, "train"), _counts(ds, "val"), _counts(ds, "test"))]
    assert totals == [10, 20, 21]
    assert _counts(ds, "test") == [2, 4, 4] and _counts(ds, "val") == [1, 2, 2]
    assert ds.problems["ignored"] == [str(root / "tops" / "notes.txt")]
    assert ds.problems["skipped"] == []
    # the extra top is a copy of a shoe: label noise, reported with both paths
    noise = ds.problems["label_noise"]
    assert len(noise) == 1 and {i["path"] for i in noise[0]} == {str(written["Schuhe ß"][0]), str(nested / "extra.PNG")}
    # the same 28x28 image as the conversion gives, bit for bit
    first = photo_to_28(written["Schuhe ß"][0])
    assert any(np.array_equal(first, img) for img in np.concatenate([ds.train.images, ds.val.images, ds.test.images]))


def test_split_folders_are_honoured(tmp_path):
    root = tmp_path / "shop"
    for split, n in (("train", 12), ("val", 3), ("test", 5)):
        write_photo_folder(root, {"bags": n, "shoes": n}, seed={"train": 1, "val": 2, "test": 3}[split], split=split)
    ds = load_data(str(root), split=SplitSettings(seed=5))
    assert _counts(ds, "train") == [12, 12] and _counts(ds, "val") == [3, 3] and _counts(ds, "test") == [5, 5]
    expected = np.stack([photo_to_28(p) for p in sorted((root / "test" / "bags").iterdir())])
    np.testing.assert_array_equal(ds.test.images[ds.test.labels == 0], expected)


def test_split_folders_without_val_carve_it_from_train(tmp_path):
    root = tmp_path / "shop"
    write_photo_folder(root, {"bags": 10, "shoes": 10}, seed=1, split="train")
    write_photo_folder(root, {"bags": 4, "shoes": 4}, seed=2, split="test")
    ds = load_data(str(root), split=SplitSettings(val_fraction=0.2))
    assert _counts(ds, "train") == [8, 8] and _counts(ds, "val") == [2, 2] and _counts(ds, "test") == [4, 4]


def test_csv_manifest_relative_paths_optional_header_and_splits(tmp_path):
    written = write_photo_folder(tmp_path / "images", {"a": 6, "b": 6})
    rows = [(p.relative_to(tmp_path).as_posix(), "tops" if name == "a" else "bags, leather", "test" if i < 2 else "")
            for name, paths in written.items() for i, p in enumerate(paths)]
    manifest = tmp_path / "catalogue.csv"
    import csv

    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    ds = load_data(str(manifest), split=SplitSettings(val_fraction=0.2))
    assert ds.classes == ["bags, leather", "tops"]
    assert _counts(ds, "test") == [2, 2] and _counts(ds, "val") == [1, 1] and _counts(ds, "train") == [3, 3]
    headerless = tmp_path / "plain.csv"
    with open(headerless, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows((p, lab) for p, lab, _ in rows)
    assert load_data(str(headerless)).classes == ["bags, leather", "tops"]
    unquoted = tmp_path / "unquoted.csv"
    unquoted.write_text("\n".join(f"{p},{lab}" for p, lab, _ in rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 7: split ' leather' is not one of train, val, test"):
        load_data(str(unquoted))
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimages/a/000.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv, row 2: expected path,label"):
        load_data(str(bad))


def test_dirty_dataset_skips_and_reports_but_trains_on(tmp_path):
    root = tmp_path / "shop"
    written = write_photo_folder(root, {"bags": 10, "shoes": 10}, split="train")
    write_photo_folder(root, {"bags": 3, "shoes": 3}, seed=9, split="test")
    (root / "train" / "bags" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "train" / "bags" / "empty.png").write_bytes(b"")
    shutil.copy(written["bags"][0], root / "test" / "bags" / "leaked.png")  # a training photo in test
    ds = load_data(str(root), split=SplitSettings(val_fraction=0.2))
    assert sorted(os.path.basename(s["path"]) for s in ds.problems["skipped"]) == ["broken.jpg", "empty.png"]
    assert all(s["error"] for s in ds.problems["skipped"])
    leak = ds.problems["leakage"]
    assert len(leak) == 1 and len({i["split"] for i in leak[0]}) == 2 and "test" in {i["split"] for i in leak[0]}
    assert ds.problems["label_noise"] == []
    assert len(ds.test.labels) == 7 and len(ds.train.labels) + len(ds.val.labels) == 20


def test_a_class_too_small_to_split_is_a_usage_error_naming_it(tmp_path):
    root = tmp_path / "shop"
    write_photo_folder(root, {"bags": 10, "belts": 1})
    with pytest.raises(UsageError, match=r"class 'belts' has 1 distinct photo.*3 or more"):
        load_data(str(root))


def test_a_class_with_only_unreadable_files_is_an_error(tmp_path):
    root = tmp_path / "shop"
    write_photo_folder(root, {"bags": 10, "shoes": 10})
    (root / "hats").mkdir()
    (root / "hats" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"class 'hats': all 1 of its photos are unreadable"):
        load_data(str(root))


def test_carved_splits_are_seeded_keep_duplicates_together_and_ignore_other_classes(tmp_path):
    root = tmp_path / "shop"
    written = write_photo_folder(root, {"bags": 30, "shoes": 30, "hats": 30})
    for i in range(5):  # five copies of one bag: one group, one split
        shutil.copy(written["bags"][0], root / "bags" / f"copy{i}.png")
    a = load_data(str(root), split=SplitSettings(seed=3))
    b = load_data(str(root), split=SplitSettings(seed=3))
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert a.problems["leakage"] == []
    assert not np.array_equal(load_data(str(root), split=SplitSettings(seed=4)).test.images, a.test.images)
    subset = load_data(str(root), classes="bags,shoes", split=SplitSettings(seed=3))  # the others keep their splits
    np.testing.assert_array_equal(subset.test.images[subset.test.labels == 0], a.test.images[a.test.labels == 0])


def test_conversion_cache_is_used_then_invalidated_by_a_changed_file_and_safe_to_delete(tmp_path):
    root = tmp_path / "shop"
    written = write_photo_folder(root, {"bags": 5, "shoes": 5})
    entries, _ = photoset.scan_folder(root)
    assert photoset.convert(entries, root).from_cache == 0
    again = photoset.convert(entries, root)
    assert again.from_cache == 10
    changed = written["bags"][2]
    new_image = synthetic_images(np.array([7]), seed=123)[0]
    changed.write_bytes(png_bytes(Image.fromarray(new_image)))
    os.utime(changed, ns=(1, 1))  # a different mtime even on a coarse clock
    third = photoset.convert(entries, root)
    assert third.from_cache == 9
    np.testing.assert_array_equal(third.images[[e.path for e in third.entries].index(changed)], new_image)
    photoset.cache_file(root, photo_converter()[1]).unlink()
    assert photoset.convert(entries, root).from_cache == 0


def test_relabel_maps_data_classes_onto_a_models_order_and_refuses_unknown_ones(tmp_path):
    root = tmp_path / "shop"
    write_photo_folder(root, {"bags": 10, "shoes": 10})
    ds = load_data(str(root))
    mapped = relabel(ds, ["shoes", "hats", "bags"])
    np.testing.assert_array_equal(mapped.test.labels, np.where(ds.test.labels == 0, 2, 0))
    with pytest.raises(UsageError, match=r"'bags'.*does not know; its classes are: shoes, hats"):
        relabel(ds, ["shoes", "hats"])


def test_data_command_shows_the_class_table_and_problems(tmp_path):
    root = tmp_path / "shop"
    write_photo_folder(root, {"bags": 20, "shoes": 10})
    (root / "bags" / "bad.png").write_bytes(b"not a png")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "fashionclf", "data", "--data", str(root)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "1 unreadable file(s) skipped" in r.stdout and "bad.png" in r.stdout
    assert any(line.split() == ["bags", "14", "2", "4"] for line in lines), r.stdout
    assert any(line.split() == ["shoes", "7", "1", "2"] for line in lines), r.stdout
    r = subprocess.run([sys.executable, "-m", "fashionclf", "data", "--data", str(tmp_path / "nothing.txt")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_train_on_a_folder_then_predict_and_evaluate_with_its_class_names(tmp_path, capsys):
    import json

    from fashionclf.cli import main

    root = tmp_path / "shop"
    written = write_photo_folder(root, {"knitwear": 30, "sacs à main": 30}, fmt="jpeg")
    (root / "knitwear" / "broken.jpg").write_bytes(b"\xff\xd8 no")
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--model", "fast-cnn", "--epochs", "2", "--batch-size", "16",
                 "--threads", "1", "--calibration", "split", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["knitwear", "sacs à main"]
    assert [s["path"] for s in metrics["data"]["problems"]["skipped"]] == [str(root / "knitwear" / "broken.jpg")]
    assert "broken.jpg" in (out / "report.html").read_text(encoding="utf-8")
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == [str(root)]
    capsys.readouterr()
    assert main(["predict", str(out / "model.pt"), str(written["sacs à main"][0]), "--backend", "torch"]) == 0
    import csv

    header, row = list(csv.reader(capsys.readouterr().out.splitlines()))[:2]
    assert header[-1] == "unknown"
    assert row[1] in ("knitwear", "sacs à main") and row[-1] in ("true", "false")
    assert main(["evaluate", str(out), "--out", str(tmp_path / "ev")]) == 0  # the run's own data and split
    summary = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert summary["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert summary["data_problems"]["skipped"][0]["path"].endswith("broken.jpg")


def test_review_loop_predict_review_move_and_retrain_on_both_folders(tmp_path, capsys):
    import csv
    import json

    from fashionclf.cli import main

    labelled = tmp_path / "labelled"
    write_photo_folder(labelled, {"bags": 20, "shoes": 20, "tops": 20})
    incoming = tmp_path / "incoming"
    write_photo_folder(incoming, {"new": 12}, seed=7)  # unlabelled photos from the shop
    out = tmp_path / "run"
    assert main(["train", "--data", str(labelled), "--model", "fast-cnn", "--epochs", "1", "--threads", "1",
                 "--out", str(out)]) == 0
    review = tmp_path / "review"
    capsys.readouterr()
    assert main(["predict", str(out), str(incoming), "--min-confidence", "0.999", "--review", str(review),
                 "--backend", "torch"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(captured.out.splitlines()))
    flagged = [r for r in rows if r["low_confidence"] == "true" or r["unknown"] == "true"]
    assert flagged and f"{len(flagged)} photos to review in {review}" in captured.err
    listed = list(csv.DictReader(open(review / "review.csv", encoding="utf-8")))
    assert sorted(r["source"] for r in listed) == sorted(r["path"] for r in flagged)
    for r in listed:  # hard links under the predicted label (one file system here)
        assert r["copy"].startswith(str(review / r["label"])) and os.path.samefile(r["copy"], r["source"])
    # a person moves one photo to another class and one to _unknown
    first, second = Path(listed[0]["copy"]), Path(listed[-1]["copy"])
    other = next(c for c in ("bags", "shoes", "tops") if c != listed[0]["label"])
    (review / other).mkdir(exist_ok=True)
    moved = review / other / ("moved-" + first.name)
    first.rename(moved)
    if len(listed) > 1:
        (review / "_unknown").mkdir()
        second.rename(review / "_unknown" / second.name)
    ds = load_data([str(labelled), str(review)], split=SplitSettings(val_fraction=0.1, test_fraction=0.2))
    assert ds.classes == ["bags", "shoes", "tops"]
    total = sum(len(getattr(ds, s).labels) for s in ("train", "val", "test"))
    assert total == 60 + len(listed) - (len(listed) > 1)
    moved_image = photo_to_28(moved)
    every = np.concatenate([ds.train.images, ds.val.images, ds.test.images])
    labels = np.concatenate([ds.train.labels, ds.val.labels, ds.test.labels])
    hits = [i for i, img in enumerate(every) if np.array_equal(img, moved_image)]
    assert hits and all(ds.classes[labels[i]] == other for i in hits)
    out2 = tmp_path / "run2"
    assert main(["train", "--data", str(labelled), "--data", str(review), "--model", "fast-cnn", "--epochs", "1",
                 "--threads", "1", "--out", str(out2)]) == 0
    assert json.loads((out2 / "config.json").read_text())["data"] == [str(labelled), str(review)]


def test_evaluate_scores_every_photo_the_model_has_not_seen(tmp_path, capsys):
    """Labelled photos given to evaluate are all scored, whatever folder or manifest column
    holds them, except those the model trained or validated on (by SHA-256), which are
    counted and said."""
    import csv
    import json

    from fashionclf.cli import main
    from fashionclf.inference.checkpoint import load_checkpoint

    shop = tmp_path / "shop"
    write_photo_folder(shop, {"bags": 25, "shoes": 25})
    run = tmp_path / "run"
    assert main(["train", "--data", str(shop), "--model", "fast-cnn", "--epochs", "1", "--threads", "1",
                 "--calibration", "split", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    tested = sum(metrics["data"]["test_counts"])
    seen = load_checkpoint(run / "model.pt").seen_photos()
    assert len(seen["train"]) + len(seen["val"]) + tested == 50 and seen["val"]
    new = tmp_path / "new"  # 40 photos the model never saw, laid out as class folders
    write_photo_folder(new, {"bags": 20, "shoes": 20}, seed=5)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(new), "--out", str(tmp_path / "e1")]) == 0
    scored = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert scored["samples"] == 40 and "(40 images)" in capsys.readouterr().out
    assert main(["predict", str(run), str(new), "--backend", "torch"]) == 0  # the same photos, the same answer
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 40
    assert scored["accuracy"] == sum(Path(r["path"]).parent.name == r["label"] for r in rows) / 40

    # a manifest whose rows are all split=test, and photos the model trained on among them
    rows = ["path,label,split"] + [f"{p},{p.parent.name},test" for p in sorted(new.rglob("*.png"))]
    rows += [f"{p},{p.parent.name},test" for p in sorted(shop.rglob("*.png"))]
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    assert main(["evaluate", str(run), "--data", str(tmp_path / "all.csv"), "--out", str(tmp_path / "e2")]) == 0
    summary = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert summary["samples"] == 40 + tested
    assert summary["left_out"] == {"trained_on": len(seen["train"]), "validated_on": len(seen["val"])}
    out = capsys.readouterr().out
    assert f"left out: {len(seen['train'])} photos the model trained on and {len(seen['val'])} it validated on" in out

    # the shop's own folder: exactly the test photos training held out, with the same accuracy
    assert main(["evaluate", str(run), "--data", str(shop), "--out", str(tmp_path / "e3")]) == 0
    summary = json.loads((tmp_path / "e3" / "metrics.json").read_text())
    assert summary["samples"] == tested and summary["accuracy"] == metrics["test_accuracy"]
    assert main(["evaluate", str(run), "--data", str(shop), "--split", "val", "--out", str(tmp_path / "e4")]) == 0
    assert json.loads((tmp_path / "e4" / "metrics.json").read_text())["samples"] == len(seen["val"])
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(new), "--split", "val"]) == 2  # none of these was validated on
    assert "nothing to score" in capsys.readouterr().err


def test_a_model_started_from_another_records_the_photos_its_body_learned_from(tmp_path, capsys):
    """--init keeps a body that learned from other photos: evaluate leaves those out too."""
    import json

    from fashionclf.cli import main
    from fashionclf.inference.checkpoint import load_checkpoint

    first, second = tmp_path / "first", tmp_path / "second"
    write_photo_folder(first, {"bags": 15, "shoes": 15}, seed=1)
    write_photo_folder(second, {"bags": 15, "shoes": 15}, seed=2)
    base = ["--model", "fast-cnn", "--epochs", "1", "--threads", "1", "--calibration", "split"]
    assert main(["train", "--data", str(first), *base, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--data", str(second), "--init", str(tmp_path / "a" / "model.pt"), "--epochs", "1",
                 "--threads", "1", "--calibration", "split", "--out", str(tmp_path / "b")]) == 0
    a, b = (load_checkpoint(tmp_path / run / "model.pt").seen_photos() for run in ("a", "b"))
    assert a["train"] <= b["train"] and a["val"] <= b["val"] and len(b["train"]) > len(a["train"])
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "b"), "--data", str(first), "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert summary["left_out"] == {"trained_on": len(a["train"]), "validated_on": len(a["val"])}
    assert summary["samples"] == 30 - len(a["train"]) - len(a["val"])  # first's own test photos only
