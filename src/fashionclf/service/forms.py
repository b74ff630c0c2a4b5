"""The uploaded photos of a multipart request, read straight from the ASGI stream: ``files``
(every ``file`` field of the body, for /predict and /explain) and ``FileStream`` (each file as
soon as its last byte has arrived, for /batch).

python-multipart's parser (the one Starlette uses) is fed the body as it arrives; only what
its callbacks hand over is kept: each ``file`` field's name and bytes, nothing spooled to
temporary files. Starlette's ``request.form()`` builds an ``UploadFile`` with a
``SpooledTemporaryFile`` per part: with it, reading a one-photo form cost about as much as
classifying the photo. Errors are ``FormError`` with the status and the message to answer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from fashionclf.service.protocol import TOO_LARGE, TOO_SLOW, too_large_message

FIELD = b"file"


class FormError(Exception):
    """What to answer instead of the photos: ``status`` and ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class FormLimits:
    max_files: int
    max_bytes: int  # the body limit (``BodyLimit`` enforces it; named in its message)
    body_timeout: float
    max_parts: int  # parts of any field, files included: a flood of tiny fields costs parsing too


def boundary_of(content_type: bytes | str) -> bytes:
    """The multipart boundary of a Content-Type header, or ``FormError`` 415 / 422."""
    if isinstance(content_type, str):
        content_type = content_type.encode("latin-1")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "none"
        raise FormError(415, "expected multipart/form-data with one or more 'file' fields, "
                             f"got Content-Type {shown!r}")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise FormError(422, "could not read the form: the multipart boundary is missing or too long")
    return boundary


class FileStream:
    """The ``file`` fields of one multipart body, each (client's file name, bytes), in order, as
    the body arrives: ``async for name, data in FileStream(scope, receive, limits)``."""

    def __init__(self, scope: dict, receive, limits: FormLimits):
        headers = dict(scope.get("headers") or [])
        self.scope, self.receive, self.limits = scope, receive, limits
        self.ready: deque[tuple[str | None, bytes]] = deque()
        self.parts = self.files = 0
        self.ended = False
        self.error: FormError | None = None  # raised once the files before it are taken
        self._header_field, self._header_value, self._headers = b"", b"", {}
        self._chunks: list[bytes] | None = None
        self._name: str | None = None
        self.parser = MultipartParser(boundary_of(headers.get(b"content-type", b"")), {
            "on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._end}, max_header_count=16)

    # python-multipart's callbacks: data come as (buffer, start, end)
    def _begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise FormError(413, f"could not read the form: Too many fields (at most {self.limits.max_files} "
                                 "files per request)")
        self._headers, self._chunks, self._name = {}, None, None

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_done(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition == b"form-data" and options.get(b"name") == FIELD and b"filename" in options:
            self.files += 1
            if self.files > self.limits.max_files:
                raise FormError(413, f"could not read the form: Too many files (at most {self.limits.max_files} "
                                     "files per request)")
            self._chunks = []
            self._name = options[b"filename"].decode("utf-8", "replace")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._chunks is not None:
            self._chunks.append(data[start:end])

    def _end(self) -> None:
        if self._chunks is not None:
            self.ready.append((self._name, b"".join(self._chunks)))
            self._chunks = None

    def __aiter__(self):
        return self

    async def __anext__(self) -> tuple[str | None, bytes]:
        while not self.ready:
            if self.error is not None:
                raise self.error
            if self.ended:
                raise StopAsyncIteration
            try:
                await self._feed()
            except FormError as exc:
                self.error, self.ended = exc, True
        return self.ready.popleft()

    async def _feed(self) -> None:
        message = await self.receive()
        if self.scope.get(TOO_LARGE):
            raise FormError(413, too_large_message(self.limits.max_bytes))
        if self.scope.get(TOO_SLOW):
            raise FormError(408, f"the request body stalled for {self.limits.body_timeout:g} s; send it at once")
        if message["type"] != "http.request":
            raise FormError(422, "could not read the form: the body ended early (client disconnected)")
        try:
            self.parser.write(message.get("body", b""))
        except FormError:
            raise
        except Exception as exc:  # python-multipart's errors on a malformed body
            raise FormError(422, f"could not read the form: {exc}") from None
        if not message.get("more_body", False):
            self.ended = True
            if self.parser.state.name != "END":
                raise FormError(422, "could not read the form: the multipart body is cut short or malformed")


async def files(scope: dict, receive, limits: FormLimits) -> list[tuple[str | None, bytes]]:
    """Every ``file`` field of the body, or ``FormError`` (422 when there is none)."""
    found = [item async for item in FileStream(scope, receive, limits)]
    if not found:
        raise FormError(422, "no 'file' field in the form; send the photo as file=@photo.jpg")
    return found
