"""Batch tagging on a Dask cluster: ``fashionclf predict MODEL INPUT... --dask ADDRESS``.

The inputs are listed on the client (the same walk as a local run), cut into chunks of
``CHUNK`` paths, and each chunk is a Dask task: a worker loads the model once per process
(ONNX Runtime by default), converts and tags the chunk's files with the very code of a local
run (``tagging.classify``), and sends the rows back. The client writes them in input order
with the same writer, so the CSV/JSON, the per-file errors and the exit status are those of
a local run. A worker that dies has its chunks run again elsewhere by Dask's scheduler; each
chunk's rows are written once, when its result arrives. Every worker must see the files at
the paths the client sends (absolute paths: a shared file system, or ``local:N``).

``ADDRESS``: ``local:N`` starts a cluster of N worker processes on this machine (one thread
each) for the run; anything else is a scheduler address (``tcp://host:8786``) of a cluster
started with ``dask scheduler`` and ``dask worker``. Dask is optional:
``pip install 'fashionclf[scale]'``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator

from fashionclf.errors import UsageError
from fashionclf.training.config import PREDICT_BATCH_SIZE

CHUNK = 256  # paths per task: ~0.3 s of work on one core, so Dask's per-task cost (~ms) stays small
IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: enough to keep it busy, few rows held on the client


@contextlib.contextmanager
def connect(address: str) -> Iterator:
    """A Dask client for ``address``; ``local:N`` starts a local cluster for the block's length."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--dask needs Dask: pip install 'fashionclf[scale]'") from None
    if address.startswith("local:"):
        count = address.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"--dask local:N takes a number of worker processes, e.g. local:2; got {address!r}")
        with LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout="10s")
    except OSError as exc:
        raise UsageError(f"--dask {address}: no Dask scheduler answers there ({exc}); start one with 'dask scheduler' "
                         "and workers with 'dask worker ADDRESS', or use --dask local:N") from None
    with client:
        yield client


@functools.lru_cache(maxsize=4)
def worker_classifier(checkpoint: str, backend: str, threads: int):
    """The model, loaded once per worker process (Dask runs the tasks of a process in it)."""
    from fashionclf.inference.classifier import load_classifier

    return load_classifier(checkpoint, backend, threads=threads)


def tag_chunk(checkpoint: str, backend: str, paths: list[str], top_k: int, batch_size: int,
              min_confidence: float) -> list:
    """One task: the rows of ``paths`` (a local run's rows, errors included)."""
    from fashionclf.inference.tagging import classify

    classifier = worker_classifier(checkpoint, backend, 1)
    return list(classify(classifier, [Path(p) for p in paths], top_k, batch_size, min_confidence))


def dask_classify(address: str, checkpoint: str | os.PathLike, backend: str, paths: Iterable[Path], top_k: int = 1,
                  batch_size: int = PREDICT_BATCH_SIZE, min_confidence: float = 0.0) -> Iterator:
    """Rows for ``paths`` in order, computed on the cluster at ``address``."""
    with connect(address) as client:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        window = IN_FLIGHT_PER_WORKER * workers
        model = str(Path(checkpoint).resolve())
        pending: collections.deque = collections.deque()
        iterator = iter(paths)
        while chunk := list(itertools.islice(iterator, CHUNK)):
            shown = [str(p) for p in chunk]
            future = client.submit(tag_chunk, model, backend, [str(Path(p).absolute()) for p in chunk], top_k,
                                   batch_size, min_confidence, pure=False)
            pending.append((shown, future))
            while len(pending) >= window:
                yield from _rows(*pending.popleft())
        while pending:
            yield from _rows(*pending.popleft())


def _rows(shown: list[str], future) -> Iterator:
    for name, row in zip(shown, future.result()):
        row.path = name  # as the user gave it, not the absolute path the worker opened
        yield row
