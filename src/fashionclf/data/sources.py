"""What ``--data PATH`` points at, turned into a ``Dataset``: the one entry point for
train, evaluate and ``fashionclf data``.

A path is, in this order: a folder holding the four Fashion-MNIST IDX files
(``fashionclf.data.fashion_mnist``); a ``.csv`` manifest; a folder of class folders or of
``train|val|test`` split folders (``fashionclf.data.photo_folders``). No path means Fashion-MNIST,
searched in the usual places. Several photo sources combine (the review loop trains on a
labelled folder plus the reviewed one); classes are the union of their names, sorted.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fashionclf.data.attributes import UNLABELLED, Schema, recode
from fashionclf.data.fashion_mnist import Dataset, ImageSet, class_counts, holds_fashion_mnist, make_splits
from fashionclf.data.fashion_mnist import load_dataset as load_fashion_mnist
from fashionclf.data.photo_folders import SPLIT_NAMES, Entry, carve_splits, find_duplicates, read_manifest, scan_folder
from fashionclf.data.photo_folders import convert as convert_photos
from fashionclf.data.photos import PhotoTarget
from fashionclf.data.split import SplitSettings
from fashionclf.errors import DataError, UsageError

PHOTO_VERIFICATION = "photos (no published checksums)"


def as_list(sources) -> list[str]:
    if sources is None:
        return []
    return [str(sources)] if isinstance(sources, (str, os.PathLike)) else [str(s) for s in sources]


def kind_of(path: str) -> str:
    """"idx", "csv" or "folder"; a path that is none of those is a usage error saying what would work."""
    p = Path(path)
    if p.is_dir():
        return "idx" if holds_fashion_mnist(p) else "folder"
    if p.is_file() and p.suffix.lower() == ".csv":
        return "csv"
    if not p.exists():
        raise DataError(f"--data {path}: no such file or folder; expected a folder of class folders, "
                        "a CSV manifest (path,label[,split]) or a folder with the Fashion-MNIST IDX files "
                        "(leave --data out to use Debian's dataset-fashion-mnist or the download)")
    raise DataError(f"--data {path}: a file that is not a .csv manifest; pass a folder of class folders, "
                    "a CSV manifest (path,label[,split]) or a folder with the Fashion-MNIST IDX files")


def is_fashion_mnist(sources) -> bool:
    paths = as_list(sources)
    return not paths or [kind_of(p) for p in paths] == ["idx"]


def load_data(sources=None, classes: str | list | None = None, verify: bool = True,
              split: SplitSettings = SplitSettings(), download: bool = True,
              log: Callable[[str], None] | None = None, contract: PhotoTarget | None = None) -> Dataset:
    """The dataset of ``sources`` (paths, see the module docstring), restricted to ``classes``.
    Photos are converted for a model of ``contract`` (``photos.photo_converter``) and
    split as ``split`` says where they have no splits of their own."""
    paths = as_list(sources)
    kinds = [kind_of(p) for p in paths]
    if not paths or kinds == ["idx"]:
        return load_fashion_mnist(paths[0] if paths else None, classes, verify=verify, download=download)
    if "idx" in kinds:
        raise UsageError("Fashion-MNIST IDX files cannot be combined with photo folders in one run; "
                         "pass either one IDX folder or photo sources (folders, CSV manifests)")
    return load_photos(paths, kinds, classes, split, log or (lambda _: None), contract)


@dataclass
class Photos:
    """Every labelled photo of some sources, converted, restricted to the chosen classes."""

    paths: list[str]  # the sources
    entries: list[Entry]
    images: np.ndarray
    labels: np.ndarray  # indices into ``classes``
    hashes: list[str]  # SHA-256 of each photo's file
    classes: list[str]
    skipped: list[dict]
    ignored: list[str]
    cached: int
    schema: Schema  # the attributes; one single-valued attribute: ``labels`` is (N,), else (N, width)
    decisions: dict = dataclasses.field(default_factory=dict)  # ``apply_decisions``' counts, when a source is one


def gather_photos(paths: list[str], kinds: list[str], classes, contract: PhotoTarget | None = None) -> Photos:
    """Find and convert the photos of every source (``kinds``: "csv" or "folder")."""
    entries, arrays, hashes, skipped, ignored, cached, decided = [], [], [], [], [], 0, []
    attributes: tuple[str, ...] = ("label",)
    for path, kind in zip(paths, kinds):
        p = Path(path)
        if kind == "csv":
            manifest = read_manifest(p)
            found, ign = manifest.entries, []
            attributes = merged_attributes(attributes, manifest.attributes, path)
        else:
            found, ign = scan_folder(p)
        if not found:
            raise DataError(f"--data {path}: no photos found; expected {p}/<class>/*.jpg (or .png, .webp, ...), "
                            f"{p}/train/<class>/..., or a CSV manifest")
        converted = convert_photos(found, p, contract)
        decided += [kind == "csv" and is_decisions(p)] * len(converted.entries)
        entries += converted.entries
        arrays.append(converted.images)
        hashes += converted.hashes
        skipped += converted.skipped
        ignored += ign
        cached += converted.from_cache
    images, decisions = np.concatenate(arrays), {}
    if any(decided):
        entries, images, hashes, decisions = apply_decisions(entries, images, hashes, decided, len(attributes))
    rows = [e.tags + ("",) * (len(attributes) - len(e.tags)) for e in entries]
    schema = Schema.from_cells(list(attributes), rows)
    if not schema.single:
        return tagged_photos(paths, entries, images, hashes, schema, rows, classes,
                             (skipped, ignored, cached, decisions))
    names = sorted({e.label for e in entries} | {s["label"] for s in skipped})
    wanted = select_names(names, classes)
    for name in wanted:
        if not any(e.label == name for e in entries):
            bad = sum(s["label"] == name for s in skipped)
            raise DataError(f"class {name!r}: all {bad} of its photos are unreadable (first: "
                            f"{next(s for s in skipped if s['label'] == name)['error']}); fix or remove them")
    keep = [i for i, e in enumerate(entries) if e.label in wanted]
    entries = [entries[i] for i in keep]
    return Photos(paths, entries, images[keep], np.array([wanted.index(e.label) for e in entries],
                  dtype=np.int64), [hashes[i] for i in keep], wanted, skipped, ignored, cached,
                  Schema.one(wanted, attributes[0]), decisions)


DECISIONS_NAME = "decisions.csv"  # a manifest whose name ends so is a review's decisions
NOT_OURS = "_unknown"  # a review's "not one of our items"


def is_decisions(path: Path) -> bool:
    return path.name.lower().endswith(DECISIONS_NAME)


def apply_decisions(entries: list[Entry], images: np.ndarray, hashes: list[str], decided: list[bool],
                    attributes: int) -> tuple[list[Entry], np.ndarray, list[str], dict]:
    """A review's decisions (``fashionclf review``) over the other sources: a decided photo
    (the same file, by SHA-256) takes the decision's values where it gives one and keeps its
    other values; one marked ``_unknown`` (not one of our items) is left out; a decided photo
    no other source has is added. So a corrected label is not identical photos under two
    labels (label noise): it is one photo, decided."""
    decision = {h: e for h, e, d in zip(hashes, entries, decided) if d}
    merged, keep, covered = [], [], set()
    for i, (e, h, d) in enumerate(zip(entries, hashes, decided)):
        if d and h in covered:
            continue  # merged into the photo another source has
        if not d and h in decision:
            theirs = decision[h].tags + ("",) * (attributes - len(decision[h].tags))
            ours = e.tags + ("",) * (attributes - len(e.tags))
            cells = tuple(t or o for t, o in zip(theirs, ours))
            e = dataclasses.replace(e, label=cells[0], cells=cells if attributes > 1 or ";" in cells[0] else ())
            covered.add(h)
        if e.label == NOT_OURS:
            continue
        merged.append(e)
        keep.append(i)
    counts = {"decided": len(decision), "overriding": len(covered),
              "not_ours": sum(e.label == NOT_OURS for e in decision.values()),
              "added": len(decision) - len(covered)}
    return merged, images[keep], [hashes[i] for i in keep], counts


def merged_attributes(so_far: tuple[str, ...], found: tuple[str, ...], path: str) -> tuple[str, ...]:
    """The attributes of sources read together: a one-attribute source (a folder, a
    ``path,label`` manifest) fills the first attribute of the others; two sources with several
    attributes must name the same ones."""
    if len(found) == 1:
        return so_far
    if len(so_far) > 1 and so_far != found:
        raise DataError(f"--data {path}: its attributes {', '.join(found)} differ from another source's "
                        f"{', '.join(so_far)}; give the manifests the same header")
    return found


def tagged_photos(paths: list[str], entries: list, images: np.ndarray, hashes: list[str], schema: Schema,
                  rows: list[tuple[str, ...]], classes, problems: tuple) -> Photos:
    """Photos of several attributes (or a multi-label one): a label matrix (``Schema.encode``)."""
    if classes not in (None, "", "all"):
        raise UsageError("--classes chooses among one attribute's classes; this data has attributes "
                         f"{', '.join(schema.names)}: leave --classes out, or drop columns from the manifest")
    if schema.first.multi:
        raise DataError(f"attribute {schema.first.name!r}, the first column after path, holds several values per "
                        "photo (';'); the first attribute is the category (one value per photo, the unknown score "
                        "comes from it): put a single-valued column first")
    for attr in schema.attributes:
        if len(attr.values) < (1 if attr.multi else 2):
            raise DataError(f"attribute {attr.name!r} has {len(attr.values)} value(s) ({', '.join(attr.values)}); "
                            "a single-valued attribute needs 2 or more (give its photos their values, or drop the column)")
    skipped, ignored, cached, decisions = problems
    return Photos(paths, entries, images, schema.encode(rows), hashes, list(schema.first.values), skipped, ignored,
                  cached, schema, decisions)


def load_photos(paths: list[str], kinds: list[str], classes, split: SplitSettings, log: Callable[[str], None],
                contract: PhotoTarget | None = None) -> Dataset:
    """Photos to train on: split as the shop gave them, the rest carved (``carve_splits``)."""
    photos = gather_photos(paths, kinds, classes, contract)
    strata, names = photos.labels, photos.classes
    if not photos.schema.single:  # stratified on the first attribute; photos without it form one more stratum
        first = photos.schema.category(photos.labels)
        strata, names = np.where(first == UNLABELLED, len(names), first), [*names, f"(no {photos.schema.first.name})"]
    splits = carve_splits(strata, photos.hashes, [e.split for e in photos.entries], names,
                          split.val_fraction, split.test_fraction, split.seed)
    for needed in ("train", "test"):
        if needed not in splits:
            raise UsageError(f"no {needed} photos: give a {needed} split or a --test-fraction above 0")
    return photo_dataset(photos, splits, log)


def count_photos(sources, classes=None) -> tuple[int, bool]:
    """How many photos ``sources`` label (of ``classes``, when a subset is chosen) and whether
    any of them has a split of its own, from the folders' and manifests' listings alone (no
    photo is opened): what ``train`` decides from before it loads them."""
    paths = as_list(sources)
    entries: list[Entry] = []
    for path, kind in zip(paths, [kind_of(p) for p in paths]):
        entries += read_manifest(Path(path)).entries if kind == "csv" else scan_folder(Path(path))[0]
    if classes not in (None, "", "all"):
        wanted = set(select_names(sorted({e.label for e in entries}), classes))
        entries = [e for e in entries if e.label in wanted]
    return sum(1 for e in entries if any(e.tags)), any(e.split for e in entries)


def load_every_photo(paths: list[str], classes, log: Callable[[str], None],
                     contract: PhotoTarget | None = None) -> Dataset:
    """Every labelled photo of ``paths`` in the train split, none held out (a model trained on
    all of them is calibrated on cross-fitted answers instead: ``fashionclf.training.crossfit``)."""
    photos = gather_photos(paths, [kind_of(p) for p in paths], classes, contract)
    given = sorted({e.split for e in photos.entries if e.split})
    if given:
        raise UsageError(f"--calibration crossfit trains on every photo, but the data gives splits of its own "
                         f"({', '.join(given)}): leave --calibration out to keep them")
    return photo_dataset(photos, np.full(len(photos.entries), "train"), log)


def load_photos_to_score(sources, seen: dict[str, set[str]], contract: PhotoTarget | None = None,
                         log: Callable[[str], None] | None = None) -> Dataset:
    """Every labelled photo of ``sources`` for a model to be scored on, whatever split folder or
    manifest column holds it: the photos it trained on or validated on (their SHA-256 in
    ``seen["train"]`` / ``seen["val"]``, as its checkpoint records them) become the train and
    val splits, every other photo the test split."""
    paths = as_list(sources)
    photos = gather_photos(paths, [kind_of(p) for p in paths], None, contract)
    splits = np.array(["train" if h in seen["train"] else "val" if h in seen["val"] else "test"
                       for h in photos.hashes], dtype=str)
    return photo_dataset(photos, splits, log or (lambda _: None))


def photo_dataset(photos: Photos, splits: np.ndarray, log: Callable[[str], None]) -> Dataset:
    """``photos`` as a Dataset split by ``splits`` (one split name per photo), their problems logged."""
    sets = {s: ImageSet(photos.images[splits == s], photos.labels[splits == s]) for s in SPLIT_NAMES}
    problems = {"skipped": photos.skipped, "ignored": photos.ignored, **({"decisions": photos.decisions}
                                                                         if photos.decisions else {}),
                **find_duplicates(photos.entries, photos.hashes, splits)}
    log_problems(len(photos.entries), len(photos.classes), photos.paths, photos.cached, problems, log)
    hashes = {s: [h for h, where in zip(photos.hashes, splits) if where == s] for s in SPLIT_NAMES}
    return Dataset(train=sets["train"], test=sets["test"], val=sets["val"], classes=photos.classes,
                   class_indices=list(range(len(photos.classes))), source="; ".join(photos.paths),
                   verification=PHOTO_VERIFICATION, problems=problems, hashes=hashes,
                   schema=None if photos.schema.single else photos.schema)


def select_names(names: list[str], classes: str | list | None) -> list[str]:
    """``names`` or the subset ``classes`` (comma-separated or a list, in that order)."""
    if classes in (None, "", "all"):
        chosen = names
    else:
        chosen = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
        unknown = [c for c in chosen if c not in names]
        if unknown:
            raise UsageError(f"class {unknown[0]!r} is not in the data; its classes are: {', '.join(names)}")
    if len(chosen) < 2:
        raise DataError(f"a classifier needs at least 2 classes, the data has {len(chosen)}: {', '.join(chosen)}; "
                        "expected one folder (or CSV label) per class")
    return chosen


def log_problems(count: int, k: int, paths: list[str], cached: int, problems: dict, log: Callable[[str], None]) -> None:
    log(f"photos: {count:,} in {k} classes from {', '.join(paths)} ({cached:,} conversions from the cache)")
    if problems["skipped"]:
        first = problems["skipped"][0]
        log(f"warning: {len(problems['skipped'])} unreadable file(s) skipped (listed in metrics.json), "
            f"e.g. {first['path']}: {first['error']}")
    if problems.get("decisions"):
        d = problems["decisions"]
        log(f"decisions: {d['decided']} photo(s) decided in review, {d['overriding']} over their folder's or "
            f"manifest's values, {d['not_ours']} not one of our items (left out)")
    if problems["ignored"]:
        log(f"note: {len(problems['ignored'])} file(s) without an image suffix ignored, e.g. {problems['ignored'][0]}")
    for key, what in (("label_noise", "under two labels (label noise)"), ("leakage", "in two splits (leakage)")):
        if problems[key]:
            example = ", ".join(f"{i['path']} [{i['label']}, {i['split']}]" for i in problems[key][0])
            log(f"warning: {len(problems[key])} identical photo group(s) {what}, e.g. {example}")


def first_labels(dataset: Dataset, labels: np.ndarray) -> np.ndarray:
    """The first attribute's value indices of ``labels`` (photos without one left out)."""
    if dataset.schema is None:
        return labels
    first = dataset.schema.category(labels)
    return first[first != UNLABELLED]


FEW_PHOTOS = 5  # training photos below which a value is reported as too few to learn from


def attribute_tables(schema: Schema, labels: dict[str, np.ndarray]) -> list[dict]:
    """Per attribute: its values' counts per split, the photos not labelled for it per split,
    and its problems (a value with fewer than ``FEW_PHOTOS`` training photos; a value seen in
    test but never in train, which no model can learn and which is scored as wrong)."""
    tables = []
    for a, attr in enumerate(schema.attributes):
        counts = {s: schema.counts(y, a).tolist() for s, y in labels.items()}
        problems = []
        for i, value in enumerate(attr.values):
            train, test = counts["train"][i], counts["test"][i]
            if train == 0 and test:
                problems.append(f"{value!r} is in test ({test}) but not in train: no model can learn it; "
                                "its test photos are scored as wrong")
            elif 0 < train < FEW_PHOTOS:
                problems.append(f"{value!r} has only {train} training photo(s); {FEW_PHOTOS} or more are advised")
        tables.append({"name": attr.name, "multi": attr.multi, "values": list(attr.values), "counts": counts,
                       "unlabelled": {s: int((~schema.labelled(y, a)).sum()) for s, y in labels.items()},
                       "problems": problems})
    return tables


def relabel(dataset: Dataset, classes: list[str], schema: Schema | None = None) -> Dataset:
    """``dataset`` with its labels renumbered to ``classes`` (a model's class order), or to a
    model of several attributes' ``schema`` (``attributes.recode``); a class the model does not
    know is a usage error."""
    if schema is not None:
        source = dataset.schema or Schema.one(dataset.classes)
        try:
            def re_all(s: ImageSet | None) -> ImageSet | None:
                return None if s is None else ImageSet(s.images, recode(s.labels, source, schema))

            return dataclasses.replace(dataset, train=re_all(dataset.train), test=re_all(dataset.test),
                                       val=re_all(dataset.val), classes=list(schema.first.values),
                                       class_indices=list(range(len(schema.first.values))), schema=schema)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    unknown = [c for c in dataset.classes if c not in classes]
    if unknown:
        raise UsageError(f"the data has class(es) {', '.join(map(repr, unknown))} that the model does not know; "
                         f"its classes are: {', '.join(classes)}")
    mapping = np.array([classes.index(c) for c in dataset.classes], dtype=np.int64)

    def re(s: ImageSet | None) -> ImageSet | None:
        return None if s is None else ImageSet(s.images, mapping[s.labels])

    return Dataset(re(dataset.train), re(dataset.test), list(classes), list(range(len(classes))), dataset.source,
                   dataset.verification, dataset.files, re(dataset.val), dataset.problems, dataset.hashes)


def describe(sources=None, classes: str | None = None, verify: bool = True, split: SplitSettings = SplitSettings(),
             grid: str | os.PathLike | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Where the data was found, its verification, per-class counts per split (the same table
    for Fashion-MNIST and for photos), problems found; optionally a labelled grid of sample
    training images saved to ``grid``."""
    dataset = load_data(sources, classes, verify, split, log=log)
    splits = make_splits(dataset, split.val_fraction, split.seed)
    k = len(dataset.classes)
    info = {
        "source": str(dataset.source),
        "files": dataset.files,
        "verification": dataset.verification,
        "classes": dataset.classes,
        "counts": {s: class_counts(first_labels(dataset, splits.of(s)[1].numpy()), k) for s in ("train", "val", "test")},
        "problems": {key: len(v) for key, v in dataset.problems.items() if isinstance(v, list)},
    }
    if dataset.schema is not None:
        info["attributes"] = attribute_tables(dataset.schema, {s: splits.of(s)[1].numpy() for s in ("train", "val", "test")})
    if grid is not None:
        from fashionclf.evaluation.plots import plot_sample_grid, save

        fig = plot_sample_grid(dataset.train.images, dataset.train.labels, dataset.classes, seed=split.seed).figure
        save(fig, grid)
        info["grid"] = str(grid)
    return info
