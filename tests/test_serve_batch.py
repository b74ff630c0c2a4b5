"""POST /batch: many photos in one upload, one NDJSON line per photo streamed back, then a
summary; its limits; and /predict's own form reader (the one that replaced Starlette's)."""

import json

import httpx
import numpy as np
import pytest
from helpers import app_server, catalogue_photo, dataset_like_image, save_untrained_checkpoint

from fashionclf.service.routes import BATCH_CHUNK

pytestmark = pytest.mark.slow  # starts servers


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_untrained_checkpoint(tmp_path_factory.mktemp("batch") / "model.pt")


def make_app(model, **limits):
    from fashionclf.service.serve import create_app
    from fashionclf.service.settings import ServeSettings
    from fashionclf.service.uploads import Limits

    return create_app(ServeSettings(str(model), backend="onnx"), Limits(**limits))


def photos(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [catalogue_photo(dataset_like_image(), rng) for _ in range(n)]


def test_a_batch_answers_every_photo_in_order_line_by_line_and_sums_up(model):
    good = photos(BATCH_CHUNK + 6)  # more than one chunk
    files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(good)]
    files.insert(3, ("file", ("broken.jpg", b"not an image", "image/jpeg")))
    with app_server(make_app(model)) as url:
        with httpx.stream("POST", url + "/batch", files=files, timeout=120) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
            assert "content-length" not in r.headers  # streamed: chunked, written as the chunks are tagged
            lines = [json.loads(line) for line in r.iter_lines() if line]
        single = httpx.post(url + "/predict", files={"file": ("0.jpg", good[0], "image/jpeg")}).json()[0]
    *answers, last = lines
    assert [a["index"] for a in answers] == list(range(len(files)))
    assert [a["filename"] for a in answers] == [name for _, (name, _, _) in files]
    assert answers[3]["error"] and "supported format" in answers[3]["error"]
    assert last == {"summary": {"files": len(files), "tagged": len(good), "failed": 1}}
    first = answers[0]
    assert first["label"] == single["label"] and first["confidence"] == pytest.approx(single["confidence"], abs=1e-6)


def test_a_batch_refuses_what_it_cannot_take_before_answering(model):
    few = photos(3)
    with app_server(make_app(model, batch_max_files=2, batch_max_bytes=100_000)) as url:
        r = httpx.post(url + "/batch", files=[("file", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(few)])
        assert r.status_code == 413 and "at most 2 files" in r.json()["detail"]
        r = httpx.post(url + "/batch", files={"file": ("big.jpg", b"\0" * 100_001, "image/jpeg")})
        assert r.status_code == 413 and "over the limit of 100,000 bytes" in r.json()["detail"]
        r = httpx.post(url + "/batch", files={"photo": ("a.jpg", few[0], "image/jpeg")})
        assert r.status_code == 422 and "'file'" in r.json()["detail"]
        r = httpx.post(url + "/batch", content=b"{}", headers={"content-type": "application/json"})
        assert r.status_code == 415
        # /predict keeps its own, smaller limit
        r = httpx.post(url + "/predict", files={"file": ("a.jpg", few[0], "image/jpeg")})
        assert r.status_code == 200


def test_a_batch_cut_short_after_answers_ends_with_an_error_line(model):
    chunk = photos(BATCH_CHUNK)
    boundary = b"B0undary"
    parts = b"".join(b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="%d.jpg"\r\n'
                     b"Content-Type: image/jpeg\r\n\r\n" % i + data + b"\r\n" for i, data in enumerate(chunk))
    body = parts + b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\nabc'
    with app_server(make_app(model)) as url:
        r = httpx.post(url + "/batch", content=body,
                       headers={"content-type": "multipart/form-data; boundary=" + boundary.decode()}, timeout=60)
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and len(lines) == BATCH_CHUNK + 1
    assert lines[-1]["status"] == 422 and "cut short" in lines[-1]["error"]
    assert lines[-1]["summary"]["files"] == BATCH_CHUNK


def test_predict_reads_unicode_names_and_ignores_other_fields(model):
    photo = photos(1)[0]
    with app_server(make_app(model)) as url:
        r = httpx.post(url + "/predict?preview=true", data={"note": "x"},
                       files=[("file", ("blå kjole.jpg", photo, "image/jpeg"))])
    assert r.status_code == 200
    [answer] = r.json()
    assert answer["filename"] == "blå kjole.jpg" and answer["preview"].startswith("data:image/png")
