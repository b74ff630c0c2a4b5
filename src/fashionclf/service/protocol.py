"""The service's HTTP hardening below the app: a deadline on request headers (uvicorn has none),
a request-body limit and stall timeout, and the API key checked before a body is read. Plain
ASGI and protocol classes: Starlette's ``BaseHTTPMiddleware`` cost 25-45% of the requests/s on a
2-core AMD EPYC Zen 4."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import anyio
from uvicorn.protocols.http.auto import AutoHTTPProtocol  # httptools when installed, else h11

from fashionclf.service.settings import ServeSettings

ENDPOINTS = ("/", "/health", "/model", "/predict", "/batch", "/explain", "/metrics")


class HeaderDeadline(AutoHTTPProtocol):
    """uvicorn's HTTP protocol with a deadline on request headers: when a request's headers are
    not complete ``timeout`` seconds (``ServeSettings.header_timeout``) after the connection opened
    or the previous answer went out, the client gets 408 and the connection is closed. uvicorn
    has no such limit, so each slow-header client would hold a connection slot for ever."""

    _timer = None
    timeout = ServeSettings.header_timeout  # each worker process sets its settings' value (``app_from_env``)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._waiting_for = self.cycle  # a new cycle appears once the next request's headers are in
        self._timer = self.loop.call_later(self.timeout, self._late)

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
    """ASGI middleware: 413 for a request body over ``limit`` bytes (``paths``: other limits
    for some paths), judged from Content-Length when given and by counting otherwise, before
    the form parser sees it; 408 when the client sends no part of the body for ``timeout``
    seconds (a slow client must not hold a worker forever)."""

    def __init__(self, app, limit: int, timeout: float = 30.0, paths: dict[str, int] | None = None):
        self.app, self.default, self.timeout, self.paths = app, limit, timeout, paths or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.paths.get(scope["path"], self.default)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._too_large(send, limit)
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
                if seen > limit:
                    scope[TOO_LARGE] = True
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, send, limit: int):
        body = json.dumps({"detail": too_large_message(limit)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


TOO_LARGE = "fashionclf.body_too_large"
TOO_SLOW = "fashionclf.body_too_slow"


def too_large_message(limit: int) -> str:
    return f"request body over the limit of {limit:,} bytes; send fewer or smaller files"


def authorised(header: bytes, key: str) -> bool:
    scheme, _, given = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), key.encode())


class Guard:
    """ASGI middleware (plain ASGI: Starlette's ``BaseHTTPMiddleware`` cost 25-45% of the requests/s on a
    2-core AMD EPYC Zen 4):
    the API key on the guarded endpoints, ``X-Content-Type-Options: nosniff`` on every answer,
    and the request metrics."""

    GUARDED = ("/predict", "/batch", "/explain", "/model", "/metrics")  # a path ending in "/" guards every path below it

    def __init__(self, app, api_key: str | None, metrics=None, guarded: tuple[str, ...] = GUARDED):
        self.app, self.api_key, self.metrics, self.guarded = app, api_key, metrics, guarded

    def guards(self, path: str) -> bool:
        return any(path == g or (g.endswith("/") and path.startswith(g)) for g in self.guarded)

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

        if (self.api_key is not None and self.guards(path)
                and not authorised(dict(scope["headers"]).get(b"authorization", b""), self.api_key)):
            body = json.dumps({"detail": "missing or wrong API key: send the header 'Authorization: Bearer KEY'"})
            await marked({"type": "http.response.start", "status": 401,
                          "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                      (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body.encode()})
        else:
            await self.app(scope, receive, marked)
        if self.metrics is None:
            return
        endpoint = path if path in ENDPOINTS else "other"
        self.metrics.requests.labels(endpoint, str(status[0])).inc()
        self.metrics.seconds.labels(endpoint).observe(time.perf_counter() - start)


def content_security_policy(page: str) -> str:
    """A policy that lets the page run only its own inline script and style (by hash), load
    images from itself, data: and blob: URLs, and talk only to this server."""
    def digest(tag: str) -> str:
        body = page.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    return (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
            "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


