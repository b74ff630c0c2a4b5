"""Run folders: which folder is a run, and the claim a training run holds on its folder.

A folder is a *run* when it holds ``config.json`` or ``model.pt``. ``fashionclf train``
refuses to write into a run (it would replace a model someone made) unless asked:
``exist_ok`` reuses it on purpose, ``resume`` continues it. While a run writes, it holds an
exclusive lock on ``DIR/.lock`` (``fcntl.flock``), so two runs started at once with the same
folder cannot both write there: the second is refused at once, with the first one's pid.
The lock goes with the process (a killed run leaves no stale claim); the empty ``.lock``
file stays, because deleting a lock file races with a process about to take it.

This module imports nothing of fashionclf but its errors (no torch).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fashionclf.errors import UsageError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked there
    fcntl = None

RUN_FILES = ("config.json", "model.pt")
LOCK_FILE = ".lock"


class RunBusy(UsageError):
    """Another process is writing the run folder."""


def is_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a run (its config.json or model.pt)."""
    return any((Path(folder) / name).exists() for name in RUN_FILES)


def check_new(folder: str | os.PathLike, exist_ok: bool = False) -> None:
    """Refuse ``folder`` when it already holds a run, unless ``exist_ok``: one line that names
    the two ways on (the command line's flags ``--exist-ok`` and ``--resume``)."""
    if not exist_ok and is_run(folder):
        held = " and ".join(name for name in RUN_FILES if (Path(folder) / name).exists())
        raise UsageError(f"--out {folder} already holds a run ({held}); choose a new --out, continue it with "
                         f"--resume {folder}, or pass --exist-ok to write over it")


@contextmanager
def claim(folder: str | os.PathLike, exist_ok: bool = False, resume: bool = False,
          wait: bool = False) -> Iterator[Path]:
    """Create ``folder`` if needed, lock it for this process and, unless ``resume`` or
    ``exist_ok``, check that it is not a run already (after locking, so that of two runs
    started at once exactly one proceeds). ``wait``: block until another holder lets go
    instead of refusing. Yields the folder; the lock is released on exit."""
    path = Path(folder)
    if resume and not path.is_dir():
        raise UsageError(f"--resume {path}: no such run folder; pass the --out folder of the run to continue")
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK_FILE, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.seek(0)
                pid = handle.read().strip() or "?"
                raise RunBusy(f"--out {path}: another fashionclf process (pid {pid}) is writing this run folder; "
                              "wait for it to end or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        if not resume:
            check_new(path, exist_ok)
        yield path
    finally:
        handle.close()  # closing the file releases the lock
