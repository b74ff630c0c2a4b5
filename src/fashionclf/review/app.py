"""``fashionclf review``'s web page and its API (FastAPI on uvicorn), with the service's
hardening: loopback only by default (other Host headers refused: no DNS rebinding); beyond
loopback the API key (``Authorization: Bearer KEY`` on every ``/api/`` path) or ``--insecure``;
a content security policy that runs only the page's own script; photos sent as thumbnails
re-encoded here (never a file's own bytes); file names shown as text, never as markup.

Endpoints: ``GET /`` the page; ``GET /api/queue`` the cards and attributes;
``GET /api/photo/{id}`` a card's thumbnail (PNG); ``GET /api/heatmap/{id}?attribute=NAME``
what the model saw with where it looked for that attribute's answer (Grad-CAM, PNG: torch
and the model.pt are loaded at the first one); ``POST /api/decide`` ``{"ids", "attribute",
"value"}`` decides one or more cards at once (written before the answer);
``POST /api/undo`` takes back this session's last decision.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from fashionclf.errors import DataError, UsageError
from fashionclf.review.decisions import Decisions
from fashionclf.review.queue import UNKNOWN, Queue
from fashionclf.service.protocol import Guard, content_security_policy
from fashionclf.service.settings import API_KEY_ENV, LOOPBACK

THUMBNAIL = 192  # pixels on the longer side: sharp on the page's cards, small to send


@dataclass
class ReviewSettings:
    """How ``fashionclf review`` runs."""

    queue: str
    model: str
    decisions: str | None = None  # default: QUEUE/decisions.csv
    host: str = "127.0.0.1"
    port: int = 8100
    api_key: str | None = None
    insecure: bool = False
    export_label_studio: str | None = None  # write the queue as Label Studio tasks here, and stop
    import_label_studio: str | None = None  # read a Label Studio JSON-MIN export into the decisions, and stop
    document_root: str | None = None  # Label Studio's local-files root (default: the queue's folder)

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK


class Decision(BaseModel):
    ids: list[int]
    attribute: str
    value: str  # one of the attribute's values, "_unknown" (not one of our items), or "a;b" for a multi-label one


class Decided(BaseModel):
    decided: dict[int, dict[str, str]]  # card id -> its decided values now


def card_json(queue: Queue, decisions: Decisions, card) -> dict:
    return {"id": card.id, "name": card.path.name, "path": str(card.path), "current": card.current,
            "suggested": card.suggested, "confidences": card.confidences, "score": round(card.score, 4)
            if card.score != float("inf") else None, "why": card.why, "error": card.error,
            "decided": decisions.rows.get(str(card.path), {})}


def check_value(queue: Queue, decision: Decision) -> None:
    """A value the attribute has (several, ``;``-joined, for a multi-label one), or ``_unknown``
    on the first attribute; else a 422 that lists the valid values."""
    names = [a.name for a in queue.schema.attributes]
    if decision.attribute not in names:
        raise HTTPException(422, f"unknown attribute {decision.attribute!r}; valid: {', '.join(names)}")
    attr = queue.schema.attributes[names.index(decision.attribute)]
    given = [v for v in decision.value.split(";") if v] if attr.multi else [decision.value]
    allowed = set(attr.values) | ({UNKNOWN} if attr is queue.schema.first else set())
    bad = [v for v in given if v not in allowed]
    if bad or (not attr.multi and not decision.value):
        raise HTTPException(422, f"{decision.attribute} cannot be {decision.value!r}; valid: "
                                 f"{', '.join(attr.values)}" + (f", {UNKNOWN}" if attr is queue.schema.first else ""))
    if any(not 0 <= i < len(queue.cards) for i in decision.ids) or not decision.ids:
        raise HTTPException(422, f"ids must name cards 0..{len(queue.cards) - 1}, got {decision.ids}")


@functools.lru_cache(maxsize=4096)
def thumbnail(path: Path) -> bytes:
    """A photo as a small PNG made here (decoded within Pillow's bomb limit, re-encoded), so the
    browser never parses a file as it came."""
    from PIL import Image, ImageOps

    from fashionclf.data.photos import open_image

    image = open_image(path)
    image.draft("RGB", (2 * THUMBNAIL, 2 * THUMBNAIL))  # a JPEG decodes at a fraction of its size
    image = ImageOps.exif_transpose(image)
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def create_review_app(queue: Queue, decisions: Decisions, settings: ReviewSettings) -> FastAPI:
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    page = (Path(__file__).parent / "web" / "review.html").read_text()
    csp = content_security_policy(page)
    lock = threading.Lock()  # one decision at a time reaches the file
    app = FastAPI(title="fashionclf review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    @app.get("/api/queue")
    async def cards() -> dict:
        return {"source": str(queue.source), "kind": queue.kind, "decisions": str(decisions.path),
                "attributes": [{"name": a.name, "values": list(a.values), "multi": a.multi}
                               for a in queue.schema.attributes],
                "cards": [card_json(queue, decisions, c) for c in queue.cards]}

    @app.get("/api/photo/{id}")
    def photo(id: int) -> Response:  # a thread: decoding is CPU work
        try:
            data = thumbnail(queue.card(id).path)
        except KeyError:
            raise HTTPException(404, f"no card {id}") from None
        except Exception:  # an unreadable photo: the card shows its error instead
            raise HTTPException(422, "this photo cannot be shown") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    explainer: list = []  # the model.pt's network, loaded at the first heatmap asked for

    @app.get("/api/heatmap/{id}")
    def heatmap(id: int, attribute: str | None = None) -> Response:  # a thread: a backward pass
        from fashionclf.data.photos import photo_converter
        from fashionclf.inference.explain import Explainer

        names = [a.name for a in queue.schema.attributes]
        if attribute not in (None, *names):
            raise HTTPException(422, f"unknown attribute {attribute!r}; valid: {', '.join(names)}")
        try:
            card = queue.card(id)
        except KeyError:
            raise HTTPException(404, f"no card {id}") from None
        if not explainer:
            try:
                explainer.append(Explainer(settings.model))
            except UsageError as exc:
                raise HTTPException(404, f"no heatmaps: {exc}") from None
        try:
            image = photo_converter(explainer[0].contract)[0](card.path)
        except Exception:
            raise HTTPException(422, "this photo cannot be shown") from None
        data = explainer[0].png(image, names.index(attribute) if attribute else 0)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/decide", response_model=Decided)
    def decide(decision: Decision) -> dict:  # a thread: the write is fsynced
        check_value(queue, decision)
        with lock:
            decisions.decide([queue.cards[i].path for i in decision.ids], decision.attribute, decision.value)
            return {"decided": {i: decisions.rows.get(str(queue.cards[i].path), {}) for i in decision.ids}}

    @app.post("/api/undo", response_model=Decided)
    def undo() -> dict:
        with lock:
            photos = set(decisions.undo())
            ids = [c.id for c in queue.cards if str(c.path) in photos]
            return {"decided": {i: decisions.rows.get(str(queue.cards[i].path), {}) for i in ids}}

    app.add_middleware(Guard, api_key=settings.api_key, guarded=("/api/",))
    if settings.loopback:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK, "[::1]"])
    return app


def review(settings: ReviewSettings, log=print) -> None:
    """Load the queue (the model answers every photo), then serve the page until Ctrl-C; or
    export it to Label Studio, or import Label Studio's answers into the decisions."""
    from fashionclf.data.attributes import Schema
    from fashionclf.inference.classifier import load_classifier
    from fashionclf.review import labelstudio
    from fashionclf.review.decisions import default_decisions
    from fashionclf.review.queue import load_queue

    if not settings.loopback and settings.api_key is None and not settings.insecure:
        raise UsageError(f"--host {settings.host} opens the review page to the network without an API key: give "
                         f"--api-key-file PATH (or ${API_KEY_ENV}), or --insecure to do it anyway")
    classifier = load_classifier(settings.model, "auto")
    schema = classifier.schema or Schema.one(list(classifier.classes))
    source = Path(settings.queue)
    path = Path(settings.decisions) if settings.decisions else default_decisions(source)
    root = Path(settings.document_root) if settings.document_root else source.parent if source.is_file() else source
    try:
        decisions = Decisions.open(path, [a.name for a in schema.attributes])
        if settings.import_label_studio:
            counts = labelstudio.import_min(settings.import_label_studio, decisions, schema, root)
            log(f"label studio: {counts['decided']} of {counts['tasks']} tasks decided into {path} "
                f"({counts['skipped']} without an answer or not of this queue)")
            return
        queue = load_queue(source, classifier)
        if settings.export_label_studio:
            out = labelstudio.export_tasks(queue, settings.export_label_studio, root, str(settings.model))
            log(f"label studio: {len(queue.cards)} tasks in {out}, most to look at first, with the model's "
                f"predictions; the labelling interface in {out.with_suffix('.xml')}; images below {root} "
                "(Label Studio's LOCAL_FILES_DOCUMENT_ROOT)")
            return
    except DataError as exc:
        raise UsageError(str(exc)) from None
    log(f"review: {len(queue.cards)} photos from {queue.source} ({queue.kind}), most to look at first; decisions go "
        f"to {path} ({len(decisions.rows)} already there)")
    log(f"open http://{settings.host}:{settings.port}/ (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn_run(create_review_app(queue, decisions, settings), settings)


def uvicorn_run(app: FastAPI, settings: ReviewSettings) -> None:
    import uvicorn

    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
