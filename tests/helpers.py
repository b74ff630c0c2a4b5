"""Test helpers shared by the test modules (and the benchmarks): synthetic IDX data, a saved
checkpoint, catalogue-style photos made from dataset images, a free port."""

from __future__ import annotations

import gzip
import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_COUNT = 10


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
    """Four synthetic IDX files in Fashion-MNIST's layout (labels cycle through the ten classes)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % CLASS_COUNT
        rng.shuffle(labels)
        prefix = "train" if split == "train" else "t10k"
        write_idx(directory / f"{prefix}-images-idx3-ubyte", synthetic_images(labels, seed + n), compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return directory


def save_untrained_checkpoint(path: Path, model: str = "fast-cnn", classes: list[str] | None = None,
                              **extra) -> Path:
    """A checkpoint of a freshly initialised (seeded) registered model, as training writes it."""
    import torch

    from fashionclf.data.fashion_mnist import CLASSES
    from fashionclf.inference.checkpoint import Checkpoint, save_checkpoint
    from fashionclf.models import create_model, get_model_entry

    torch.manual_seed(0)
    classes = list(classes or CLASSES)
    contract = get_model_entry(model).contract
    ckpt = Checkpoint.of(create_model(model, num_classes=len(classes)), model=model,
                         model_kwargs={"in_chans": contract.channels}, classes=classes,
                         class_indices=list(range(len(classes))), contract=contract, config={}, **extra)
    save_checkpoint(ckpt, path)
    return path


@contextmanager
def server_process(model, *args):
    """`fashionclf serve MODEL ARGS` in its own process, on a free port; yields (base URL, process)."""
    import httpx

    port = free_port()
    log_path = Path(model).parent / f"server-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fashionclf", "serve", str(model), "--port", str(port), *args],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"server did not start: {log_path.read_text()}")
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def running_server(model, *args):
    """`fashionclf serve MODEL ARGS` in its own process, on a free port; yields the base URL."""
    with server_process(model, *args) as (url, _):
        yield url


@contextmanager
def app_server(app, **config):
    """A real uvicorn server for ``app`` in a thread, on a free port; yields its URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dataset_like_image() -> np.ndarray:
    """A light 'garment' on black, as in Fashion-MNIST: centred, its longest side (height)
    spanning all 28 rows; a trapezoid, wider and brighter at the bottom."""
    img = np.zeros((28, 28), np.uint8)
    for r in range(28):
        half = 6 + r // 4
        img[r, 14 - half : 14 + half] = 110 + 5 * r
    return img


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (wrong) body: a bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


CATALOGUE_FORMATS = ("jpeg", "png", "png-rgba", "webp", "gif", "jpeg-grey", "png-16bit", "jpeg-cmyk",
                     "jpeg-exif-rotated")


def catalogue_photo(image: np.ndarray, rng: np.random.Generator, fmt: str = "jpeg",
                    colour: tuple[float, float, float] | None = None) -> bytes:
    """A Fashion-MNIST image turned back into a catalogue-style photo, for tests and benchmarks:
    un-negated (dark item on a white background), coloured (``colour``, RGB 0-255, or a random
    dark-to-mid colour), upscaled 6-12x, placed off-centre on a larger white canvas, saved as
    ``fmt`` (one of ``CATALOGUE_FORMATS``)."""
    v = image.astype(np.float32)[..., None] / 255.0  # item strength
    colour = rng.uniform(0.0, 0.6, size=3) * 255 if colour is None else np.asarray(colour, np.float32)
    rgb = (1 - v) * 255 + v * colour
    item = Image.fromarray(rgb.round().astype(np.uint8), "RGB")
    side = int(rng.integers(6, 13)) * 28
    item = item.resize((side, side), Image.Resampling.BICUBIC)
    canvas_w, canvas_h = side + int(rng.integers(10, side)), side + int(rng.integers(10, side))
    canvas = Image.new("RGB", (canvas_w, canvas_h), (255, 255, 255))
    offset = (int(rng.integers(0, canvas_w - side + 1)), int(rng.integers(0, canvas_h - side + 1)))
    canvas.paste(item, offset)
    buf = io.BytesIO()
    if fmt == "jpeg":
        canvas.save(buf, "JPEG", quality=85)
    elif fmt == "png":
        canvas.save(buf, "PNG")
    elif fmt == "png-rgba":  # transparent background: alpha carries the item
        alpha = Image.new("L", canvas.size, 0)
        alpha.paste(Image.fromarray((v[..., 0] * 255).astype(np.uint8)).resize((side, side)), offset)
        rgba = canvas.copy()
        rgba.putalpha(alpha)
        rgba.save(buf, "PNG")
    elif fmt == "webp":
        canvas.save(buf, "WEBP", quality=85)
    elif fmt == "gif":  # palette mode
        canvas.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "GIF")
    elif fmt == "jpeg-grey":
        canvas.convert("L").save(buf, "JPEG", quality=85)
    elif fmt == "png-16bit":
        grey = np.asarray(canvas.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(buf, "PNG")
    elif fmt == "jpeg-cmyk":
        canvas.convert("CMYK").save(buf, "JPEG", quality=90)
    elif fmt == "jpeg-exif-rotated":  # stored turned 90 degrees, with the EXIF tag that undoes it
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
        canvas.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=85, exif=exif)
    else:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(CATALOGUE_FORMATS)}")
    return buf.getvalue()


def write_photo_folder(root: Path, counts: dict[str, int], seed: int = 0, fmt: str = "png",
                       split: str | None = None) -> dict[str, list[Path]]:
    """A shop's folder of class folders (``root/[split/]<class>/NNN.<fmt>``) holding distinct
    synthetic garment images, ``counts[class]`` each: as 28x28 PNGs (``fmt="png"``) or as
    catalogue-style JPEGs (``fmt="jpeg"``). Returns the paths per class."""
    rng = np.random.default_rng(seed)
    written = {}
    for c, (name, n) in enumerate(counts.items()):
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True, exist_ok=True)
        images = synthetic_images(np.full(n, c % CLASS_COUNT), seed=int(rng.integers(1 << 30)))
        paths = []
        for i, image in enumerate(images):
            path = folder / f"{i:03d}.{'png' if fmt == 'png' else 'jpg'}"
            path.write_bytes(png_bytes(Image.fromarray(image)) if fmt == "png" else catalogue_photo(image, rng))
            paths.append(path)
        written[name] = paths
    return written


def ztxt_bomb_png() -> bytes:
    """A 20 kB PNG whose zTXt chunk inflates to 20 MB, past Pillow's text limit (ValueError in
    ``Image.open``)."""
    img = Image.fromarray(np.full((40, 40), 200, np.uint8))
    png = png_bytes(img)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return png[:33] + chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (20 << 20), 9)) + png[33:]


def other_format(fmt: str) -> bytes:
    """A small image in a format Pillow reads but photos must not reach (EPS, ICO, TGA, PCX, ...)."""
    img = Image.fromarray(np.full((32, 32), 90, np.uint8)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def hostile_files() -> dict[str, tuple[bytes, str]]:
    """Bad inputs every per-file path must survive: name -> (bytes, the error kind expected)."""
    return {
        "ztxt-bomb.png": (ztxt_bomb_png(), "unreadable"),
        "header-bomb.png": (png_header_only(40_000, 40_000), "too_large"),
        "cut.png": (png_header_only(100, 100), "unreadable"),
        "garbage.jpg": (b"\xff\xd8\xff\xe0 garbage", "unreadable"),
        "empty.png": (b"", "unreadable"),
        "text.jpg": (b"%PDF-1.4 not a photo", "unsupported"),
        "vector.eps": (other_format("EPS"), "unsupported"),
        "icon.ico": (other_format("ICO"), "unsupported"),
        "targa.tga": (other_format("TGA"), "unsupported"),
        "paint.pcx": (other_format("PCX"), "unsupported"),
    }


TAGGED_CATEGORIES = {"top": 0, "trousers": 1, "shoe": 7}  # names -> synthetic garment classes
TAGGED_COLOURS = {"red": (190, 45, 45), "blue": (45, 80, 215)}  # nearly the same brightness


def write_tagged_shop(root: Path, per_category: int = 24, seed: int = 0, unlabelled_every: int = 7) -> Path:
    """A shop's multi-attribute manifest ``root/tags.csv`` over catalogue JPEGs in ``root/photos``:
    ``path,category,colour,looks,split`` where category is the garment, colour its tint (red or
    blue of the same brightness: only a colour model tells them apart), looks a multi-label
    attribute ("warm" for red, "cool" for blue, "upper" for tops, "lower" otherwise: ``;``
    joined), every ``unlabelled_every``-th colour cell left empty, and the last quarter of each
    category marked test. Returns the manifest's path."""
    rng = np.random.default_rng(seed)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    lines, n = ["path,category,colour,looks,split"], 0
    for category, garment in TAGGED_CATEGORIES.items():
        for i, image in enumerate(synthetic_images(np.full(per_category, garment), seed=int(rng.integers(1 << 30)))):
            colour = list(TAGGED_COLOURS)[int(rng.integers(2))]
            tint = np.clip(np.add(TAGGED_COLOURS[colour], rng.uniform(-10, 10, 3)), 0, 255)
            name = f"photos/{category}-{i:03d}.jpg"
            (root / name).write_bytes(catalogue_photo(image, rng, colour=tuple(tint)))
            looks = ("warm" if colour == "red" else "cool") + ";" + ("upper" if category == "top" else "lower")
            n += 1
            split = "test" if i >= per_category * 3 // 4 else ""
            lines.append(f"{name},{category},{'' if n % unlabelled_every == 0 else colour},{looks},{split}")
    (root / "tags.csv").write_text("\n".join(lines) + "\n")
    return root / "tags.csv"
