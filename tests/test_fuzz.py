"""Property-based fuzzing (Hypothesis): whatever bytes come in, the IDX parser, the photo
conversion and the HTTP endpoint answer with a result or the project's own error, never a
crash. Bounded for `make test`; `make fuzz` (HYPOTHESIS_PROFILE=fuzz) runs far more examples."""

import io
import os

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fashionclf.data.fashion_mnist import IMAGE_MAGIC, LABEL_MAGIC, parse_idx
from fashionclf.data.photos import FORMATS, PhotoError, photo_to_28
from fashionclf.errors import DataError

settings.register_profile("test", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "test"))


def _valid_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    out = {}
    for fmt in FORMATS:
        buf = io.BytesIO()
        (img.convert("L") if fmt == "PPM" else img).save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


VALID = _valid_images()


@given(st.binary(max_size=64), st.sampled_from([IMAGE_MAGIC, LABEL_MAGIC]))
def test_idx_parser_on_random_bytes(data, magic):
    try:
        parse_idx(data, "fuzz", magic)
    except DataError:
        pass


@given(st.integers(0, 0xFFFFFFFF), st.lists(st.integers(0, 300), max_size=4), st.binary(max_size=256),
       st.sampled_from([IMAGE_MAGIC, LABEL_MAGIC]))
def test_idx_parser_on_random_headers_and_lengths(magic_field, dims, body, magic):
    header = magic_field.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    try:
        array = parse_idx(header + body, "fuzz", magic)
        assert array.dtype == np.uint8
    except DataError:
        pass


@given(st.binary(max_size=2048))
def test_photo_conversion_on_random_bytes(data):
    try:
        assert photo_to_28(data).shape == (28, 28)
    except PhotoError:
        pass


@given(st.sampled_from(sorted(VALID)), st.data())
def test_photo_conversion_on_truncated_and_mutated_images_of_every_format(fmt, data):
    raw = bytearray(VALID[fmt])
    cut = data.draw(st.integers(0, len(raw)))
    raw = raw[:cut] if data.draw(st.booleans()) else raw
    for _ in range(data.draw(st.integers(0, 8))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        assert photo_to_28(bytes(raw)).shape == (28, 28)
    except PhotoError:
        pass


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    from helpers import save_untrained_checkpoint
    from test_serve import app_server

    from fashionclf.service.serve import create_app
    from fashionclf.service.settings import ServeSettings

    model = save_untrained_checkpoint(tmp_path_factory.mktemp("fuzz") / "model.pt")
    with app_server(create_app(ServeSettings(str(model), backend="torch"))) as url:
        yield url


@pytest.mark.slow
@settings(max_examples=40 if os.environ.get("HYPOTHESIS_PROFILE") != "fuzz" else 1000)
@given(st.lists(st.tuples(st.sampled_from(["file", "files", "", "x" * 300, "fïle"]),
                          st.one_of(st.binary(max_size=512), st.sampled_from(list(VALID.values()))),
                          st.sampled_from(["image/jpeg", "application/octet-stream", "", "text/plain; charset=utf-7"]),
                          st.text(max_size=40)),
                max_size=5),
       st.sampled_from(["multipart/form-data", "application/json", "", "multipart/form-data; boundary="]))
def test_the_endpoint_never_answers_5xx(server_url, parts, content_type):
    if content_type == "multipart/form-data":
        files = [(name, (filename, body, ctype)) for name, body, ctype, filename in parts]
        r = httpx.post(server_url + "/predict", files=files or None, data={} if files else {"x": "1"})
    else:
        body = b"".join(p[1] for p in parts)
        r = httpx.post(server_url + "/predict", content=body, headers={"content-type": content_type} if content_type else {})
    assert r.status_code < 500, r.text
    r.json()  # every answer is JSON
