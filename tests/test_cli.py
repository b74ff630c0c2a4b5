"""The command line, run as a real subprocess: exit codes, one-line errors, outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import (
    catalogue_photo,
    dataset_like_image,
    make_dataset,
    png_header_only,
    save_untrained_checkpoint,
    synthetic_images,
)
from PIL import Image


def run(*args, env=None, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "fashionclf", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_data_dir_exits_2_with_one_line():
    assert_one_line_error(run("data", "--data-dir", "/nonexistent"), "/nonexistent", "dataset-fashion-mnist")


@pytest.mark.slow  # seconds of subprocesses or training: the full tier runs it
def test_corrupt_idx_exits_2_naming_the_file(tmp_path):
    d = make_dataset(tmp_path / "d", compress=False)
    path = d / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:50])
    assert_one_line_error(run("data", "--data-dir", d, "--no-verify"), str(path), "truncated")
    assert_one_line_error(run("train", "--data-dir", d, "--no-verify", "--out", tmp_path / "r"), str(path))


@pytest.mark.slow  # seconds of subprocesses or training: the full tier runs it
def test_data_prints_counts_and_saves_grid(tmp_path):
    d = make_dataset(tmp_path / "d")
    r = run("data", "--data-dir", d, "--no-verify", "--grid", tmp_path / "grid.png")
    assert r.returncode == 0, r.stderr
    assert "SHA-256 skipped" in r.stdout and "Ankle boot" in r.stdout
    assert "total" in r.stdout and " 360 " in r.stdout  # 400 train - 10% val
    with Image.open(tmp_path / "grid.png") as img:
        assert img.size[0] > 300


@pytest.mark.slow  # seconds of subprocesses or training: the full tier runs it
def test_models_lists_registry():
    r = run("models")
    assert r.returncode == 0
    assert "one-block-cnn" in r.stdout and "693,962" in r.stdout and "121,930" in r.stdout

@pytest.mark.slow

def test_usage_errors_exit_2(tmp_path):
    assert run("train", "--epochs", "x").returncode == 2
    assert_one_line_error(run("train", "--model", "nope", "--out", tmp_path / "r"), "valid models")
    assert_one_line_error(run("train", "--classes", "hat,bag", "--out", tmp_path / "r"), "unknown class")
    assert_one_line_error(run("evaluate", tmp_path / "missing.pt"), "not found")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert_one_line_error(run("predict", tmp_path / "junk.pt", tmp_path), "not a readable checkpoint")

@pytest.mark.slow

def test_train_evaluate_predict_end_to_end(tmp_path):
    d = make_dataset(tmp_path / "d", n_train=500, n_test=100)
    out = tmp_path / "run"
    r = run("train", "--data-dir", d, "--no-verify", "--epochs", "2", "--threads", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "test_accuracy" in r.stdout and "epoch   2/2" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())

    r = run("evaluate", out / "model.pt", "--split", "val", "--data-dir", d, "--no-verify")
    assert r.returncode == 0, r.stderr
    assert (out / "eval-val" / "report.html").is_file()
    assert f"val {metrics['val_accuracy']:.4f}" in r.stdout

    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(synthetic_images(np.array([1, 9]), seed=3)):
        Image.fromarray(img).convert("RGB").save(images / f"{i}.png")
    r = run("predict", out / "model.pt", images, "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["label"] for row in rows] == ["Trouser", "Ankle boot"]

    (images / "bad.png").write_text("oops")
    r = run("predict", out / "model.pt", images, "--top-k", "3", "--output", tmp_path / "p.csv")
    assert r.returncode == 1
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0].startswith('"path","label","confidence","error","label_2"')
    assert len(lines) == 4 and "not an image" in [l for l in lines if "bad.png" in l][0]
    assert_one_line_error(run("predict", out / "model.pt", images, "--top-k", "11"), "--top-k")


def test_predict_globs_min_confidence_and_bad_files_in_one_batch(tmp_path, capsys):
    """Globs and folders; every kind of bad file gets its own row and error; exit 1; the
    low_confidence column marks rows under --min-confidence."""
    import csv
    import io

    from fashionclf.cli import main
    from fashionclf.data.fashion_mnist import CLASSES

    save_untrained_checkpoint(tmp_path / "model.pt")
    shop = tmp_path / "shop" / "summer"
    shop.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for fmt in ("jpeg", "png-rgba", "gif", "png-16bit", "jpeg-cmyk"):
        (shop / f"ok-{fmt}.{'jpg' if 'jpeg' in fmt else fmt.split('-')[0]}").write_bytes(
            catalogue_photo(dataset_like_image(), rng, fmt))
    (shop / "empty.jpg").write_bytes(b"")
    (shop / "text.png").write_text("not an image")
    (shop / "bomb.png").write_bytes(png_header_only(40_000, 40_000))
    good = (shop / "ok-jpeg.jpg").read_bytes()
    (shop / "cut.jpg").write_bytes(good[: len(good) // 3])
    Image.fromarray(dataset_like_image()).save(tmp_path / "loose.png")

    rc = main(["predict", str(tmp_path / "model.pt"), str(tmp_path / "shop" / "**" / "*.jpg"),
               str(tmp_path / "shop" / "summer" / "*.png"), str(tmp_path / "loose.png"),
               str(tmp_path / "missing.jpg"), "--min-confidence", "0.99", "--top-k", "2"])
    captured = capsys.readouterr()
    assert rc == 1
    rows = {r["path"].rsplit("/", 1)[1]: r for r in csv.DictReader(io.StringIO(captured.out))}
    assert set(rows) == {"ok-jpeg.jpg", "ok-jpeg-cmyk.jpg", "empty.jpg", "cut.jpg", "ok-png-rgba.png",
                         "ok-png-16bit.png", "text.png", "bomb.png", "loose.png", "missing.jpg"}
    assert "empty file" in rows["empty.jpg"]["error"]
    assert "not an image" in rows["text.png"]["error"]
    assert "over the limit" in rows["bomb.png"]["error"]
    assert "damaged or truncated" in rows["cut.jpg"]["error"]
    assert "no such file" in rows["missing.jpg"]["error"]
    for name in ("ok-jpeg.jpg", "ok-jpeg-cmyk.jpg", "ok-png-rgba.png", "ok-png-16bit.png", "loose.png"):
        assert rows[name]["error"] == "" and rows[name]["label"] in CLASSES and rows[name]["label_2"]
        # An untrained model is never 99% sure: every good row is flagged for review.
        assert rows[name]["low_confidence"] == "true"
    assert "5 of 10 inputs failed" in captured.err and "below --min-confidence" in captured.err


def test_predict_with_nothing_to_tag_or_a_bad_threshold_is_a_usage_error(tmp_path, capsys):
    from fashionclf.cli import main

    save_untrained_checkpoint(tmp_path / "model.pt", classes=list("abcdefghij"))
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "model.pt"), str(tmp_path / "empty")]) == 2
    assert "no image files found" in capsys.readouterr().err
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(dataset_like_image()).save(photos / "a.png")
    assert main(["predict", str(tmp_path / "model.pt"), str(photos), "--min-confidence", "2"]) == 2
    err = capsys.readouterr().err
    assert "--min-confidence takes a probability between 0 and 1, got 2" in err
    assert main(["predict", str(tmp_path / "model.pt"), str(photos), "--min-confidence", "0.5"]) == 0


@pytest.mark.parametrize("args", [["predict", "m.pt", "x.png", "--batch-size", "0"],
                                  ["serve", "m.pt", "--workers", "0"], ["export", "m.pt", "--check-images", "-1"],
                                  ["models", "--num-classes", "zero"]])
def test_counts_below_one_are_usage_errors(args, capsys):
    from fashionclf.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "expected" in err.splitlines()[-1]


def test_predict_survives_every_hostile_file_and_loses_no_row(tmp_path, capsys):
    import csv

    from helpers import catalogue_photo, dataset_like_image, hostile_files, save_untrained_checkpoint

    from fashionclf.cli import main

    model = save_untrained_checkpoint(tmp_path / "model.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    bad = hostile_files()
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)
    (folder / "good.jpg").write_bytes(catalogue_photo(dataset_like_image(), np.random.default_rng(0)))
    assert main(["predict", str(model), str(folder / "*"), "--batch-size", "2"]) == 1
    rows = {r["path"].rsplit("/", 1)[1]: r for r in csv.DictReader(capsys.readouterr().out.splitlines())}
    assert set(rows) == set(bad) | {"good.jpg"}
    assert rows["good.jpg"]["label"] and not rows["good.jpg"]["error"]
    assert all(rows[name]["error"] and not rows[name]["label"] for name in bad)


def test_predict_csv_survives_odd_file_names_and_neutralises_formulas(tmp_path):
    """Names that start a spreadsheet formula, hold a carriage return or are not UTF-8 each give
    exactly one row, through the real stdout of a real process."""
    import csv

    from helpers import png_bytes, save_untrained_checkpoint

    model = save_untrained_checkpoint(tmp_path / "model.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    image = png_bytes(Image.fromarray(dataset_like_image()))
    names = ["=HYPERLINK(1).png", "+1.png", "a\rb.png", "ok.png"]
    for name in names:
        (folder / name).write_bytes(image)
    os.mkdir(os.fsencode(folder) + b"/latin")
    open(os.fsencode(folder) + b"/latin/caf\xe9.png", "wb").write(image)  # not UTF-8
    r = subprocess.run([sys.executable, "-m", "fashionclf", "predict", str(model), "."], cwd=folder,
                       capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    rows = list(csv.reader(r.stdout.decode("utf-8").splitlines(keepends=True)))
    assert len(rows) == 1 + 5 and all(len(row) == len(rows[0]) for row in rows)
    paths = {row[0] for row in rows[1:]}  # relative to the folder, as given
    assert paths == {"'=HYPERLINK(1).png", "'+1.png", "a\rb.png", "ok.png", "latin/caf\\xe9.png"}


def test_predict_output_is_replaced_only_on_success_and_partial_rows_are_kept(tmp_path, monkeypatch, capsys):
    from helpers import png_bytes, save_untrained_checkpoint

    from fashionclf.cli import main
    from fashionclf.inference import predict

    model = save_untrained_checkpoint(tmp_path / "model.pt")
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(Image.fromarray(dataset_like_image())))
    tags = tmp_path / "tags.csv"
    tags.write_text("yesterday's tags\n")
    # a model that cannot be loaded: yesterday's file is untouched, nothing else is left
    assert main(["predict", str(tmp_path / "missing.pt"), str(tmp_path), "-o", str(tags)]) == 2
    assert tags.read_text() == "yesterday's tags\n" and sorted(p.name for p in tmp_path.glob("*tags*")) == ["tags.csv"]

    real = predict.classify

    def dies_after_two_rows(*args, **kwargs):
        for n, row in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            yield row

    monkeypatch.setattr(predict, "classify", dies_after_two_rows)
    assert main(["predict", str(model), str(tmp_path), "-o", str(tags)]) == 130
    assert tags.read_text() == "yesterday's tags\n"
    partial = (tmp_path / "tags.csv.partial").read_text().splitlines()
    assert len(partial) == 3 and "tags.csv.partial" in capsys.readouterr().err  # header + two rows
    monkeypatch.setattr(predict, "classify", real)
    assert main(["predict", str(model), str(tmp_path), "-o", str(tags)]) == 0
    assert len(tags.read_text().splitlines()) == 4


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import errno

    from fashionclf.errors import UsageError
    from fashionclf.fileio import write_bytes_atomic

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UsageError, match=r"metrics.json: no space left on the device"):
        write_bytes_atomic(tmp_path / "metrics.json", b"{}")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


@pytest.mark.slow  # seconds of subprocesses or training: the full tier runs it
def test_directory_walks_survive_link_loops_fifos_dangling_links_and_duplicates(tmp_path):
    """One row per path, none repeated through a loop; a file under three names (a hard link, a
    symbolic link: two products sharing a photo) gives three rows with the same label; a FIFO, a
    dangling link and a directory named like an image each get a row saying what they are."""
    import csv

    from helpers import png_bytes, save_untrained_checkpoint

    model = save_untrained_checkpoint(tmp_path / "model.pt")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    image = png_bytes(Image.fromarray(dataset_like_image()))
    (photos / "a.png").write_bytes(image)
    (photos / "sub" / "b.png").write_bytes(image + b"\0")
    os.symlink("..", photos / "sub" / "loop")  # a cycle
    os.symlink(".", photos / "self")  # another
    os.link(photos / "a.png", photos / "a-hardlink.png")  # the same file twice
    os.symlink(photos / "a.png", photos / "a-symlink.png")
    os.symlink(tmp_path / "gone.png", photos / "dangling.png")
    os.mkfifo(photos / "pipe.png")
    (photos / "folder.png").mkdir()
    walked = None
    for args in ([str(photos)], [str(photos / "**" / "*.png")]):
        r = subprocess.run([sys.executable, "-m", "fashionclf", "predict", str(model), *args],
                           capture_output=True, text=True, timeout=300)  # a FIFO read would hang: the guard
        rows = {row["path"].rsplit("/", 1)[1]: row for row in csv.DictReader(r.stdout.splitlines())}
        assert r.returncode == 1, r.stderr
        same = [rows[name] for name in ("a.png", "a-hardlink.png", "a-symlink.png")]  # one file, three names
        assert len({(row["label"], row["confidence"]) for row in same}) == 1 and same[0]["label"]
        assert rows["b.png"]["label"]
        assert "not a regular file" in rows["pipe.png"]["error"]
        assert "does not exist" in rows["dangling.png"]["error"]
        assert len(r.stdout.strip().splitlines()) == 1 + len(rows)  # no repeats through the loops
        walked = walked or rows
    assert "is a directory" in rows.get("folder.png", {"error": "is a directory"})["error"]
    r = subprocess.run([sys.executable, "-m", "fashionclf", "predict", str(model), str(photos), str(photos / "a.png")],
                       capture_output=True, text=True, timeout=300)
    paths = [row["path"] for row in csv.DictReader(r.stdout.splitlines())]
    assert len(paths) == len(set(paths)) == len(walked)  # the very same path given twice: one row
