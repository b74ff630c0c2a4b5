"""The HTTP service: ``fashionclf serve MODEL [--host 127.0.0.1] [--port 8000] [--backend onnx|torch]
[--workers N]`` (FastAPI on uvicorn).

Endpoints:

- ``POST /predict``: multipart form, one or more ``file`` fields (photos of any common format,
  size and mode; ``fashionclf.data.photos`` turns each into a 28x28 dataset image). Answers a JSON
  list, one object per file: ``{filename, label, confidence, unknown, probabilities, error}``
  (``unknown``: true for an item of none of the classes, null for a model without a threshold)
  (``?preview=true`` adds ``preview``, the 28x28 image the model saw, as a PNG data URL).
  One bad file does not stop the others: its object carries the error and the answer is 200.
  When every file failed, the status is that of the first failure: 413 too large, 415 not an
  image, 422 unreadable (damaged, truncated, blank). Limits, whole request: ``max_request_bytes``
  and ``max_files`` (413); per image ``Limits.max_pixels`` (25 MP, half of predict's limit)
  and per request ``max_request_pixels``, both checked from the headers before decoding (413).
  Decoding and classifying run in ``Limits.concurrency`` worker threads, off the event loop;
  over ``Limits.max_queue`` requests at once get 503 with ``Retry-After``.
  Every error body is JSON ``{"detail": "..."}``; bad input never causes a 500.
- ``GET /health``: ``{"status": "ok"}``.
- ``GET /metrics``: Prometheus metrics of this process (requests by endpoint and status,
  latency histogram, files by outcome or error kind, requests admitted).
- ``GET /model``: model name, classes, test accuracy, input contract, backend, limits.
- ``GET /``: a web page to drop or choose a photo and see the preprocessed 28x28 view, the
  label and a bar chart of the probabilities.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.datastructures import UploadFile
from uvicorn.protocols.http.auto import AutoHTTPProtocol  # httptools when installed, else h11

from fashionclf.data.photos import FORMATS, MAX_PIXELS, PhotoError, open_image, per_file
from fashionclf.errors import UsageError
from fashionclf.inference.classifier import NAN_ERROR, Classifier, load_classifier
from fashionclf.models.contract import top_k
from fashionclf.training.config import SERVE_BACKEND

STATUS_OF = {"too_large": 413, "unsupported": 415, "unreadable": 422}


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 20 * 1024 * 1024  # a few large JPEGs; bigger uploads get 413 unread
    max_files: int = 32  # per request; larger batches belong to `fashionclf predict`
    # Per image, checked from its header before decoding: half predict's limit, since a server
    # decodes for several clients at once (25 MP: a 6,000 x 4,000 photo still passes).
    max_pixels: int = MAX_PIXELS // 2
    max_request_pixels: int = 100_000_000  # all images of one request together; the rest get 413
    concurrency: int = 2  # requests decoding and classifying at once (threads), one per core
    max_queue: int = 64  # requests admitted (working or waiting); beyond: 503 with Retry-After
    body_timeout: float = 30.0  # seconds a client may pause while sending a body; then 408
    # Requests whose images total at most this many pixels (from their headers) are answered on
    # the event loop (~1 ms: a thread hand-off cost 20% of the requests/s on a 2-core AMD EPYC
    # Zen 4); larger ones
    # decode in the worker threads, so they never hold up /health or other clients.
    inline_pixels: int = 1_000_000


HEADER_TIMEOUT_ENV = "FASHIONCLF_HEADER_TIMEOUT"
HEADER_TIMEOUT = 10.0  # seconds for a request's headers; browsers and clients send them at once


class HeaderDeadline(AutoHTTPProtocol):
    """uvicorn's HTTP protocol with a deadline on request headers: when a request's headers are
    not complete ``$FASHIONCLF_HEADER_TIMEOUT`` seconds (default 10) after the connection opened
    or the previous answer went out, the client gets 408 and the connection is closed. uvicorn
    has no such limit, so each slow-header client would hold a connection slot for ever."""

    _timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._waiting_for = self.cycle  # a new cycle appears once the next request's headers are in
        self._timer = self.loop.call_later(float(os.environ.get(HEADER_TIMEOUT_ENV, HEADER_TIMEOUT)), self._late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._timer is not None and self.cycle is not self._waiting_for:
            self._timer.cancel()
            self._timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def _late(self) -> None:
        self._timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if self.cycle is self._waiting_for and idle and not self.transport.is_closing():
            body = b'{"detail":"the request headers took too long; send them at once"}'
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, judged from
    Content-Length when given and by counting otherwise, before the form parser sees it; 408
    when the client sends no part of the body for ``timeout`` seconds (a slow client must not
    hold a worker forever)."""

    def __init__(self, app, limit: int, timeout: float = 30.0):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._too_large(send)
        seen = 0

        async def counted():
            # Without Content-Length (chunked upload): stop reading at the limit; the form
            # parser then sees a disconnect and /predict answers 413 from the flag.
            nonlocal seen
            try:
                with anyio.fail_after(self.timeout):
                    message = await receive()
            except TimeoutError:
                scope[TOO_SLOW] = True
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    scope[TOO_LARGE] = True
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, send):
        body = json.dumps({"detail": too_large_message(self.limit)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


TOO_LARGE = "fashionclf.body_too_large"
TOO_SLOW = "fashionclf.body_too_slow"


def too_large_message(limit: int) -> str:
    return f"request body over the limit of {limit:,} bytes; send fewer or smaller files"


MAX_NAME = 255  # characters of a file name echoed back


def safe_name(name: str | None) -> str | None:
    """A client's file name as it is echoed back: control characters (CR, LF, ...) become "?",
    text that is not valid Unicode is replaced, at most ``MAX_NAME`` characters."""
    if name is None:
        return None
    name = "".join("?" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in name)
    return name.encode("utf-8", "replace").decode("utf-8")[:MAX_NAME]


def preview_png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def header_pixels(data: bytes) -> int:
    """Width x height from an image's header (nothing decoded); 0 when it has none."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            return img.size[0] * img.size[1]
    except Exception:  # not an image: tag_uploads reports it
        return 0


@per_file
def convert_upload(classifier: Classifier, data: bytes, limits: Limits, budget: list[int]) -> np.ndarray:
    """One upload -> model input; its pixels are taken from the request's ``budget``. Every
    failure is a ``PhotoError`` of this file (``photos.per_file``)."""
    img = open_image(data, limits.max_pixels)
    pixels = img.size[0] * img.size[1]
    if pixels > budget[0]:
        raise PhotoError(f"the request's images together are over the limit of {limits.max_request_pixels:,} "
                         "pixels; send fewer or smaller photos per request", "too_large")
    budget[0] -= pixels
    return classifier.to_input(img)


def tag_uploads(classifier: Classifier, uploads: list[tuple[str | None, bytes]], limits: Limits,
                preview: bool = False) -> tuple[list[dict], int]:
    """The CPU work of one request (decoding, converting, classifying), run in a worker thread:
    one result per upload, in order, and the response status."""
    classes = classifier.classes
    results, images, ok, statuses = [], [], [], []
    budget = [limits.max_request_pixels]
    for name, data in uploads:
        item = {"filename": safe_name(name), "label": None, "confidence": None, "unknown": None,
                "probabilities": None, "error": None}
        try:
            image = convert_upload(classifier, data, limits, budget)
            images.append(image)
            ok.append(item)
            if preview:
                item["preview"] = preview_png(image)
        except PhotoError as exc:
            item["error"] = str(exc)
            item["kind"] = exc.kind
            statuses.append(STATUS_OF.get(exc.kind, 422))
        results.append(item)
    if images:
        probs, scores = classifier.predict(np.stack(images))
        unknown, finite = classifier.unknown(scores), classifier.finite(probs, scores)
        for i, (item, p, [(label, confidence)]) in enumerate(zip(ok, probs, top_k(probs, classes, 1))):
            if not finite[i]:
                item["error"], item["kind"] = NAN_ERROR, "not_a_number"
                statuses.append(422)
                continue
            item.update(label=label, confidence=confidence, unknown=None if unknown is None else bool(unknown[i]),
                        probabilities={c: float(v) for c, v in zip(classes, p)})
    status = 200 if any(item["error"] is None for item in results) else statuses[0]
    return results, status


def public(results: list[dict]) -> list[dict]:
    """Results as answered: without the internal error kind (the status code carries it)."""
    return [{k: v for k, v in item.items() if k != "kind"} for item in results]


LOOPBACK = ("127.0.0.1", "localhost", "::1")
ENDPOINTS = ("/", "/health", "/model", "/predict", "/metrics")
API_KEY_ENV = "FASHIONCLF_API_KEY"


def authorised(header: bytes, key: str) -> bool:
    scheme, _, given = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), key.encode())


class Guard:
    """ASGI middleware (plain ASGI: Starlette's ``BaseHTTPMiddleware`` cost 25-45% of the requests/s on a
    2-core AMD EPYC Zen 4):
    the API key on the guarded endpoints, ``X-Content-Type-Options: nosniff`` on every answer,
    and the request metrics."""

    GUARDED = ("/predict", "/model", "/metrics")

    def __init__(self, app, api_key: str | None, metrics: "Metrics"):
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, path, status = time.perf_counter(), scope["path"], [500]

        async def marked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-content-type-options", b"nosniff")]}
            await send(message)

        if (self.api_key is not None and path in self.GUARDED
                and not authorised(dict(scope["headers"]).get(b"authorization", b""), self.api_key)):
            body = json.dumps({"detail": "missing or wrong API key: send the header 'Authorization: Bearer KEY'"})
            await marked({"type": "http.response.start", "status": 401,
                          "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                      (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body.encode()})
        else:
            await self.app(scope, receive, marked)
        endpoint = path if path in ENDPOINTS else "other"
        self.metrics.requests.labels(endpoint, str(status[0])).inc()
        self.metrics.seconds.labels(endpoint).observe(time.perf_counter() - start)


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


def content_security_policy(page: str) -> str:
    """A policy that lets the page run only its own inline script and style (by hash), load
    images from itself, data: and blob: URLs, and talk only to this server."""
    def digest(tag: str) -> str:
        body = page.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    return (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
            "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


class Metrics:
    """The service's Prometheus metrics (served at /metrics), in a registry of its own app."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("fashionclf_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.seconds = Histogram("fashionclf_request_seconds", "Time to answer a request", ["endpoint"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.files = Counter("fashionclf_files", "Uploaded files by outcome: tagged, unknown, or the error kind",
                             ["outcome"], registry=self.registry)
        self.admitted = Gauge("fashionclf_requests_admitted", "/predict requests working or waiting for a worker",
                              registry=self.registry)

    def count_files(self, results: list[dict]) -> None:
        for item in results:
            outcome = ("unknown" if item["unknown"] else "tagged") if item["error"] is None else item.get("kind", "error")
            self.files.labels(outcome).inc()


def create_app(classifier: Classifier, limits: Limits = Limits(), docs: bool = False,
               allowed_hosts: list[str] | None = None, api_key: str | None = None) -> FastAPI:
    """The service's FastAPI app for ``classifier``, with ``limits`` enforced (the body limit
    as ASGI middleware, before the form parser reads anything). Decoding and classifying run
    in at most ``limits.concurrency`` worker threads, off the event loop, so /health and other
    clients stay served while a large photo decodes; at most ``limits.max_queue`` requests are
    admitted at once, the next get 503 with Retry-After (memory stays bounded).

    ``docs``: serve /docs and /openapi.json (off by default: less to attack). ``allowed_hosts``:
    the Host headers answered (the others get 400), e.g. the loopback names for a server bound
    to loopback, so that a web page elsewhere cannot reach it through DNS rebinding.
    ``api_key``: when given, /predict, /model and /metrics require ``Authorization: Bearer KEY``
    (compared in constant time; 401 otherwise); /health and the page stay open."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI(title="fashionclf", description="Tag clothing photos with Fashion-MNIST classes.",
                  docs_url="/docs" if docs else None, redoc_url=None, openapi_url="/openapi.json" if docs else None)
    limiter = anyio.CapacityLimiter(limits.concurrency)
    admitted = [0]
    metrics = Metrics()
    page = (Path(__file__).parent / "web" / "index.html").read_text()

    csp = content_security_policy(page)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics.admitted.set(admitted[0])
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict:
        return {**classifier.info, "backend": classifier.backend, "limits": asdict(limits)}

    @app.post("/predict")
    async def predict(request: Request, preview: bool = False):
        if admitted[0] >= limits.max_queue:
            return JSONResponse({"detail": f"busy: {admitted[0]} requests in progress; retry in a second"}, 503,
                                headers={"Retry-After": "1"})
        admitted[0] += 1
        try:
            return await answer(request, preview)
        finally:
            admitted[0] -= 1

    async def answer(request: Request, preview: bool) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return JSONResponse({"detail": "expected multipart/form-data with one or more 'file' fields, "
                                           f"got Content-Type {content_type or 'none'!r}"}, 415)
        try:
            form = await request.form(max_files=limits.max_files, max_fields=limits.max_files + 8)
        except Exception as exc:  # the form parser's errors (too many files, malformed body, cut short)
            if request.scope.get(TOO_LARGE):
                return JSONResponse({"detail": too_large_message(limits.max_request_bytes)}, 413)
            if request.scope.get(TOO_SLOW):
                return JSONResponse({"detail": f"the request body stalled for {limits.body_timeout:g} s; "
                                               "send it at once"}, 408)
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            status = 413 if "Too many" in str(detail) else 422
            return JSONResponse({"detail": f"could not read the form: {detail} "
                                           f"(at most {limits.max_files} files per request)"}, status)
        try:
            files = [v for k, v in form.multi_items() if k == "file" and isinstance(v, UploadFile)]
            if not files:
                return JSONResponse({"detail": "no 'file' field in the form; send the photo as file=@photo.jpg"}, 422)
            uploads = [(f.filename, await f.read()) for f in files]
        finally:
            await form.close()
        if sum(header_pixels(data) for _, data in uploads) <= limits.inline_pixels:
            # about a millisecond of work: handing it to a thread would cost 20% of the requests/s
            results, status = tag_uploads(classifier, uploads, limits, preview)
        else:
            results, status = await anyio.to_thread.run_sync(
                functools.partial(tag_uploads, classifier, uploads, limits, preview), limiter=limiter)
        metrics.count_files(results)
        return JSONResponse(public(results), status)

    app.add_middleware(BodyLimit, limit=limits.max_request_bytes, timeout=limits.body_timeout)
    app.add_middleware(Guard, api_key=api_key, metrics=metrics)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return app


def app_from_env():
    """The app for ``uvicorn --factory`` (used by ``--workers N``): model and backend from
    FASHIONCLF_MODEL and FASHIONCLF_BACKEND; each worker process loads its own copy."""
    workers = int(os.environ.get("FASHIONCLF_WORKERS", "1"))
    cores = max(1, (os.cpu_count() or 1) // workers)
    classifier = load_classifier(os.environ["FASHIONCLF_MODEL"], os.environ.get("FASHIONCLF_BACKEND", SERVE_BACKEND),
                                 threads=cores)
    host = os.environ.get("FASHIONCLF_HOST", "127.0.0.1")
    return create_app(classifier, Limits(concurrency=cores), docs=os.environ.get("FASHIONCLF_DOCS") == "1",
                      allowed_hosts=list(LOOPBACK) + ["[::1]"] if host in LOOPBACK else None,
                      api_key=os.environ.get(API_KEY_ENV) or None)


def serve(model: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, backend: str = SERVE_BACKEND,
          workers: int = 1, access_log: bool = False, limit_concurrency: int = 256,
          timeout_keep_alive: float = 5.0, docs: bool = False, api_key_file: str | None = None,
          insecure: bool = False, header_timeout: float = HEADER_TIMEOUT) -> None:
    """Run the service. ``limit_concurrency``: connections and requests at once per worker
    process before uvicorn answers 503 (slow or idle clients cannot pile up without bound);
    ``timeout_keep_alive``: seconds an idle keep-alive connection is kept open;
    ``header_timeout``: seconds a client has to send a request's headers (then 408)."""
    import uvicorn

    load_classifier(model, backend)  # fail here, with one line, on a bad model or backend
    key = read_api_key(api_key_file)
    if host not in LOOPBACK and key is None and not insecure:
        raise UsageError(f"--host {host} opens the service to the network without an API key: give --api-key-file "
                         f"PATH (or ${API_KEY_ENV}), or --insecure to do it anyway")
    if key is not None:
        os.environ[API_KEY_ENV] = key  # for the worker processes
    os.environ.update(FASHIONCLF_MODEL=str(model), FASHIONCLF_BACKEND=backend, FASHIONCLF_WORKERS=str(workers),
                      FASHIONCLF_HOST=host, FASHIONCLF_DOCS="1" if docs else "0",
                      **{HEADER_TIMEOUT_ENV: str(header_timeout)})
    uvicorn.run("fashionclf.service.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                access_log=access_log, log_level="info", limit_concurrency=limit_concurrency,
                timeout_keep_alive=timeout_keep_alive, http=HeaderDeadline)
