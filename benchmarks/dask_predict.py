"""Batch tagging on a local Dask cluster against one process, on the same catalogue JPEGs.

    python benchmarks/dask_predict.py MODEL.pt [--files 10000] [--workers 2]

Writes ``--files`` catalogue-style JPEGs (``tests/helpers.py``) to a temporary folder, then
tags them with ``fashionclf.inference.predict.tag_files`` in this process (ONNX Runtime) and with
``--dask local:N`` (the cluster's start included, as a user's run includes it). Prints
images/s of both, and the cost per chunk of the Dask run beyond the one-process time.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


def main() -> int:
    from helpers import catalogue_photo

    from fashionclf.data.fashion_mnist import load_dataset
    from fashionclf.device import cpu_info
    from fashionclf.inference.predict import TagSettings, tag_files
    from fashionclf.scale.cluster import CHUNK

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    images = load_dataset(None).test.images
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "photos")
        folder.mkdir()
        for i in range(args.files):
            (folder / f"{i:06d}.jpg").write_bytes(catalogue_photo(images[i % len(images)], rng, "jpeg"))
        times = {}
        for name, dask in (("one process", None), (f"dask local:{args.workers}", f"local:{args.workers}")):
            t0 = time.perf_counter()
            counts = tag_files(args.model, [str(folder)], io.StringIO(),
                               TagSettings(backend="onnx", progress=False, dask=dask))
            times[name] = time.perf_counter() - t0
            assert counts["rows"] == args.files and counts["failed"] == 0, counts
    chunks = -(-args.files // CHUNK)
    print(f"CPU: {cpu_info()['label']}; {args.files:,} catalogue JPEGs, {args.model}, ONNX Runtime\n")
    print("| run | seconds | images/s |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.1f} | {args.files / seconds:,.0f} |")
    extra = list(times.values())[1] - list(times.values())[0]
    print(f"\n{chunks} chunks of {CHUNK}: the Dask run took {extra:+.1f} s against one process, "
          f"{1000 * extra / chunks:+.0f} ms per chunk (cluster start included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
