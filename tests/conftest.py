"""Shared fixtures: small synthetic IDX datasets for fast tests, the real one for integration tests."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from fashionclf.data import CLASSES, FILES, find_data
from fashionclf.errors import DataError

# Read before any fixture clears it: where the real data lives, if the user said so.
REAL_DATA_ENV = os.environ.get("FASHIONCLF_DATA")


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file: magic 0x0000080<ndim>, big-endian dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    header = (0x800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def synthetic_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """28x28 images a tiny model can learn: a bright bar whose row depends on the class, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 230
    return images


def make_dataset(directory: Path, n_train: int = 400, n_test: int = 100, compress: bool = True,
                 seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % len(CLASSES)
        rng.shuffle(labels)
        prefix = "train" if split == "train" else "t10k"
        write_idx(directory / f"{prefix}-images-idx3-ubyte", synthetic_images(labels, seed + n), compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return directory


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "idx")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's real caches, or picks up FASHIONCLF_DATA by accident."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("FASHIONCLF_DATA", raising=False)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real Fashion-MNIST. Missing data fails under CI (CI=true) and skips elsewhere."""
    try:
        return find_data(REAL_DATA_ENV, download=False)
    except DataError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the real dataset is required under CI: {exc}")
        pytest.skip(f"real Fashion-MNIST not available: {exc}")


__all__ = ["write_idx", "make_dataset", "FILES"]
