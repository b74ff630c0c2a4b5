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
  Small requests are answered on the event loop, larger ones in ``Limits.concurrency`` worker
  threads; over ``Limits.max_queue`` requests at once get 503 with ``Retry-After``.
  Every error body is JSON ``{"detail": "..."}``; bad input never causes a 500.
- ``POST /batch``: many photos in one multipart body (up to ``Limits.batch_max_files``); the
  answers stream back as NDJSON, one /predict answer object per photo with its ``index``,
  then a summary line (``fashionclf.service.routes``).
- ``GET /health``: ``{"status": "ok"}``.
- ``GET /metrics``: Prometheus metrics of this process (requests by endpoint and status,
  latency histogram, files by outcome or error kind, requests admitted).
- ``GET /model``: model name, classes, test accuracy, input contract, backend, limits.
- ``GET /``: a web page to drop or choose a photo and see the preprocessed 28x28 view, the
  label and a bar chart of the probabilities.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from dataclasses import asdict
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from fashionclf.errors import UsageError
from fashionclf.inference.classifier import Classifier, load_classifier
from fashionclf.service.forms import FormError, files
from fashionclf.service.protocol import BodyLimit, Guard, HeaderDeadline, content_security_policy
from fashionclf.service.routes import PhotoRoutes, form_limits
from fashionclf.service.settings import API_KEY_ENV, LOOPBACK, ServeSettings
from fashionclf.service.uploads import Limits

# ---------------------------------------------------------------- what the endpoints answer


class AttributeAnswer(BaseModel):
    value: str | None  # a single-valued attribute's answer; null for a multi-label one
    values: list[str]
    confidences: list[float]
    probabilities: dict[str, float]


class FileResult(BaseModel):
    """One uploaded file's answer: its label, or its error."""

    filename: str | None
    label: str | None
    confidence: float | None
    unknown: bool | None  # true: of none of the classes; null: the model has no threshold
    probabilities: dict[str, float] | None
    error: str | None
    preview: str | None = None  # with ?preview=true: the image the model saw, a PNG data URL
    # A model of several attributes: per attribute its value (a multi-label one: ``values``,
    # those at or above their thresholds), their confidences and every value's probability;
    # label, confidence and probabilities above are the first attribute's.
    attributes: dict[str, AttributeAnswer] | None = None


class BatchLine(FileResult):
    """One line of /batch's answer: a photo's answer and its place in the upload."""

    index: int


class Detail(BaseModel):
    """An error that concerns the whole request."""

    detail: str


class Health(BaseModel):
    status: str


class ModelInfo(BaseModel):
    model: str
    classes: list[str]
    preprocessing: dict
    test_accuracy: float | None
    unknown: dict | None
    input: dict
    backend: str
    graph: str  # the ONNX graph served: fp32, or int8 (``--graph``)
    limits: dict
    attributes: list[dict] | None = None  # a model of several attributes: name, values, multi, thresholds
    weights_sha256: str | None = None  # a fingerprint of the weights (``Checkpoint.weights_sha256``)


PREDICT_ANSWERS = {413: {"model": list[FileResult] | Detail, "description": "too large (every file, or the body)"},
                   415: {"model": list[FileResult] | Detail, "description": "not multipart, or no file an image"},
                   422: {"model": list[FileResult] | Detail, "description": "every file unreadable, or a bad form"},
                   408: {"model": Detail, "description": "the body stalled"},
                   401: {"model": Detail, "description": "missing or wrong API key"},
                   503: {"model": Detail, "description": "busy: retry after the Retry-After header's seconds"}}


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




def create_app(settings: ServeSettings, limits: Limits | None = None, classifier: Classifier | None = None) -> FastAPI:
    """The service's FastAPI app: its lifespan loads ``settings.model`` (unless ``classifier``
    is given), ``limits`` are enforced (the body limit as ASGI middleware, before the form parser
    reads anything), the state lives on ``app.state``. Decoding and classifying run in at most
    ``limits.concurrency`` worker threads, off the event loop, so /health and other clients stay
    served while a large photo decodes; at most ``limits.max_queue`` requests are admitted at
    once, the next get 503 with Retry-After (memory stays bounded).

    ``settings.docs``: serve /docs and /openapi.json. A loopback ``settings.host`` answers only
    loopback Host headers (others get 400), so that a web page elsewhere cannot reach it through
    DNS rebinding. ``settings.api_key``: /predict, /model and /metrics require ``Authorization:
    Bearer KEY`` (constant-time; 401 otherwise); /health and the page stay open."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    limits = limits or Limits(concurrency=settings.threads)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.classifier is None:
            app.state.classifier = load_classifier(settings.model, settings.backend, threads=settings.threads,
                                                   graph=settings.graph)
        yield

    app = FastAPI(title="fashionclf", description="Tag clothing photos with a fashionclf model.", lifespan=lifespan,
                  docs_url="/docs" if settings.docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.docs else None)
    page = (Path(__file__).parent / "web" / "index.html").read_text()
    app.state.classifier, app.state.limits, app.state.admitted = classifier, limits, 0
    app.state.limiter, app.state.metrics = anyio.CapacityLimiter(limits.concurrency), Metrics()
    app.state.explainer = None  # a model.pt's network for /explain, loaded at its first call
    add_routes(app, page, content_security_policy(page), settings)
    app.add_middleware(PhotoRoutes, state=app.state)
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes, timeout=limits.body_timeout,
                       paths={"/batch": limits.batch_max_bytes})
    app.add_middleware(Guard, api_key=settings.api_key, metrics=app.state.metrics)
    if settings.loopback:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK, "[::1]"])
    return app


def add_routes(app: FastAPI, page: str, csp: str, settings: ServeSettings) -> None:
    state = app.state

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        state.metrics.admitted.set(state.admitted)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", response_model=Health)
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model", response_model=ModelInfo)
    async def model() -> dict:
        classifier = state.classifier
        return {**classifier.info, "backend": classifier.backend, "graph": classifier.graph,
                "limits": asdict(state.limits)}

    # Answered by ``routes.PhotoRoutes`` (plain ASGI, before this router); declared here so that
    # /openapi.json describes them. Never reached.
    @app.post("/predict", response_model=list[FileResult], responses=PREDICT_ANSWERS)
    async def predict(preview: bool = False):
        """Tag one or more photos (multipart ``file`` fields): one answer per file, in order."""
        raise RuntimeError("POST /predict is answered by routes.PhotoRoutes")

    @app.post("/batch", response_model=BatchLine, responses={k: v for k, v in PREDICT_ANSWERS.items() if k != 408},
              response_description="NDJSON: one BatchLine per photo as it is tagged, then a summary line")
    async def batch():
        """Tag many photos (multipart ``file`` fields, up to ``limits.batch_max_files``): the answers
        stream back as NDJSON lines, one per photo with its ``index`` in the upload, then
        ``{"summary": {...}}`` (or ``{"error", "status", "summary"}`` if the upload broke off)."""
        raise RuntimeError("POST /batch is answered by routes.PhotoRoutes")

    @app.post("/explain", responses={200: {"content": {"image/png": {}}, "description": "the heatmap, a PNG"},
                                     **{k: v for k, v in PREDICT_ANSWERS.items() if k != 503},
                                     404: {"model": Detail, "description": "an ONNX graph is served: no heatmaps"}})
    async def explain(request: Request, attribute: str | None = None) -> Response:
        """The first file's heatmap (Grad-CAM): what the model saw, and where it looked for its
        answer (``attribute``'s, for a model of several; default the first). Loads torch and the
        model.pt at the first call."""
        try:
            uploads = await files(request.scope, request.receive, form_limits(state.limits))
        except FormError as exc:
            return JSONResponse({"detail": exc.detail}, exc.status)
        return await anyio.to_thread.run_sync(functools.partial(explain_upload, state, settings.model,
                                                                uploads[0][1], attribute), limiter=state.limiter)


def explain_upload(state, model: str, data: bytes, attribute: str | None) -> Response:
    """``/explain``'s work, in a worker thread: the heatmap of one photo as a PNG."""
    from fashionclf.data.photos import PhotoError
    from fashionclf.service.uploads import STATUS_OF, convert_upload

    if getattr(state, "explainer", None) is None:
        from fashionclf.inference.explain import Explainer

        try:
            state.explainer = Explainer(model)
        except UsageError as exc:
            return JSONResponse({"detail": f"no heatmaps here: {exc}"}, 404)
    schema = state.classifier.schema
    try:
        index = 0 if attribute is None or schema is None and attribute == "label" else schema.attribute(attribute)
    except (ValueError, AttributeError):
        names = schema.names if schema is not None else ["label"]
        return JSONResponse({"detail": f"unknown attribute {attribute!r}; valid: {', '.join(names)}"}, 422)
    try:
        image = convert_upload(state.classifier, data, state.limits, [state.limits.max_request_pixels])
    except PhotoError as exc:
        return JSONResponse({"detail": str(exc)}, STATUS_OF.get(exc.kind, 422))
    return Response(state.explainer.png(image, index), media_type="image/png")


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory``, in each server process: the settings from the one JSON
    value ``serve`` put in the environment; each process loads its own model copy."""
    settings = ServeSettings.from_env()
    HeaderDeadline.timeout = settings.header_timeout
    return create_app(settings)


def serve(settings: ServeSettings) -> None:
    """Run the service (uvicorn, ``settings.workers`` processes). ``limit_concurrency``:
    connections and requests at once per process before uvicorn answers 503 (slow or idle
    clients cannot pile up without bound)."""
    import uvicorn

    # fail here, with one line, on a bad model or backend; --graph fastest is decided here, once for every worker
    chosen = load_classifier(settings.model, settings.backend, threads=settings.threads, graph=settings.graph)
    if chosen.graph_note:
        print(chosen.graph_note, file=sys.stderr)
    settings = dataclasses.replace(settings, graph=chosen.graph if settings.graph == "fastest" else settings.graph)
    if not settings.loopback and settings.api_key is None and not settings.insecure:
        raise UsageError(f"--host {settings.host} opens the service to the network without an API key: give "
                         f"--api-key-file PATH (or ${API_KEY_ENV}), or --insecure to do it anyway")
    options = dict(host=settings.host, port=settings.port, access_log=settings.access_log, log_level="info",
                   limit_concurrency=settings.limit_concurrency, timeout_keep_alive=settings.timeout_keep_alive,
                   http=HeaderDeadline)
    if settings.workers == 1:  # this process serves: the model just loaded is the one it serves
        HeaderDeadline.timeout = settings.header_timeout
        uvicorn.run(create_app(settings, classifier=chosen), **options)
        return
    del chosen  # each worker process loads its own; uvicorn's supervisor (this process) keeps none
    settings.to_env()
    uvicorn.run("fashionclf.service.serve:app_from_env", factory=True, workers=settings.workers, **options)
