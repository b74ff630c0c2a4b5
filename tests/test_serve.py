"""The HTTP service, started for real on 127.0.0.1 and called over HTTP; the web page driven
in headless Chromium."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from helpers import (
    app_server,
    catalogue_photo,
    dataset_like_image,
    free_port,
    png_header_only,
    running_server,
    save_untrained_checkpoint,
)

from fashionclf.data.fashion_mnist import CLASSES

pytestmark = pytest.mark.slow  # starts servers and a browser


def find_chromium() -> str:
    """Debian's chromium for the page tests: required under CI, a skip elsewhere without it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required under CI (apt-get install chromium)")
        pytest.skip("chromium not installed")
    return chromium


def tag_folder_in_page(playwright, chromium: str, url: str, folder):
    """Headless chromium on the service's page, ``folder`` chosen and every photo tagged: (browser, page)."""
    browser = playwright.chromium.launch(executable_path=chromium, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
    page = browser.new_page(viewport={"width": 1100, "height": 800}, accept_downloads=True)
    page.goto(url + "/")
    page.set_input_files("#folder", str(folder))
    page.wait_for_selector("#batch[data-done=true]", timeout=60_000)
    return browser, page


def photo(seed: int = 0, fmt: str = "jpeg") -> bytes:
    return catalogue_photo(dataset_like_image(), np.random.default_rng(seed), fmt)


def noise_photo() -> bytes:
    from helpers import png_bytes
    from PIL import Image

    canvas = np.full((64, 64), 255, np.uint8)  # a patch of noise on a white backdrop: no garment
    canvas[12:52, 12:52] = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    return png_bytes(Image.fromarray(canvas))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """An untrained fast-cnn whose unknown threshold lies halfway between the scores of the dress
    photo and of a noise image: the lower-scoring one is "unknown" (``UNKNOWN_FILE``)."""
    from fashionclf.data.photos import photo_to_28
    from fashionclf.inference.checkpoint import load_checkpoint, save_checkpoint
    from fashionclf.inference.classifier import TorchClassifier

    path = save_untrained_checkpoint(tmp_path_factory.mktemp("serve") / "model.pt", metrics={"test_accuracy": 0.92})
    ckpt = load_checkpoint(path)
    _, scores = TorchClassifier(ckpt).predict(np.stack([photo_to_28(photo(3)), photo_to_28(noise_photo())]))
    assert abs(scores[0] - scores[1]) > 1e-3  # far above the backends' 1e-5 disagreement
    save_checkpoint(ckpt.replace(unknown={"score": "energy", "temperature": 1.0, "threshold": float(scores.mean())}),
                    path)
    global UNKNOWN_FILE
    UNKNOWN_FILE = "dress.jpg" if scores[0] < scores[1] else "noise.png"
    return path


UNKNOWN_FILE = None


@pytest.fixture(scope="module")
def server(model_path):
    with running_server(model_path) as url:
        yield url


def test_health_and_model(server):
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    info = httpx.get(server + "/model").json()
    assert info["model"] == "fast-cnn" and info["classes"] == list(CLASSES)
    assert info["backend"] == "onnx" and info["test_accuracy"] == 0.92
    assert info["limits"]["max_files"] >= 1 and info["input"]["shape"] == ["N", 28, 28]
    assert info["unknown"]["score"] == "energy"


def test_unknown_is_flagged_per_file_and_the_label_still_given(server):
    r = httpx.post(server + "/predict", files=[("file", ("dress.jpg", photo(3), "image/jpeg")),
                                               ("file", ("noise.png", noise_photo(), "image/png"))])
    assert r.status_code == 200
    by_name = {item["filename"]: item for item in r.json()}
    assert {name: item["unknown"] for name, item in by_name.items()} == {
        "dress.jpg": UNKNOWN_FILE == "dress.jpg", "noise.png": UNKNOWN_FILE == "noise.png"}
    assert all(item["label"] in CLASSES for item in by_name.values())


def test_predict_one_photo(server):
    r = httpx.post(server + "/predict", files={"file": ("shirt.jpg", photo(), "image/jpeg")})
    assert r.status_code == 200
    [item] = r.json()
    assert item["filename"] == "shirt.jpg" and item["error"] is None
    assert item["label"] in CLASSES and 0 < item["confidence"] <= 1
    assert sum(item["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert item["probabilities"][item["label"]] == pytest.approx(item["confidence"])


def test_one_bad_file_does_not_stop_the_others(server):
    files = [("file", ("a.png", photo(1, "png"), "image/png")), ("file", ("bad.jpg", b"garbage", "image/jpeg")),
             ("file", ("c.webp", photo(2, "webp"), "image/webp"))]
    r = httpx.post(server + "/predict", files=files)
    assert r.status_code == 200
    a, bad, c = r.json()
    assert a["label"] and c["label"] and bad["label"] is None
    assert "not an image" in bad["error"]


@pytest.mark.parametrize("name, data, status, message", [
    ("notes.jpg", b"%PDF-1.4 not a photo", 415, "not an image"),
    ("empty.png", b"", 422, "empty file"),
    ("cut.jpg", photo()[:2000], 422, "damaged or truncated"),
    ("bomb.png", png_header_only(40_000, 40_000), 413, "over the limit"),
    ("blank.png", None, 422, "blank image"),
])
def test_bad_single_file_gets_the_right_status_and_a_json_error(server, name, data, status, message):
    if data is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), "white").save(buf, "PNG")
        data = buf.getvalue()
    r = httpx.post(server + "/predict", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == status
    assert message in r.json()[0]["error"]


def test_request_limits(server):
    limits = httpx.get(server + "/model").json()["limits"]
    too_many = [("file", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(limits["max_files"] + 1)]
    r = httpx.post(server + "/predict", files=too_many)
    assert r.status_code == 413 and "files per request" in r.json()["detail"]
    huge = b"\0" * (limits["max_request_bytes"] + 1)
    r = httpx.post(server + "/predict", files={"file": ("big.jpg", huge, "image/jpeg")})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    def chunked():  # no Content-Length: the limit is enforced by counting
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for _ in range(limits["max_request_bytes"] // 65536 + 2):
            yield b"\0" * 65536

    r = httpx.post(server + "/predict", content=chunked(),
                   headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    r = httpx.post(server + "/predict", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = httpx.post(server + "/predict", files={"photo": ("x.jpg", photo(), "image/jpeg")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = httpx.post(server + "/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 422 and "form" in r.json()["detail"]  # a JSON error, not a 500


def test_web_page_in_headless_chromium(server, tmp_path):
    """Choose a photo on the page; the preview, label and bar chart appear."""
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    (tmp_path / "dress.jpg").write_bytes(photo(3))
    (tmp_path / "noise.png").write_bytes(noise_photo())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(server + "/")
        assert "Tag clothing photos" in page.title() + page.content()
        for name in ("dress.jpg", "noise.png"):
            page.evaluate("document.getElementById('result').className = ''")  # wait for this file's answer
            page.set_input_files("#file", str(tmp_path / name))
            page.wait_for_selector("#result.shown", timeout=15_000)
            label = page.get_attribute("#label", "data-label")
            assert label in CLASSES
            unknown = name == UNKNOWN_FILE
            assert page.get_attribute("#label", "data-unknown") == str(unknown).lower()
            assert page.is_visible("#unknown-note") == unknown
            assert page.text_content("#label").startswith("Unknown item") == unknown
            assert page.locator(".bar").count() == 10
            preview = page.get_attribute("#preview", "src")
            assert preview.startswith("data:image/png;base64,")
            assert page.evaluate("document.getElementById('preview').naturalWidth") == 28
            assert page.text_content("#error") == ""
            page.screenshot(path=str(tmp_path / f"page-{name}.png"), full_page=True)
            # the drop zone overlaps neither the paragraph above it nor the results below it
            boxes = {sel: page.locator(sel).bounding_box() for sel in ("body > p:first-of-type", "#drop", "#result")}
            for a, b in (("body > p:first-of-type", "#drop"), ("#drop", "#result")):
                assert not _intersect(boxes[a], boxes[b]), (a, boxes[a], b, boxes[b])
        assert (tmp_path / "page-dress.jpg.png").stat().st_size > 1000
        browser.close()


def test_web_page_tags_a_whole_folder_and_downloads_the_table(server, tmp_path):
    """A folder of 40 photos (more than one request holds), with a subfolder, a damaged photo, a
    text file and a formula-like name: every photo gets a row, the CSV holds the same rows."""
    import csv

    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    shop = tmp_path / "shop"
    (shop / "more").mkdir(parents=True)
    names = [f"p{i:02d}.jpg" for i in range(36)] + ["more/m1.jpg", "=cmd.jpg"]
    for i, name in enumerate(names):
        (shop / name).write_bytes(photo(i))
    (shop / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (shop / "notes.txt").write_text("not a photo")
    with sync_playwright() as p:
        browser, page = tag_folder_in_page(p, chromium, server, shop)
        assert page.locator("#table tbody tr").count() == len(names) + 1  # the text file left out
        assert "1 could not be tagged" in page.text_content("#progress")
        assert "1 files that are not photos left out" in page.text_content("#progress")
        assert page.locator("tr.failed").count() == 1 and "error" in page.text_content("tr.failed")
        assert page.is_visible("#result")  # the first photo's detail view
        with page.expect_download() as download:
            page.click("#csv")
        path = tmp_path / "tags.csv"
        download.value.save_as(path)
        page.screenshot(path=str(tmp_path / "page-folder.png"), full_page=True)
        browser.close()
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(names) + 1 and [r["path"] for r in rows if r["error"]] == ["shop/broken.jpg"]
    by_path = {r["path"]: r for r in rows}
    assert "shop/more/m1.jpg" in by_path and "'=cmd.jpg" not in by_path and "shop/=cmd.jpg" in by_path
    good = [r for r in rows if not r["error"]]
    assert all(r["label"] in CLASSES and 0 < float(r["confidence"]) <= 1 and r["unknown"] in ("true", "false")
               for r in good)


def test_a_model_of_several_attributes_answers_per_attribute_and_the_page_shows_them(tagged_model, tmp_path):
    """serve and the page with a model of category, colour and a multi-label attribute: the JSON
    answer per attribute, the table's columns and the downloaded CSV's header."""
    import csv

    model, shop = tagged_model
    photos = sorted((shop / "photos").glob("*.jpg"))[::20]
    with running_server(model) as url:
        info = httpx.get(url + "/model").json()
        assert [a["name"] for a in info["attributes"]] == ["category", "colour", "looks"]
        answer = httpx.post(url + "/predict", files=[("file", (p.name, p.read_bytes(), "image/jpeg"))
                                                     for p in photos[:2]]).json()
        for item in answer:
            assert set(item["attributes"]) == {"category", "colour", "looks"}
            assert item["attributes"]["category"]["value"] == item["label"]
            assert item["attributes"]["colour"]["value"] in ("red", "blue")
            looks = item["attributes"]["looks"]
            assert looks["value"] is None and set(looks["probabilities"]) == {"cool", "lower", "upper", "warm"}
        chromium = find_chromium()
        from playwright.sync_api import sync_playwright

        folder = tmp_path / "photos"
        folder.mkdir()
        for p in photos:
            shutil.copy(p, folder / p.name)
        with sync_playwright() as pw:
            browser, page = tag_folder_in_page(pw, chromium, url, folder)
            assert page.locator("#table thead th").all_text_contents() == [
                "photo", "file", "category", "confidence", "unknown", "colour", "looks"]
            assert page.locator("#table tbody tr").count() == len(photos)
            assert "colour:" in page.text_content("#attributes")
            with page.expect_download() as download:
                page.click("#csv")
            path = tmp_path / "tags.csv"
            download.value.save_as(path)
            browser.close()
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["path", "category", "category_confidence", "colour", "colour_confidence", "looks",
                             "looks_confidence", "unknown", "error"]
    assert all(r["colour"] in ("red", "blue") for r in rows) and len(rows) == len(photos)


def _intersect(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def test_several_worker_processes_answer_alike(model_path):
    """--workers 2: two server processes, each with its own model copy, give the same answers."""
    with running_server(model_path, "--workers", "2") as url:
        answers = set()
        for i in range(8):
            r = httpx.post(url + "/predict", files={"file": ("a.jpg", photo(5), "image/jpeg")})
            assert r.status_code == 200
            item = r.json()[0]
            answers.add((item["label"], round(item["confidence"], 5)))
        assert len(answers) == 1
        assert httpx.get(url + "/model").json()["model"] == "fast-cnn"


def test_create_app_returns_the_app_and_enforces_the_limits_it_shows(model_path):
    """create_app gives the FastAPI app itself (the body limit is its middleware), and the pixel
    limits shown by GET /model are the ones enforced, per image and per request."""
    from fastapi import FastAPI

    from fashionclf.service.serve import create_app
    from fashionclf.service.settings import ServeSettings
    from fashionclf.service.uploads import Limits

    app = create_app(ServeSettings(str(model_path), backend="torch"), Limits(max_pixels=10_000))
    assert isinstance(app, FastAPI)
    with app_server(app) as url:
        assert httpx.get(url + "/model").json()["limits"]["max_pixels"] == 10_000
        big = photo(7)  # catalogue photos are 168+ px a side: more than 10,000 pixels
        r = httpx.post(url + "/predict", files={"file": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413 and "over the limit of 10,000" in r.json()[0]["error"]
    from helpers import png_bytes
    from PIL import Image

    image = png_bytes(Image.fromarray(dataset_like_image()).resize((100, 100)))  # 10,000 pixels each
    app = create_app(ServeSettings(str(model_path), backend="torch"), Limits(max_request_pixels=25_000))
    with app_server(app) as url:
        r = httpx.post(url + "/predict", files=[("file", (f"{i}.png", image, "image/png")) for i in range(3)])
        first, second, third = r.json()
        assert r.status_code == 200 and first["label"] and second["label"]
        assert third["error"].startswith("the request's images together are over the limit of 25,000 pixels")


def test_the_event_loop_stays_free_while_a_request_works_and_a_full_queue_gets_503(model_path):
    """A large request whose classification is held up does not hold up /health; with the queue
    full, the next request is told to retry."""
    import threading

    from fashionclf.inference.checkpoint import load_checkpoint
    from fashionclf.inference.classifier import TorchClassifier
    from fashionclf.service.serve import create_app
    from fashionclf.service.settings import ServeSettings
    from fashionclf.service.uploads import Limits

    release, started = threading.Event(), threading.Event()

    class Held(TorchClassifier):
        def predict_attributes(self, images):
            started.set()
            release.wait(60)
            return super().predict_attributes(images)

    from helpers import png_bytes
    from PIL import Image

    large = png_bytes(Image.fromarray(dataset_like_image()).resize((1500, 1000)))  # 1.5 MP: decoded in the pool
    app = create_app(ServeSettings(str(model_path)), Limits(concurrency=1, max_queue=1),
                     classifier=Held(load_checkpoint(model_path)))
    with app_server(app) as url:
        answer = {}
        worker = threading.Thread(target=lambda: answer.update(r=httpx.post(
            url + "/predict", files={"file": ("a.png", large, "image/png")}, timeout=60)))
        worker.start()
        assert started.wait(30)
        try:
            assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok"}  # not stuck behind it
            busy = httpx.post(url + "/predict", files={"file": ("b.jpg", photo(9), "image/jpeg")}, timeout=10)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        finally:
            release.set()
            worker.join(60)
        assert answer["r"].status_code == 200 and answer["r"].json()[0]["label"] in CLASSES


def test_every_hostile_file_in_one_request_gets_its_own_error_and_the_good_one_its_label(server):
    from helpers import hostile_files

    bad = hostile_files()
    files = [("file", (name, data, "application/octet-stream")) for name, (data, _) in bad.items()]
    files.append(("file", ("good.jpg", photo(4), "image/jpeg")))
    r = httpx.post(server + "/predict", files=files)
    assert r.status_code == 200
    by_name = {item["filename"]: item for item in r.json()}
    assert by_name["good.jpg"]["label"] in CLASSES and by_name["good.jpg"]["error"] is None
    assert all(by_name[name]["error"] and by_name[name]["label"] is None for name in bad)
    r = httpx.post(server + "/predict", files={"file": ("vector.eps", bad["vector.eps"][0], "image/x-eps")})
    assert r.status_code == 415 and "supported format" in r.json()[0]["error"]


def test_file_names_are_echoed_safely(server):
    """Control characters and over-long names in the multipart header come back sanitised."""
    long_name = "x" * 1000 + ".jpg"
    parts = []
    for name in ("a\tb\x1b[31m.jpg", long_name):  # (a raw CR breaks the multipart header: 422)
        parts.append(b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name.encode()
                     + b"\"\r\nContent-Type: image/jpeg\r\n\r\n" + photo(6) + b"\r\n")
    body = b"".join(parts) + b"--BOUNDARY--\r\n"
    r = httpx.post(server + "/predict", content=body, headers={"content-type": "multipart/form-data; boundary=BOUNDARY"})
    assert r.status_code == 200, r.text
    names = [item["filename"] for item in r.json()]
    assert names[0] == "a?b?[31m.jpg" and len(names[1]) == 255
    assert all(item["label"] in CLASSES for item in r.json())


def test_a_stalled_body_gets_408_and_frees_the_request(model_path):
    import socket

    from fashionclf.service.serve import create_app
    from fashionclf.service.settings import ServeSettings
    from fashionclf.service.uploads import Limits

    app = create_app(ServeSettings(str(model_path), backend="torch"), Limits(body_timeout=0.5))
    with app_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n\r\n--B\r\n")
            answer = conn.recv(4096).decode()  # the client sends nothing more
        assert answer.startswith("HTTP/1.1 408") and "stalled" in answer
        assert httpx.get(url + "/health").status_code == 200


def _read_answer(conn) -> str:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            re.search(rb"content-length: (\d+)", data, re.I).group(1)):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def multipart_body(name: str, data: bytes) -> bytes:
    """A one-file multipart body with boundary B, to send by hand."""
    return (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n%s\r\n--B--\r\n" % (name.encode(), data))


def test_slow_request_headers_get_408_and_free_the_connection(model_path, monkeypatch):
    import socket

    from fashionclf.service.protocol import HeaderDeadline
    from fashionclf.service.serve import create_app
    from fashionclf.service.settings import ServeSettings
    from fashionclf.service.uploads import Limits

    monkeypatch.setattr(HeaderDeadline, "timeout", 0.5)
    app = create_app(ServeSettings(str(model_path), backend="torch"), Limits())
    with app_server(app, http=HeaderDeadline) as url:
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        with socket.create_connection(address, timeout=30) as conn:  # headers never finished
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert _read_answer(conn).startswith("HTTP/1.1 408")
            assert conn.recv(1) == b""  # and the connection is closed
        with socket.create_connection(address, timeout=30) as conn:  # the second request of a connection
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _read_answer(conn).startswith("HTTP/1.1 200")
            conn.sendall(b"GET /health HTTP/1.1\r\n")
            assert _read_answer(conn).startswith("HTTP/1.1 408")
        with socket.create_connection(address, timeout=30) as conn:  # prompt headers, slower body: fine
            body = multipart_body("a.jpg", photo())
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=B\r\nContent-Length: %d\r\n\r\n" % len(body))
            time.sleep(1.0)
            conn.sendall(body)
            answer = _read_answer(conn)
            assert answer.startswith("HTTP/1.1 200") and json.loads(answer.split("\r\n\r\n", 1)[1])[0]["label"]


def test_sigterm_lets_the_request_in_flight_finish(model_path):
    import signal
    import socket

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fashionclf", "serve", str(model_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = multipart_body("a.jpg", photo())
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=B\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:100])
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)  # while the body is still coming
            time.sleep(0.5)
            conn.sendall(body[100:])
            answer = _read_answer(conn)
        assert answer.startswith("HTTP/1.1 200"), answer
        assert json.loads(answer.split("\r\n\r\n", 1)[1])[0]["label"] in CLASSES
        # uvicorn shuts down cleanly, then re-raises the signal, as a process stopped by it should
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Finished server process" in proc.stdout.read()
        with pytest.raises(httpx.ConnectError):  # and it no longer takes new connections
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        proc.kill()
        proc.wait()


def test_http_hygiene_docs_off_host_checked_nosniff_and_a_policy_the_page_lives_with(server, model_path):
    assert httpx.get(server + "/docs").status_code == 404 and httpx.get(server + "/openapi.json").status_code == 404
    r = httpx.get(server + "/")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert httpx.get(server + "/health").headers["x-content-type-options"] == "nosniff"
    # bound to loopback: another Host (DNS rebinding) is refused
    assert httpx.get(server + "/health", headers={"Host": "evil.example"}).status_code == 400
    with running_server(model_path, "--docs") as url:
        assert httpx.get(url + "/openapi.json").status_code == 200


def test_api_key_guards_predict_and_model_but_not_health(model_path, tmp_path):
    key = "k" * 12 + "-secret-0123456789"
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    with running_server(model_path, "--api-key-file", str(key_file)) as url:
        files = {"file": ("a.jpg", photo(1), "image/jpeg")}
        assert httpx.get(url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {key}"}):
            r = httpx.post(url + "/predict", files=files, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert httpx.get(url + "/model", headers=headers).status_code == 401
        ok = {"Authorization": f"Bearer {key}"}
        assert httpx.post(url + "/predict", files=files, headers=ok).status_code == 200
        assert httpx.get(url + "/model", headers=ok).json()["model"] == "fast-cnn"


def test_serving_beyond_loopback_needs_a_key_or_insecure(model_path, tmp_path):
    r = subprocess.run([sys.executable, "-m", "fashionclf", "serve", str(model_path), "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=120, env={k: v for k, v in os.environ.items()
                                                                          if k != "FASHIONCLF_API_KEY"})
    assert r.returncode == 2 and "--api-key-file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "short").write_text("abc\n")
    r = subprocess.run([sys.executable, "-m", "fashionclf", "serve", str(model_path), "--api-key-file",
                        str(tmp_path / "short")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "at least 16" in r.stderr


def test_prometheus_metrics_count_requests_files_and_latency(model_path):
    from fashionclf.service.serve import create_app
    from fashionclf.service.settings import ServeSettings

    with app_server(create_app(ServeSettings(str(model_path), backend="torch"))) as url:
        httpx.get(url + "/health")
        files = [("file", ("a.jpg", photo(1), "image/jpeg")), ("file", ("b.txt", b"not an image", "text/plain"))]
        assert httpx.post(url + "/predict", files=files).status_code == 200
        text = httpx.get(url + "/metrics").text
    assert 'fashionclf_requests_total{endpoint="/health",status="200"} 1.0' in text
    assert 'fashionclf_requests_total{endpoint="/predict",status="200"} 1.0' in text
    assert 'fashionclf_files_total{outcome="unsupported"} 1.0' in text
    assert 'fashionclf_request_seconds_count{endpoint="/predict"} 1.0' in text
    assert "fashionclf_requests_admitted 0.0" in text
