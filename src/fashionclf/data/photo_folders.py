"""A shop's own labelled photos as a dataset: class folders, split folders or a CSV manifest.

Layouts (``--data PATH``, repeatable; ``fashionclf.data.sources`` decides which one a path is):

* ``PATH/<class>/...``: one folder per class; photos anywhere below it (nested folders
  belong to the class). Folders whose name starts with ``.`` or ``_`` are not classes
  (``_unknown`` in the review loop holds items that belong to no class).
* ``PATH/train/<class>/``, ``PATH/val/<class>/``, ``PATH/test/<class>/``: the shop's own
  splits, honoured as given.
* ``PATH.csv`` with rows ``path,label[,split]`` (paths relative to the CSV): the usual export
  of a catalogue system. A header row starting with ``path`` names the columns: ``split``, and
  one column per attribute (``path,category,colour,pattern,split``; ``fashionclf.data.attributes``).

Photos become model input through the model's photo conversion (``photos.photo_converter``:
``photo_to_28`` for the 28x28 grey models, ``photo_to_rgb`` for colour models at their size),
the very function ``predict`` and ``serve`` use, so what is trained is what is served. Conversion runs once, on every core,
with a progress bar; its results are cached per source (keyed by each file's path, size and
modification time, and by the conversion's version), so the next run loads in seconds.
The cache lives in the user cache directory and is safe to delete.

Dirty data loses nothing and stops nothing: unreadable files are skipped and listed;
identical photos (same SHA-256) under two labels are reported as label noise, and in two
splits as leakage. Splits not given by the shop are carved per class, seeded, with
identical photos kept in the same split.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import multiprocessing
import os
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from fashionclf.data.photos import IMAGE_SUFFIXES, PhotoError, PhotoTarget, photo_converter, photo_to_28
from fashionclf.errors import DataError, UsageError
from fashionclf.fileio import plain_cell, write_bytes_atomic

SPLIT_NAMES = ("train", "val", "test")
PARALLEL_FROM = 400  # photos to convert before worker processes pay for themselves


@dataclass
class Entry:
    """One labelled photo of a source."""

    path: Path
    label: str  # the first attribute's cell ("" where a multi-attribute manifest leaves it empty)
    split: str | None = None  # the shop's own split, if it fixed one
    cells: tuple[str, ...] = ()  # every attribute's cell, where the source has several or multi-label ones

    @property
    def tags(self) -> tuple[str, ...]:
        return self.cells or (self.label,)


@dataclass
class Converted:
    """The photos of a source after conversion: images of the readable ones, the rest listed."""

    entries: list[Entry]
    images: np.ndarray  # (N, 28, 28) or (N, S, S, 3) uint8, one per entry in ``entries``
    hashes: list[str]  # SHA-256 of each file's bytes
    skipped: list[dict] = field(default_factory=list)  # {"path", "error"} of unreadable files
    from_cache: int = 0


# ---------------------------------------------------------------- finding photos


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def is_split_folder(root: Path) -> bool:
    names = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    return "train" in names and names <= set(SPLIT_NAMES)


def _class_folders(root: Path, split: str | None) -> tuple[list[Entry], list[str]]:
    entries, ignored = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or not _visible(path, root):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                entries.append(Entry(path, folder.name, split))
            else:
                ignored.append(str(path))
    return entries, ignored


def scan_folder(root: Path) -> tuple[list[Entry], list[str]]:
    """Entries of a class-folder or split-folder tree, and the files ignored (no image suffix)."""
    if not is_split_folder(root):
        return _class_folders(root, None)
    entries, ignored = [], []
    for split in SPLIT_NAMES:
        if (root / split).is_dir():
            e, i = _class_folders(root / split, split)
            entries += e
            ignored += i
    return entries, ignored


@dataclass
class Manifest:
    """The rows of a CSV manifest and the attributes its columns name."""

    entries: list[Entry]
    attributes: tuple[str, ...] = ("label",)


def read_manifest(path: Path) -> Manifest:
    """A CSV manifest; paths are relative to the CSV's folder. With a header row starting with
    ``path``, the header names the columns: ``split`` (optional) and attributes (every other
    column: ``label`` alone is the one-attribute case; an empty cell = not labelled for that
    attribute; ``a;b`` = several values). Without one, rows are ``path,label[,split]``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the manifest ({exc}); expected a UTF-8 CSV of path,label[,split]") from None
    rows = [(n, r) for n, r in enumerate(csv.reader(io.StringIO(text)), start=1) if any(cell.strip() for cell in r)]
    if rows and rows[0][1][0].strip().lower() == "path":
        attributes, split_col = header_columns(path, rows[0][1])
        if split_col is None and len(attributes) == 1:
            split_col = 2  # "path,label" over rows "path,label,split", as manifests always had
        rows = rows[1:]
    else:
        attributes, split_col = ("label",), 2
    entries = [manifest_entry(path, line, row, len(attributes), split_col) for line, row in rows]
    if not entries:
        raise DataError(f"{path}: the manifest has no rows; expected path,label[,split]")
    return Manifest(entries, attributes)


def header_columns(path: Path, header: list[str]) -> tuple[tuple[str, ...], int | None]:
    """(attribute names in column order, the split column's index or None) of a header row;
    attribute columns must come right after ``path`` (split may come anywhere after them)."""
    names = [c.strip() for c in header[1:]]
    split_col = next((i + 1 for i, n in enumerate(names) if n.lower() == "split"), None)
    attributes = tuple(n for n in names if n.lower() != "split")
    if not attributes or any(not n for n in attributes) or len(set(attributes)) < len(attributes):
        raise DataError(f"{path}: header {','.join(header)!r}: expected path, then one distinct name per "
                        "attribute column (e.g. path,category,colour,split); an empty or repeated name cannot be an attribute")
    if split_col is not None and split_col <= len(attributes):
        raise DataError(f"{path}: header {','.join(header)!r}: put the split column after the attribute columns")
    return attributes, split_col


def manifest_entry(path: Path, line: int, row: list[str], attributes: int, split_col: int | None) -> Entry:
    """One row of a manifest as an Entry; a row that cannot be one is a DataError naming it."""
    row = [plain_cell(cell) for cell in row]  # a cell our CSVs defused for spreadsheets, as it was
    cells = tuple((row[i] if i < len(row) else "").strip() for i in range(1, attributes + 1))
    if not row[0].strip() or not any(cells):
        want = "path,label[,split]" if attributes == 1 else "a path and at least one attribute's value"
        raise DataError(f"{path}, row {line}: expected {want}, got {row!r}")
    raw = row[split_col] if split_col is not None and split_col < len(row) else ""
    split = raw.strip().lower() or None
    if split not in (None, *SPLIT_NAMES):
        raise DataError(f"{path}, row {line}: split {raw!r} is not one of {', '.join(SPLIT_NAMES)} (or empty)")
    return Entry(path.parent / row[0].strip(), cells[0], split, cells if attributes > 1 or ";" in cells[0] else ())


# ---------------------------------------------------------------- conversion and its cache


def cache_file(source: Path, contract: str) -> Path:
    """Where the conversions of ``source``'s photos by conversion ``contract`` are cached."""
    from platformdirs import user_cache_dir

    key = hashlib.sha256(str(source.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return Path(user_cache_dir("fashionclf")) / "photos" / f"{contract}-{key}.npz"


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"


def convert_file(path: Path, to_input: Callable[..., np.ndarray] = photo_to_28) -> tuple[str, np.ndarray | None, str]:
    """(SHA-256 of the bytes, the converted image or None, the error or "") of one photo."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", None, f"cannot read the file ({exc.strerror or exc})"
    digest = hashlib.sha256(data).hexdigest()
    try:
        return digest, to_input(data), ""
    except PhotoError as exc:  # every failure of the conversion (photos.per_file)
        return digest, None, str(exc)


def _load_cache(path: Path) -> dict[str, tuple[str, np.ndarray | None, str]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys, hashes, images, errors = z["keys"], z["hashes"], z["images"], z["errors"]
    except (OSError, ValueError, KeyError, EOFError):
        return {}  # absent or damaged: converted again
    return {str(k): (str(h), None if e else img, str(e)) for k, h, img, e in zip(keys, hashes, images, errors)}


def _save_cache(path: Path, cache: dict[str, tuple[str, np.ndarray | None, str]]) -> None:
    keys = list(cache)
    shape = next((v[1].shape for v in cache.values() if v[1] is not None), (0, 0))
    blank = np.zeros(shape, np.uint8)  # stands in for a failed conversion (its error says so)
    buf = io.BytesIO()
    np.savez(buf, keys=np.array(keys, dtype=str), hashes=np.array([cache[k][0] for k in keys], dtype=str),
             images=np.stack([cache[k][1] if cache[k][1] is not None else blank for k in keys])
             if keys else np.zeros((0, *shape), np.uint8),
             errors=np.array([cache[k][2] for k in keys], dtype=str))
    try:
        write_bytes_atomic(path, buf.getvalue())
    except OSError as exc:  # a read-only cache only costs time
        print(f"fashionclf: warning: cannot write the photo cache {path} ({exc})", file=sys.stderr)


def convert(entries: list[Entry], source: Path, contract: PhotoTarget | None = None, workers: int | None = None,
            progress: bool | None = None) -> Converted:
    """Convert every entry's photo for a model of ``contract`` (default: the 28x28 grey
    contract), cached, in parallel; unreadable ones are skipped and listed."""
    to_input, conversion = photo_converter(contract)
    cache_path = cache_file(source, conversion)
    cache = _load_cache(cache_path)
    keys: list[str | None] = []
    for e in entries:
        try:
            keys.append(_stat_key(e.path))
        except OSError:
            keys.append(None)
    todo = [(k, e.path) for k, e in zip(keys, entries) if k is not None and k not in cache]
    if todo:
        results = _convert_all([p for _, p in todo], to_input, workers or os.cpu_count() or 1)
        bar = tqdm(results, total=len(todo), desc=f"converting {source.name}", unit="photo", leave=False,
                   disable=None if progress is None else not progress)
        for (key, _), result in zip(todo, bar):
            cache[key] = result
        live = {k for k in keys if k is not None}
        _save_cache(cache_path, {k: v for k, v in cache.items() if k in live})
    kept, images, hashes, skipped = [], [], [], []
    for key, entry in zip(keys, entries):
        digest, image, error = cache[key] if key is not None else ("", None, "no such file")
        if image is None:
            skipped.append({"path": str(entry.path), "label": entry.label, "error": error})
            continue
        kept.append(entry)
        images.append(image)
        hashes.append(digest)
    return Converted(kept, np.stack(images) if images else np.zeros((0, 0, 0), np.uint8), hashes, skipped,
                     from_cache=len(entries) - len(todo))


def _convert_all(paths: list[Path], to_input: Callable[..., np.ndarray], workers: int):
    """``convert_file`` of each path, in order. Processes, not threads: the conversion holds
    the GIL for much of its time (threads: 1,230 photos/s with 1 or 2; 2 forked processes:
    2,670, against 1,560 in-process, on a 2-core AMD EPYC Zen 4). Forked, so workers start in milliseconds
    and import nothing; they run only Pillow and numpy. Small batches stay in-process."""
    if workers < 2 or len(paths) < PARALLEL_FROM or "fork" not in multiprocessing.get_all_start_methods():
        return map(functools.partial(convert_file, to_input=to_input), paths)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))

    def results():
        with pool:
            yield from pool.map(functools.partial(convert_file, to_input=to_input), paths, chunksize=64)

    return results()


# ---------------------------------------------------------------- splits and checks


def carve_splits(labels: np.ndarray, hashes: list[str], given: list[str | None], classes: list[str],
                 val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """The split of every photo: the shop's own where given; else, per class and seeded, a
    test share (only if no photo is marked test) and a validation share (only if none is
    marked val), at least one photo each, identical photos kept together."""
    split = np.array([s or "" for s in given], dtype=object)
    carve_test = "test" not in split and test_fraction > 0
    carve_val = "val" not in split and val_fraction > 0
    for c, name in enumerate(classes):
        # one generator per class, from the seed and the class name: a class's split does not
        # depend on which other classes are present
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8", "surrogateescape"))])
        # photos whose split is still open: unsplit ones, and train ones when val is carved
        open_ = [i for i in np.flatnonzero(labels == c) if split[i] == "" or (carve_val and split[i] == "train")]
        groups = sorted({hashes[i] for i in open_})
        rng.shuffle(groups)
        n = len(groups)
        unsplit = any(split[i] == "" for i in open_)
        n_test = max(1, round(n * test_fraction)) if carve_test and unsplit else 0
        n_val = max(1, round(n * val_fraction)) if carve_val else 0
        if n and n - n_test - n_val < 1:
            raise UsageError(
                f"class {name!r} has {n} distinct photo(s) to split; train, "
                f"{'validation, ' if n_val else ''}{'test, ' if n_test else ''}each need one: "
                f"{1 + (n_val > 0) + (n_test > 0)} or more are needed (add photos, or lower --val-fraction"
                f"{' / --test-fraction' if n_test else ''})")
        where = {g: ("test" if j < n_test else "val" if j < n_test + n_val else "train") for j, g in enumerate(groups)}
        for i in open_:
            if split[i] == "" or where[hashes[i]] == "val":
                split[i] = where[hashes[i]]
    return split.astype(str)


def find_duplicates(entries: list[Entry], hashes: list[str], splits: np.ndarray) -> dict:
    """Identical photos under two labels (label noise) or in two splits (leakage), with paths."""
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        by_hash.setdefault(h, []).append(i)
    noise, leakage = [], []
    for group in by_hash.values():
        if len(group) < 2:
            continue
        items = [{"path": str(entries[i].path), "label": ",".join(entries[i].tags), "split": str(splits[i])}
                 for i in group]
        if len({entries[i].tags for i in group}) > 1:
            noise.append(items)
        if len({splits[i] for i in group}) > 1:
            leakage.append(items)
    return {"label_noise": noise, "leakage": leakage}
