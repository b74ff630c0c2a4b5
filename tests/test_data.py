import gzip
import hashlib
import http.server
import threading
from functools import partial

import numpy as np
import pytest
from helpers import make_dataset, synthetic_images, write_idx

from fashionclf.data import fashion_mnist as data
from fashionclf.data.fashion_mnist import (
    CLASSES,
    FILES,
    DataError,
    ImageSet,
    find_data,
    load_dataset,
    parse_classes,
    read_bytes,
    select_classes,
    train_val_split,
)


def test_load_gz_and_raw_give_the_same_arrays(tmp_path):
    gz = load_dataset(make_dataset(tmp_path / "gz", compress=True), verify=False)
    raw = load_dataset(make_dataset(tmp_path / "raw", compress=False), verify=False)
    assert gz.train.images.shape == (400, 28, 28) and gz.train.images.dtype == np.uint8
    assert gz.test.labels.shape == (100,)
    np.testing.assert_array_equal(gz.train.images, raw.train.images)
    np.testing.assert_array_equal(gz.test.labels, raw.test.labels)
    assert gz.classes == list(CLASSES) and gz.verification == "skipped"


def test_synthetic_data_fails_verification_by_default(tiny_data):
    with pytest.raises(DataError, match=r"SHA-256.*--no-verify"):
        load_dataset(tiny_data)


def _corrupt(directory, name, mutate):
    path = directory / f"{name}.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(mutate(raw)))
    return path


@pytest.mark.parametrize(
    "name, mutate, message",
    [
        (FILES["train-images"], lambda b: b[:-100], "truncated"),
        (FILES["train-images"], lambda b: b + b"\0", "trailing bytes"),
        (FILES["train-images"], lambda b: b"\0\0\x08\x01" + b[4:], "bad magic number"),
        (FILES["test-labels"], lambda b: b[:3], "no header"),
        (FILES["test-labels"], lambda b: b[:-1] + b"\x0c", "label 12 out of range"),
        (FILES["test-labels"], lambda b: b[:4] + (99).to_bytes(4, "big") + b[8:107], "holds 100 images but"),
    ],
)
def test_corrupt_idx_is_an_error_naming_the_file(tiny_data, name, mutate, message):
    path = _corrupt(tiny_data, name, mutate)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(tiny_data, verify=False)
    assert path.name in str(err.value) or str(tiny_data) in str(err.value)


def test_broken_gzip_stream_names_the_file(tiny_data):
    path = tiny_data / f"{FILES['train-labels']}.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="corrupt gzip") as err:
        load_dataset(tiny_data, verify=False)
    assert str(path) in str(err.value)


def test_wrong_image_size_is_rejected(tmp_path):
    d = make_dataset(tmp_path / "d")
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((100, 32, 32)), compress=True)
    with pytest.raises(DataError, match="expected 28x28"):
        load_dataset(d, verify=False)


def test_search_order_env_before_cache_before_debian(tmp_path, monkeypatch):
    env_dir = make_dataset(tmp_path / "env")
    cache = make_dataset(data.cache_dir())
    assert find_data(download=False) == cache
    monkeypatch.setenv("FASHIONCLF_DATA", str(env_dir))
    assert find_data(download=False) == env_dir
    explicit = make_dataset(tmp_path / "explicit")
    assert find_data(explicit, download=False) == explicit


def test_missing_data_lists_every_place_and_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHIONCLF_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(DataError) as err:
        find_data(download=False)
    msg = str(err.value)
    for place in (tmp_path / "nowhere", data.cache_dir(), tmp_path / "no-debian"):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert "\n" not in msg


def test_explicit_data_dir_is_the_only_place_searched(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("FASHIONCLF_DATA", str(tiny_data))
    with pytest.raises(DataError, match="--data-dir: /nonexistent"):
        find_data("/nonexistent")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_verifies_and_keeps_good_files(http_server, tmp_path):
    root, url = http_server
    make_dataset(root)
    sums = {name: hashlib.sha256(read_bytes(root / f"{name}.gz")).hexdigest() for name in FILES.values()}
    dest = data.download_data(tmp_path / "cache", base_url=url, checksums=sums)
    ds = load_dataset(dest, verify=False)
    assert len(ds.train.labels) == 400


def test_download_with_bad_checksum_leaves_nothing_behind(http_server, tmp_path):
    root, url = http_server
    make_dataset(root)
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match="does not match"):
        data.download_data(dest, base_url=url)  # the published checksums: synthetic files fail
    assert list(dest.iterdir()) == []


def test_download_refuses_a_gzip_bomb_before_it_fills_memory(http_server, tmp_path):
    """A small .gz that inflates far past the real file's size is refused while streaming."""
    import gzip

    root, url = http_server
    make_dataset(root)
    name = FILES["test-labels"]
    (root / f"{name}.gz").write_bytes(gzip.compress(b"\0" * (200 * 1024 * 1024), 9))  # 200 MB from ~200 kB
    sums = {n: hashlib.sha256(read_bytes(root / f"{n}.gz")).hexdigest() for n in FILES.values() if n != name}
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match=r"decompresses to more than 10,008 bytes"):
        data.download_data(dest, base_url=url, checksums={**sums, name: "0" * 64})
    assert not (dest / f"{name}.gz").exists()


def test_download_goes_on_to_the_next_mirror_and_prefers_https(http_server, tmp_path):
    """An unreachable mirror and one serving wrong bytes are passed over; nothing of theirs is kept."""
    root, url = http_server
    make_dataset(root)
    sums = {name: hashlib.sha256(read_bytes(root / f"{name}.gz")).hexdigest() for name in FILES.values()}
    bad = root / "bad"
    bad.mkdir()
    for name in FILES.values():
        (bad / f"{name}.gz").write_bytes(b"not the data")
    dest = data.download_data(tmp_path / "cache", base_url=("http://127.0.0.1:9/", url + "bad/", url),
                              checksums=sums, timeout=5)
    assert len(load_dataset(dest, verify=False).train.labels) == 400
    assert data.DOWNLOAD_URLS[0].startswith("https://")
    with pytest.raises(DataError, match=r"cannot download http://127.0.0.1:9/.*; .*bad/.*does not match"):
        data.download_data(tmp_path / "c2", base_url=("http://127.0.0.1:9/", url + "bad/"), checksums=sums,
                           timeout=5)


def test_download_unreachable_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cannot download http://127.0.0.1:9/"):
        data.download_data(tmp_path / "c", base_url="http://127.0.0.1:9/", timeout=5)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("T-shirt/top,Sneaker,Bag", [0, 7, 8]),
        ("tshirt, sneaker, bag", [0, 7, 8]),
        ("BAG,t-shirt/TOP", [8, 0]),
        ("0,7,8", [0, 7, 8]),
        (["Ankle boot", 3], [9, 3]),
        (None, list(range(10))),
    ],
)
def test_parse_classes(spec, expected):
    assert parse_classes(spec) == expected


@pytest.mark.parametrize("spec, message", [("shoe,hat", "unknown class 'hat'.*valid classes"),
                                           ("bag,bag", "named twice"), ("12,1", "out of range"),
                                           ("bag", "at least 2 classes")])
def test_parse_classes_errors(spec, message):
    with pytest.raises(DataError, match=message):
        parse_classes(spec)


def test_select_classes_relabels_in_the_given_order():
    labels = np.array([0, 7, 8, 3, 8, 0])
    split = ImageSet(synthetic_images(labels), labels)
    sub = select_classes(split, [8, 0])
    assert sub.labels.tolist() == [1, 0, 0, 1]
    np.testing.assert_array_equal(sub.images, split.images[[0, 2, 4, 5]])


def test_subset_dataset_keeps_names(tiny_data):
    ds = load_dataset(tiny_data, "tshirt,sneaker,bag", verify=False)
    assert ds.classes == ["T-shirt/top", "Sneaker", "Bag"] and ds.class_indices == [0, 7, 8]
    assert set(ds.train.labels.tolist()) == {0, 1, 2}


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    train, val = train_val_split(labels, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val])) == list(range(1000))
    assert np.bincount(labels[val]).tolist() == [10] * 10
    again, _ = train_val_split(labels, 0.1, seed=3)
    other, _ = train_val_split(labels, 0.1, seed=4)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)


def test_real_data_verifies(real_data_dir):
    ds = load_dataset(real_data_dir)
    assert ds.verification == "verified"
    assert len(ds.train.labels) == 60000 and len(ds.test.labels) == 10000
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10
