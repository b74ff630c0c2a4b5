"""Writing and reading files safely: atomic writes, JSON, ``torch.load`` without pickled code.

Imports nothing from fashionclf but its error types, so any module may use it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from fashionclf.errors import UsageError


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file in the same directory, fsync, then rename
    over ``path``: a crash leaves either the old file or the new one, never half of one.
    If ``write`` raises, nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UsageError(f"{path}: no space left on the device ({exc.strerror}); free some space "
                             "or write somewhere else") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (its entry, not only the file's data)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. a platform where directories cannot be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_json(obj, path: str | os.PathLike) -> None:
    """``obj`` as indented JSON, written atomically (NaN is written as NaN, as Python reads it)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def save_torch_atomic(obj, path: str | os.PathLike) -> None:
    import torch

    write_atomic(path, lambda f: torch.save(obj, f))


def safe_torch_load(path: str | os.PathLike, what: str, missing_hint: str):
    """``torch.load`` with ``weights_only=True`` (no pickled code runs); a missing or
    unreadable file is a UsageError naming ``what`` it should have been."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path} not found; {missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""  # torch's messages run for lines
        raise UsageError(f"{path}: not a readable {what} ({type(exc).__name__}: {first[:200]}); "
                         f"{missing_hint}") from None


# Spreadsheets run a cell that starts like a formula: such text cells get a leading apostrophe
# (OWASP "CSV injection"), and readers of our CSVs take it off again.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A text cell safe to open in a spreadsheet: one that starts like a formula (``= + - @``,
    tab, carriage return) gets a leading apostrophe."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def plain_cell(text: str) -> str:
    """A cell as it was before ``csv_cell`` defused it."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_PREFIXES) else text
