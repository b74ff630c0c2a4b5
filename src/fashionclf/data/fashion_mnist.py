"""Fashion-MNIST: finding, fetching, verifying and parsing the IDX files; classes; splits.

The four IDX files are looked for, in this order:

1. ``data_dir`` (the ``--data-dir`` flag): when given, only this place is used;
2. the environment variable ``FASHIONCLF_DATA``;
3. the user cache directory (``~/.cache/fashionclf/fashion-mnist`` on Linux);
4. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``);
5. else they are downloaded from the dataset's official location into the cache.

Each file may be raw or gzip-compressed. After decompression its SHA-256 is compared
with the published one. A mismatch is an error (exit 2 from the CLI) unless
verification is switched off (``verify=False`` / ``--no-verify``), for a deliberately
modified copy of the data; the result ("verified", "skipped") is recorded in every
run's metrics.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fashionclf.data.attributes import Schema
from fashionclf.errors import DataError
from fashionclf.fileio import write_bytes_atomic

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Short names accepted wherever classes are named (compared after normalisation:
# lower case, letters and digits only).
ALIASES: dict[str, int] = {
    "tshirt": 0,
    "tee": 0,
    "top": 0,
    "trousers": 1,
    "pants": 1,
    "sweater": 2,
    "jacket": 4,
    "sandals": 5,
    "sneakers": 7,
    "shoe": 7,
    "handbag": 8,
    "boot": 9,
    "boots": 9,
}

FILES: dict[str, str] = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}

# SHA-256 of the *decompressed* files (Debian re-compresses the .gz files, so the
# compressed bytes differ between sources while the data is the same).
SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# Tried in order for each file. The project's own repository serves the same .gz files over
# HTTPS; the official S3 website endpoint is plain HTTP only. Either way a file is kept only when
# its decompressed bytes match SHA256, so the HTTP fallback cannot slip in other data.
DOWNLOAD_URLS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHIONCLF_DATA"

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension

FIX_HINT = (
    "fix: install Debian's package (sudo apt-get install dataset-fashion-mnist) "
    "or pass --data-dir DIR with the four IDX files (.gz or raw)"
)


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fashionclf")) / "fashion-mnist"


# ---------------------------------------------------------------- finding files


def _file_in(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def holds_fashion_mnist(directory: Path) -> bool:
    """Whether ``directory`` holds the four Fashion-MNIST IDX files (raw or .gz)."""
    return all(_file_in(directory, name) for name in FILES.values())


def search_places(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The places searched, in order, each with a short label saying where it came from."""
    if data_dir is not None:
        return [("--data-dir", Path(data_dir))]
    places = []
    if os.environ.get(ENV_VAR):
        places.append((ENV_VAR, Path(os.environ[ENV_VAR])))
    places.append(("cache", cache_dir()))
    places.append(("Debian package", DEBIAN_DIR))
    return places


def find_data(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the directory holding the four IDX files, downloading them if allowed."""
    places = search_places(data_dir)
    for _, place in places:
        if holds_fashion_mnist(place):
            return place
    searched = "; ".join(f"{where}: {place}" for where, place in places)
    download_note = ""
    if data_dir is None and download:
        try:
            return download_data(cache_dir())
        except DataError as exc:
            download_note = f"; download failed ({exc})"
    raise DataError(
        f"Fashion-MNIST not found (looked for {', '.join(FILES.values())} [.gz] in {searched})"
        f"{download_note}; {FIX_HINT}"
    )


# Sizes of the published files: a download larger than these is not Fashion-MNIST (and a
# gzip bomb is stopped before it fills memory).
MAX_COMPRESSED = 30 * 1024 * 1024
MAX_DECOMPRESSED = {name: 47_040_016 if "images" in name and name.startswith("train") else
                    7_840_016 if "images" in name else 60_008 if name.startswith("train") else 10_008
                    for name in FILES.values()}


def download_data(
    dest: Path,
    base_url: str | tuple[str, ...] = DOWNLOAD_URLS,
    checksums: dict[str, str] = SHA256,
    timeout: float = 60.0,
) -> Path:
    """Download the four .gz files into ``dest``, verifying each before it is kept; each file
    comes from the first of the ``base_url`` mirrors that delivers it intact.

    Each file is read up to its known size (``MAX_COMPRESSED``), decompressed as a stream up to
    its known size (``MAX_DECOMPRESSED``) while it is hashed, and written atomically only when
    the hash matches: an interrupted or hostile download never leaves a file where the search
    would find it, nor exhausts memory.
    """
    mirrors = (base_url,) if isinstance(base_url, str) else tuple(base_url)
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        target = dest / f"{name}.gz"
        if target.is_file():
            continue
        failures = []
        for mirror in mirrors:
            try:
                write_bytes_atomic(target, _fetch_verified(f"{mirror.rstrip('/')}/{name}.gz", name, checksums[name],
                                                           timeout))
                break
            except DataError as exc:
                failures.append(str(exc))
        else:
            raise DataError("; ".join(failures))
    return dest


def _fetch_verified(url: str, name: str, checksum: str, timeout: float) -> bytes:
    """The bytes at ``url`` when they are the published file ``name``; DataError otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read(MAX_COMPRESSED + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    if len(data) > MAX_COMPRESSED:
        raise DataError(f"{url}: over {MAX_COMPRESSED:,} bytes, larger than any Fashion-MNIST file; not used")
    actual = streamed_sha256(data, MAX_DECOMPRESSED[name], url)
    if actual != checksum:
        raise DataError(f"{url}: SHA-256 {actual} does not match the published {checksum}")
    return data


def streamed_sha256(raw: bytes, limit: int, source) -> str:
    """SHA-256 of ``raw`` decompressed (when gzip) in 1 MB pieces, refusing more than ``limit`` bytes."""
    digest, total = hashlib.sha256(), 0
    stream = gzip.GzipFile(fileobj=io.BytesIO(raw)) if raw[:2] == b"\x1f\x8b" else io.BytesIO(raw)
    try:
        while piece := stream.read(1 << 20):
            total += len(piece)
            if total > limit:
                raise DataError(f"{source}: decompresses to more than {limit:,} bytes, larger than the "
                                "Fashion-MNIST file it should be; not used")
            digest.update(piece)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt gzip data ({exc}); re-download or reinstall the file") from None
    return digest.hexdigest()


# ---------------------------------------------------------------- reading files


def decompress(raw: bytes, source) -> bytes:
    """``raw`` itself, or its gzip-decompressed bytes; a broken gzip stream names ``source``."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt gzip data ({exc}); re-download or reinstall the file") from None


def read_bytes(path: Path) -> bytes:
    """The decompressed bytes of a raw or gzip file; a broken gzip stream names the file."""
    return decompress(path.read_bytes(), path)


def parse_idx(data: bytes, path: Path | str, expect_magic: int) -> np.ndarray:
    """Parse one IDX file (magic number, big-endian dimensions, unsigned bytes)."""
    kind = "images" if expect_magic == IMAGE_MAGIC else "labels"
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expect_magic:
        raise DataError(
            f"{path}: bad magic number 0x{magic:08x}, expected 0x{expect_magic:08x} "
            f"(an IDX {kind} file); is this the right file?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: header says {'x'.join(map(str, shape))} = {expected} bytes, file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable, owns its memory


@dataclass
class ImageSet:
    """Images with their labels: one IDX pair, or a class subset of one."""

    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64, 0..k-1


@dataclass
class Dataset:
    """The train and test splits (and, where the data fixes one, the validation split),
    restricted to ``classes`` and relabelled 0..k-1."""

    train: ImageSet
    test: ImageSet
    classes: list[str]
    class_indices: list[int]  # Fashion-MNIST's indices of ``classes``; 0..k-1 for other data
    source: Path | str
    verification: str
    files: dict[str, str] = field(default_factory=dict)
    val: ImageSet | None = None  # None: carved from ``train`` by ``make_splits``
    problems: dict = field(default_factory=dict)  # skipped files, label noise, leakage (photo data)
    hashes: dict[str, list[str]] = field(default_factory=dict)  # photo data: split -> SHA-256 of each photo
    # Several attributes per photo (``fashionclf.data.attributes``): labels are then (N, width)
    # and ``classes`` are the first attribute's values; None: one attribute, ``classes``.
    schema: Schema | None = None


def _read_pair(directory: Path, images_name: str, labels_name: str, verify: bool) -> ImageSet:
    parts = {}
    for name, magic in ((images_name, IMAGE_MAGIC), (labels_name, LABEL_MAGIC)):
        path = _file_in(directory, name)
        if path is None:
            raise DataError(f"{directory / name}[.gz] is missing; {FIX_HINT}")
        data = read_bytes(path)
        if verify:
            actual = hashlib.sha256(data).hexdigest()
            if actual != SHA256[name]:
                raise DataError(
                    f"{path}: SHA-256 of the decompressed data is {actual}, expected {SHA256[name]}; "
                    "the file is damaged or not Fashion-MNIST (re-install it, or pass --no-verify "
                    "to use a deliberately modified copy)"
                )
        parts[magic] = parse_idx(data, path, magic)
    images, labels = parts[IMAGE_MAGIC], parts[LABEL_MAGIC]
    if images.shape[1:] != (28, 28):
        raise DataError(f"{directory / images_name}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(
            f"{directory}: {images_name} holds {len(images)} images but {labels_name} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() >= len(CLASSES):
        raise DataError(
            f"{directory / labels_name}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}"
        )
    return ImageSet(images, labels.astype(np.int64))


def load_dataset(
    data_dir: str | os.PathLike | None = None,
    classes: str | list | None = None,
    verify: bool = True,
    download: bool = True,
) -> Dataset:
    """Find (or fetch), verify and parse Fashion-MNIST, keeping only ``classes``."""
    source = find_data(data_dir, download=download)
    train = _read_pair(source, FILES["train-images"], FILES["train-labels"], verify)
    test = _read_pair(source, FILES["test-images"], FILES["test-labels"], verify)
    indices = parse_classes(classes)
    return Dataset(
        train=select_classes(train, indices),
        test=select_classes(test, indices),
        classes=[CLASSES[i] for i in indices],
        class_indices=indices,
        source=source,
        verification="verified" if verify else "skipped",
        files={k: str(_file_in(source, v)) for k, v in FILES.items()},
    )


# ---------------------------------------------------------------- classes and splits


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def parse_classes(spec: str | list | tuple | None) -> list[int]:
    """Class indices from names, aliases or indices: ``"T-shirt/top,Sneaker,Bag"``,
    ``"tshirt,sneaker,bag"``, ``"0,7,8"`` or a list of those. ``None`` means all ten."""
    if spec is None or spec == "" or spec == "all":
        return list(range(len(CLASSES)))
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    lookup = {_normalise(name): i for i, name in enumerate(CLASSES)} | ALIASES
    indices = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            index = int(item)
            if not 0 <= index < len(CLASSES):
                raise DataError(f"class index {index} out of range 0..{len(CLASSES) - 1}")
        elif _normalise(str(item)) in lookup:
            index = lookup[_normalise(str(item))]
        else:
            valid = ", ".join(f"{i}={name}" for i, name in enumerate(CLASSES))
            raise DataError(f"unknown class {item!r}; valid classes: {valid} (or aliases: {', '.join(ALIASES)})")
        if index in indices:
            raise DataError(f"class {CLASSES[index]!r} is named twice in {spec!r}")
        indices.append(index)
    if len(indices) < 2:
        raise DataError(f"a classifier needs at least 2 classes, got {len(indices)} from {spec!r}")
    return indices


def select_classes(split: ImageSet, indices: list[int]) -> ImageSet:
    """Keep only the samples of ``indices`` and relabel them 0..k-1 in that order."""
    if list(indices) == list(range(len(CLASSES))):
        return split
    relabel = np.full(len(CLASSES), -1, dtype=np.int64)
    relabel[indices] = np.arange(len(indices))
    keep = relabel[split.labels] >= 0
    return ImageSet(split.images[keep], relabel[split.labels[keep]])


def train_val_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of indices into (train, val); the test set is never touched."""
    from sklearn.model_selection import train_test_split

    all_idx = np.arange(len(labels))
    if val_fraction == 0:
        return all_idx, all_idx[:0]
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    try:
        train_idx, val_idx = train_test_split(
            all_idx, test_size=val_fraction, random_state=seed, stratify=labels
        )
    except ValueError as exc:
        raise DataError(f"cannot split {len(labels)} samples with --val-fraction {val_fraction}: {exc}") from None
    return np.sort(train_idx), np.sort(val_idx)


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).tolist()


@dataclass
class Splits:
    """Tensors of one run: the seeded train/val carve-out of the training set, and the test set."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def of(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of "train", "val" or "test"."""
        return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")


def make_splits(dataset: Dataset, val_fraction: float, seed: int) -> "Splits":
    if dataset.val is not None:  # the data's own validation split
        t, v, s = dataset.train, dataset.val, dataset.test
        return Splits(*(torch.from_numpy(a) for a in (t.images, t.labels, v.images, v.labels, s.images, s.labels)))
    train_idx, val_idx = train_val_split(dataset.train.labels, val_fraction, seed)
    x = torch.from_numpy(dataset.train.images)
    y = torch.from_numpy(dataset.train.labels)
    return Splits(
        x[train_idx], y[train_idx], x[val_idx], y[val_idx],
        torch.from_numpy(dataset.test.images), torch.from_numpy(dataset.test.labels),
    )
