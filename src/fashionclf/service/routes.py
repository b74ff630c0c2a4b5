"""The photo endpoints as plain ASGI, beneath the hardening middleware and before FastAPI's
router: ``POST /predict`` (a few photos, one JSON answer) and ``POST /batch`` (many photos,
one NDJSON line per photo, streamed as they are tagged).

Why not FastAPI routes: its request handling (dependencies, the form parser's spooled files,
the response classes) cost about a third of a one-photo request's CPU, and a server process
answers thousands of these a second. FastAPI still declares both endpoints (``serve.py``), so
/openapi.json describes them; those declarations are never reached.

/predict: at most ``Limits.max_files`` photos; requests whose images total at most
``Limits.inline_pixels`` (from their headers) are answered on the event loop (about a
millisecond; a hand-off to a thread cost 20% of the requests/s), larger ones in the worker
threads. /batch: up to ``Limits.batch_max_files`` photos in one multipart body, read as it
arrives and tagged in chunks of ``BATCH_CHUNK`` in a worker thread (the event loop stays free
for other clients); each chunk's lines go out as soon as it is tagged. Each answer line is a
/predict answer object with its ``index`` in the upload; the last line is the summary
``{"summary": {"files", "tagged", "failed"}}``, or ``{"error", "status", "summary"}`` when the
body broke off (too large, stalled, malformed) after answers had gone out.
"""

from __future__ import annotations

import functools
import json
from urllib.parse import parse_qsl

import anyio

from fashionclf.service.forms import FileStream, FormError, FormLimits, files
from fashionclf.service.uploads import Limits, open_uploads, public, tag_uploads

BATCH_CHUNK = 64  # photos per inference call of /batch: the model's images/s is flat beyond this
JSON_HEADERS = [(b"content-type", b"application/json")]
NDJSON_HEADERS = [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-store")]
TRUE = {"1", "true", "yes", "on"}


def dumps(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def answer(send, status: int, value, headers=JSON_HEADERS) -> None:
    body = dumps(value)
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def form_limits(limits: Limits, batch: bool = False) -> FormLimits:
    most = limits.batch_max_files if batch else limits.max_files
    return FormLimits(most, limits.batch_max_bytes if batch else limits.max_request_bytes, limits.body_timeout,
                      most + 8)


class PhotoRoutes:
    """ASGI middleware answering ``POST /predict`` and ``POST /batch`` from ``state`` (the app's
    state: classifier, limits, limiter, metrics, admitted); everything else goes on to ``app``."""

    def __init__(self, app, state):
        self.app, self.state = app, state
        self.routes = {"/predict": self.predict, "/batch": self.batch}

    async def __call__(self, scope, receive, send):
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            return await self.app(scope, receive, send)
        state = self.state
        if state.admitted >= state.limits.max_queue:
            return await answer(send, 503, {"detail": f"busy: {state.admitted} requests in progress; retry in a "
                                                      "second"}, [*JSON_HEADERS, (b"retry-after", b"1")])
        state.admitted += 1
        try:
            await route(scope, receive, send)
        finally:
            state.admitted -= 1

    async def predict(self, scope, receive, send) -> None:
        state = self.state
        limits, classifier = state.limits, state.classifier
        try:
            uploads = await files(scope, receive, form_limits(limits))
        except FormError as exc:
            return await answer(send, exc.status, {"detail": exc.detail})
        preview = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("preview", "").lower() in TRUE
        opened, pixels = open_uploads(uploads, limits)
        if pixels <= limits.inline_pixels:
            results, status = tag_uploads(classifier, opened, limits, preview)
        else:
            results, status = await anyio.to_thread.run_sync(
                functools.partial(tag_uploads, classifier, opened, limits, preview), limiter=state.limiter)
        state.metrics.count_files(results)
        await answer(send, status, public(results))

    async def batch(self, scope, receive, send) -> None:
        state = self.state
        limits = state.limits
        try:
            stream = FileStream(scope, receive, form_limits(limits, batch=True))
        except FormError as exc:
            return await answer(send, exc.status, {"detail": exc.detail})
        counts, started, chunk = {"files": 0, "tagged": 0, "failed": 0}, False, []

        async def flush() -> None:
            nonlocal started, chunk
            if not started:
                await send({"type": "http.response.start", "status": 200, "headers": NDJSON_HEADERS})
                started = True
            results, _ = await anyio.to_thread.run_sync(
                lambda: tag_uploads(state.classifier, open_uploads(chunk, limits)[0], limits), limiter=state.limiter)
            state.metrics.count_files(results)
            lines = []
            for result in public(results):
                lines.append(dumps({"index": counts["files"], **result}))
                counts["files"] += 1
                counts["tagged" if result["error"] is None else "failed"] += 1
            chunk = []
            await send({"type": "http.response.body", "body": b"\n".join(lines) + b"\n", "more_body": True})

        try:
            async for upload in stream:
                chunk.append(upload)
                if len(chunk) == BATCH_CHUNK:
                    await flush()
            if chunk:
                await flush()
            if not started:
                return await answer(send, 422, {"detail": "no 'file' field in the form; send the photos as "
                                                          "file=@a.jpg file=@b.jpg ..."})
            last = {"summary": counts}
        except FormError as exc:
            if not started:
                return await answer(send, exc.status, {"detail": exc.detail})
            last = {"error": exc.detail, "status": exc.status, "summary": counts}
        await send({"type": "http.response.body", "body": dumps(last) + b"\n", "more_body": False})
