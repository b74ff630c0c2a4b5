"""Fixtures: small synthetic IDX datasets for fast tests, the real one for integration tests.
The helpers they are built from live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import make_dataset, write_tagged_shop

from fashionclf.data.fashion_mnist import find_data
from fashionclf.errors import DataError

# Read before any fixture clears it: where the real data lives, if the user said so.
REAL_DATA_ENV = os.environ.get("FASHIONCLF_DATA")


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


@pytest.fixture(scope="session")
def tagged_model(tmp_path_factory) -> tuple[Path, Path]:
    """A model of three attributes (category, colour, looks: multi-label) trained for seconds on
    a small tagged shop (``helpers.write_tagged_shop``): (its model.pt, the shop's folder)."""
    from fashionclf import train

    root = tmp_path_factory.mktemp("tagged")
    manifest = write_tagged_shop(root / "shop", per_category=40)
    train(data=str(manifest), model="fast-cnn", epochs=10, out=str(root / "run"), seed=0)
    return root / "run" / "model.pt", manifest.parent
