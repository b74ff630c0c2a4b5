"""The service's parts that need no server (the fast tier): the request's CPU work, the limits,
the API key, the names echoed back, the page's security policy. tests/test_serve.py drives a
real server and a browser."""

import io

import numpy as np
import pytest
from helpers import catalogue_photo, png_bytes, save_untrained_checkpoint, synthetic_images
from PIL import Image

from fashionclf.errors import UsageError
from fashionclf.inference.classifier import load_classifier
from fashionclf.service.protocol import authorised, content_security_policy
from fashionclf.service.settings import read_api_key
from fashionclf.service.uploads import Limits, header_pixels, public, safe_name, tag_uploads


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return load_classifier(save_untrained_checkpoint(tmp_path_factory.mktemp("m") / "model.pt"), "torch")


def _jpeg(side: int) -> bytes:
    """A white photo with a dark item in its middle."""
    image = np.full((side, side, 3), 255, np.uint8)
    image[side // 4 : 3 * side // 4, side // 3 : 2 * side // 3] = (40, 60, 90)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG")
    return buf.getvalue()


def test_one_request_tags_good_files_and_gives_each_bad_one_its_own_error(classifier):
    photo = catalogue_photo(synthetic_images(np.array([3]))[0], np.random.default_rng(0))
    uploads = [("a.jpg", photo), ("bad\r\nname.txt", b"not an image"), ("c.png", png_bytes(Image.new("L", (9, 9))))]
    results, status = tag_uploads(classifier, uploads, Limits(), preview=True)
    assert status == 200 and [r["filename"] for r in results] == ["a.jpg", "bad??name.txt", "c.png"]
    assert results[0]["label"] in classifier.classes and results[0]["preview"].startswith("data:image/png;base64,")
    assert sum(results[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert results[1]["error"] and results[1]["kind"] == "unsupported"
    assert "blank image" in results[2]["error"]  # no item on the backdrop
    assert all("kind" not in r for r in public(results))  # the status code carries the kind


def test_pixel_limits_are_checked_from_headers_per_image_and_per_request(classifier):
    big = _jpeg(200)
    assert header_pixels(big) == 40_000 and header_pixels(b"junk") == 0
    results, status = tag_uploads(classifier, [("big.jpg", big)], Limits(max_pixels=10_000))
    assert status == 413 and "pixels" in results[0]["error"]
    results, status = tag_uploads(classifier, [("1.jpg", big), ("2.jpg", big)], Limits(max_request_pixels=50_000))
    assert [r["error"] is None for r in results] == [True, False] and status == 200
    assert "request's images together" in results[1]["error"]


def test_the_api_key_rule(tmp_path, monkeypatch):
    key = "k" * 32
    assert authorised(b"Bearer " + key.encode(), key) and authorised(b"bearer " + key.encode(), key)
    assert not authorised(b"Bearer wrong", key) and not authorised(b"", key) and not authorised(key.encode(), key)
    (tmp_path / "key").write_text(key + "\nsecond line ignored\n")
    assert read_api_key(tmp_path / "key") == key
    (tmp_path / "short").write_text("short\n")
    with pytest.raises(UsageError, match="use at least 16"):
        read_api_key(tmp_path / "short")
    with pytest.raises(UsageError, match="cannot read a key"):
        read_api_key(tmp_path / "missing")
    monkeypatch.setenv("FASHIONCLF_API_KEY", key)
    assert read_api_key(None) == key


def test_names_echoed_back_are_safe_and_the_page_runs_only_its_own_code():
    assert safe_name("a\x00b\x7fc\nd") == "a?b?c?d" and len(safe_name("x" * 1000)) == 255
    assert safe_name("\udcff.jpg") == "?.jpg" and safe_name(None) is None
    page = "<html><style>p{}</style><script>go()</script></html>"
    policy = content_security_policy(page)
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert policy.count("'sha256-") == 2 and "unsafe-inline" not in policy
    assert content_security_policy(page.replace("go()", "evil()")) != policy  # the hash pins the script


def test_the_api_description_says_what_every_endpoint_answers(classifier, tmp_path):
    from fashionclf.service.serve import create_app
    from fashionclf.service.settings import ServeSettings

    spec = create_app(ServeSettings("unused.pt", docs=True), classifier=classifier).openapi()
    predict = spec["paths"]["/predict"]["post"]["responses"]
    assert predict["200"]["content"]["application/json"]["schema"]["items"]["$ref"].endswith("/FileResult")
    assert {"401", "408", "413", "415", "422", "503"} <= set(predict)
    result = spec["components"]["schemas"]["FileResult"]["properties"]
    assert {"filename", "label", "confidence", "unknown", "probabilities", "error", "preview", "attributes"} == set(result)
    assert spec["components"]["schemas"]["AttributeAnswer"]["properties"].keys() == {
        "value", "values", "confidences", "probabilities"}
    assert spec["paths"]["/model"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/ModelInfo")
    assert "/health" in spec["paths"] and "/" not in spec["paths"]
