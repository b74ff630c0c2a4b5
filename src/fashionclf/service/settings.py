"""The service's settings: ``ServeSettings``, every flag of ``fashionclf serve`` with its default
written here once, handed to each worker process as one JSON value (``to_env``/``from_env``).
Imports no torch and no web framework: the command line reads its defaults from here."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fashionclf.errors import UsageError
from fashionclf.training.config import SERVE_BACKEND

LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "FASHIONCLF_API_KEY"
SETTINGS_ENV = "FASHIONCLF_SERVE"  # the settings, as JSON, for the worker processes


@dataclass
class ServeSettings:
    """How ``fashionclf serve`` runs (``serve``) and what its app does (``create_app``)."""

    model: str = ""  # model.pt, its run folder, or model.onnx
    host: str = "127.0.0.1"  # this machine only; another host needs an API key (or ``insecure``)
    port: int = 8000
    backend: str = SERVE_BACKEND
    workers: int = 1  # server processes, each with its own model copy
    access_log: bool = False  # logging every request costs throughput
    limit_concurrency: int = 256  # connections and requests at once per process; beyond, 503
    timeout_keep_alive: float = 5.0  # seconds an idle keep-alive connection stays open
    header_timeout: float = 10.0  # seconds for a request's headers (then 408); clients send them at once
    docs: bool = False  # /docs and /openapi.json: off, less to attack
    api_key: str | None = None  # required as "Authorization: Bearer KEY" on /predict, /model, /metrics
    insecure: bool = False  # allow a host beyond loopback without an API key
    graph: str = "fp32"  # a model.pt's ONNX graph: fp32, int8 or fastest (timed at start, at batch 1)

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK

    @property
    def threads(self) -> int:
        """Cores per worker process (ONNX Runtime's threads and the decoding pool's size)."""
        return max(1, (os.cpu_count() or 1) // self.workers)

    def to_env(self) -> None:
        os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> "ServeSettings":
        return cls(**json.loads(os.environ[SETTINGS_ENV]))


def read_api_key(path: str | os.PathLike | None) -> str | None:
    """The API key from ``path`` (first line) or, without one, from $FASHIONCLF_API_KEY."""
    if path is None:
        return os.environ.get(API_KEY_ENV) or None
    try:
        key = Path(path).read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise UsageError(f"--api-key-file {path}: cannot read a key from it ({exc}); put the key on its first line") from None
    if len(key) < 16:
        raise UsageError(f"--api-key-file {path}: the key is {len(key)} characters; use at least 16 "
                         "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return key


