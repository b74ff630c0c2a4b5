"""The CPU work of one ``/predict`` request, no web framework in it: ``Limits``, each upload
decoded within them and classified (``tag_uploads``), the names echoed back made safe."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fashionclf.data.attributes import Schema
from fashionclf.data.photos import FORMATS, MAX_PIXELS, PhotoError, open_image, per_file
from fashionclf.inference.classifier import NAN_ERROR, Classifier
from fashionclf.inference.tagging import answers
from fashionclf.models.inputs import top_k

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
    # /batch: many photos in one body, answered line by line (``routes.PhotoRoutes.batch``)
    batch_max_files: int = 10_000
    batch_max_bytes: int = 512 * 1024 * 1024


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


def open_uploads(uploads: list[tuple[str | None, bytes]], limits: Limits) -> tuple[list, int]:
    """Each upload opened (its header read, nothing decoded) where it can be, else left as bytes
    for ``tag_uploads`` to report; and the pixels of all of them together (from the headers)."""
    opened, pixels = [], 0
    for name, data in uploads:
        try:
            img = open_image(data, limits.max_pixels)
            opened.append((name, img))
            pixels += img.size[0] * img.size[1]
        except Exception:  # every failure is that file's own error, said by convert_upload
            opened.append((name, data))
    return opened, pixels


@per_file
def convert_upload(classifier: Classifier, data: bytes | Image.Image, limits: Limits, budget: list[int]) -> np.ndarray:
    """One upload (bytes, or opened by ``open_uploads``) -> model input; its pixels are taken
    from the request's ``budget``. Every failure is a ``PhotoError`` of this file
    (``photos.per_file``)."""
    img = data if isinstance(data, Image.Image) else open_image(data, limits.max_pixels)
    pixels = img.size[0] * img.size[1]
    if pixels > budget[0]:
        raise PhotoError(f"the request's images together are over the limit of {limits.max_request_pixels:,} "
                         "pixels; send fewer or smaller photos per request", "too_large")
    budget[0] -= pixels
    return classifier.to_input(img)


def tag_uploads(classifier: Classifier, uploads: list[tuple[str | None, bytes | Image.Image]], limits: Limits,
                preview: bool = False) -> tuple[list[dict], int]:
    """The CPU work of one request (decoding, converting, classifying), on the event loop or in a
    worker thread: one result per upload (bytes, or opened by ``open_uploads``), in order, and
    the response status."""
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
        every, scores = classifier.predict_attributes(np.stack(images))
        probs = every[0]
        unknown, finite = classifier.unknown(scores), classifier.finite(np.concatenate(every, 1), scores)
        for i, (item, p, [(label, confidence)]) in enumerate(zip(ok, probs, top_k(probs, classes, 1))):
            if not finite[i]:
                item["error"], item["kind"] = NAN_ERROR, "not_a_number"
                statuses.append(422)
                continue
            item.update(label=label, confidence=confidence, unknown=None if unknown is None else bool(unknown[i]),
                        probabilities={c: float(v) for c, v in zip(classes, p)})
            if classifier.schema is not None:
                item["attributes"] = attribute_answers(classifier.schema, every, i)
    status = 200 if any(item["error"] is None for item in results) else statuses[0]
    return results, status


def attribute_answers(schema: Schema, every: list[np.ndarray], i: int) -> dict[str, dict]:
    """Photo ``i``'s answer per attribute (``tagging.answers``) with every value's probability."""
    out = {}
    for answer, attr, p in zip(answers(schema, every, i), schema.attributes, every):
        out[answer.name] = {"value": None if answer.multi else answer.values[0],
                            "values": answer.values, "confidences": answer.confidences,
                            "probabilities": {v: float(x) for v, x in zip(attr.values, p[i])}}
    return out


def public(results: list[dict]) -> list[dict]:
    """Results as answered: without the internal error kind (the status code carries it)."""
    return [{k: v for k, v in item.items() if k != "kind"} for item in results]


