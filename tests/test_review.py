"""fashionclf review: the queue's cards, the decisions manifest, the page driven by keyboard in
Debian's chromium (Playwright), the API key rule, and training that reads the decisions."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import catalogue_photo, free_port, save_untrained_checkpoint, synthetic_images
from test_serve import find_chromium

HOSTILE = '<img src=x onerror="document.title=1">.jpg'


def write_queue(root, names_by_class: dict[str, list[str]], seed: int = 0):
    rng = np.random.default_rng(seed)
    for c, (cls, names) in enumerate(names_by_class.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for image, name in zip(synthetic_images(np.full(len(names), c), seed=seed + c), names):
            (root / cls / name).write_bytes(catalogue_photo(image, rng))
    return root


@pytest.fixture
def shop(tmp_path):
    """A folder of six catalogue photos in two class folders, one with a hostile name, and an
    untrained model of those classes."""
    root = write_queue(tmp_path / "queue", {"bags": ["b1.jpg", "b2.jpg", HOSTILE], "shoes": ["s1.jpg", "s2.jpg",
                                                                                             "s3.jpg"]})
    return root, save_untrained_checkpoint(tmp_path / "model.pt", classes=["bags", "shoes"])


@contextmanager
def review_server(queue, model, *args, env=None):
    port = free_port()
    log = queue.parent / f"review-{port}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "fashionclf", "review", str(queue), "--model", str(model),
                                 "--port", str(port), *args], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise RuntimeError(f"review exited: {log.read_text()}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def decisions_of(path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: {k: v for k, v in row.items() if k != "path"} for row in csv.DictReader(f)}


def open_page(playwright, url):
    browser = playwright.chromium.launch(executable_path=find_chromium(), args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    return browser, page


def press_and_wait(page, key: str) -> None:
    """Press ``key`` and wait until the page has heard back about it (its status line changes)."""
    page.evaluate("document.getElementById('status').textContent = ''")
    page.keyboard.press(key)
    page.wait_for_selector("#status:not(:empty)", timeout=20_000)


@pytest.mark.slow
def test_a_person_decides_by_keyboard_and_every_decision_is_written_at_once(shop):
    from playwright.sync_api import sync_playwright

    queue, model = shop
    manifest = queue / "decisions.csv"
    with review_server(queue, model) as url, sync_playwright() as p:
        browser, page = open_page(p, url)
        cards = page.locator(".card")
        assert cards.count() == 6
        focused = page.evaluate("document.activeElement.dataset.id")
        assert focused == "0"  # the first card has the focus when the page loads
        assert not manifest.exists()  # nothing is written before a decision
        names = [cards.nth(i).locator(".name").text_content() for i in range(6)]
        assert HOSTILE in names and page.title() == "fashionclf review"  # shown as text, never run
        assert page.locator(".card img").count() == 12  # a photo and its heatmap a card: no element came from a name

        page.keyboard.press("h")  # where the model looked, in place of the photo
        page.wait_for_selector(".card[data-id='0'][data-heatmap=true] img.heat", timeout=30_000)
        assert page.evaluate("document.querySelector('.card img.heat').naturalWidth") == 112
        page.keyboard.press("h")
        page.wait_for_selector(".card[data-id='0'][data-heatmap=false]")
        press_and_wait(page, "2")  # the second value, "shoes", for the first card
        assert decisions_of(manifest) == {f"{rel(queue, page, 0)}": {"label": "shoes"}}
        assert page.evaluate("document.activeElement.dataset.id") == "1"  # on to the next card
        suggested = page.evaluate("fetch('/api/queue').then(r => r.json()).then(q => q.cards[1].suggested.label)")
        press_and_wait(page, "Enter")  # accept the suggestion
        assert decisions_of(manifest)[rel(queue, page, 1)] == {"label": suggested}
        press_and_wait(page, "x")  # not one of our items
        assert decisions_of(manifest)[rel(queue, page, 2)] == {"label": "_unknown"}
        press_and_wait(page, "u")  # undo takes it back, in the file too
        assert rel(queue, page, 2) not in decisions_of(manifest) and len(decisions_of(manifest)) == 2

        page.keyboard.press("Space")  # select card 3 (x moved the focus on; the undo left it there)
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Space")
        assert page.locator(".card.selected").count() == 2
        press_and_wait(page, "1")  # one value to every selected card
        decided = decisions_of(manifest)
        assert [decided[rel(queue, page, i)] for i in (3, 4)] == [{"label": "bags"}] * 2
        assert page.locator(".card.selected").count() == 0 and page.locator(".card.done").count() == 4
        timings = page.evaluate("window.fashionclfTimings")
        assert len(timings) == 4 and all(t > 0 for t in timings)
        browser.close()
    # A review opened again carries the decisions on and shows them.
    with review_server(queue, model) as url:
        cards = httpx.get(url + "/api/queue").json()["cards"]
        assert sum(bool(c["decided"]) for c in cards) == 4


def rel(queue, page, i: int) -> str:
    """The decisions manifest's path of card ``i`` (relative to the queue folder it lies in)."""
    from pathlib import Path

    path = page.evaluate(f"fetch('/api/queue').then(r => r.json()).then(q => q.cards[{i}].path)")
    return str(Path(path).resolve().relative_to(queue.resolve()))


@pytest.mark.slow
def test_the_page_decides_each_attribute_of_a_tagged_model(tagged_model, tmp_path):
    from playwright.sync_api import sync_playwright

    model, shop = tagged_model
    queue = tmp_path / "queue"
    queue.mkdir()
    for photo in sorted((shop / "photos").glob("*.jpg"))[:4]:
        (queue / photo.name).write_bytes(photo.read_bytes())
    with review_server(queue, model) as url, sync_playwright() as p:
        browser, page = open_page(p, url)
        attributes = page.evaluate("fetch('/api/queue').then(r => r.json()).then(q => q.attributes.map(a => a.name))")
        assert attributes == ["category", "colour", "looks"]
        page.keyboard.press("ArrowRight")  # the colour attribute of the first card
        press_and_wait(page, "1")
        press_and_wait(page, "Enter")  # looks: its suggestion (values ;-joined)
        row = next(iter(decisions_of(queue / "decisions.csv").values()))
        assert row["category"] == "" and row["colour"] == "blue" and row["looks"]
        browser.close()


def test_the_review_page_keeps_the_services_key_rule(shop):
    queue, model = shop
    key = "k" * 24
    with review_server(queue, model, env={"FASHIONCLF_API_KEY": key}) as url:
        assert httpx.get(url + "/api/queue").status_code == 401
        assert httpx.get(url + "/api/queue", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        page = httpx.get(url + "/")  # the page itself is open; it asks for the key
        assert page.status_code == 200 and "script-src 'sha256-" in page.headers["content-security-policy"]
        assert httpx.post(url + "/api/decide", json={"ids": [0], "attribute": "label", "value": "bags"},
                          headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.post(url + "/api/decide", json={"ids": [0], "attribute": "label", "value": "hats"},
                          headers={"Authorization": f"Bearer {key}"}).status_code == 422
        assert httpx.get(url + "/api/queue", headers={"Host": "evil.example"}).status_code == 400
    r = subprocess.run([sys.executable, "-m", "fashionclf", "review", str(queue), "--model", str(model),
                        "--host", "0.0.0.0"], capture_output=True, text=True, env={
                            k: v for k, v in os.environ.items() if k != "FASHIONCLF_API_KEY"})
    assert r.returncode == 2 and "API key" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_queues_from_an_audit_csv_and_a_predict_review_folder(shop, tmp_path):
    from fashionclf.fileio import csv_cell
    from fashionclf.inference.classifier import load_classifier
    from fashionclf.review.queue import load_queue

    queue, model = shop
    classifier = load_classifier(model, "torch")
    (queue / "bags" / "=cmd.jpg").write_bytes((queue / "bags" / "b1.jpg").read_bytes())
    audit = tmp_path / "suspects.csv"
    with open(audit, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["path", "label", "suggested", "score", "kind", "other"])
        w.writerow([str(queue / "bags" / "b2.jpg"), "bags", "shoes", "0.7", "label", ""])
        w.writerow([csv_cell(str(queue / "bags" / "=cmd.jpg")), "bags", "shoes", "0.9", "label", ""])
        w.writerow([str(queue / "bags" / "b2.jpg"), "bags", "", "0.95", "duplicate", str(queue / "bags" / "b1.jpg")])
    q = load_queue(audit, classifier)
    assert q.kind == "audit" and [c.path.name for c in q.cards] == ["b2.jpg", "=cmd.jpg"]  # its order, a card a photo
    assert q.cards[0].why == "label, duplicate" and q.cards[1].suggested == {"label": "shoes"}
    assert q.cards[1].current == {"label": "bags"}

    from fashionclf.cli import main

    review = tmp_path / "review"
    assert main(["predict", str(model), str(queue), "--review", str(review), "--min-confidence", "1.0",
                 "--output", str(tmp_path / "tags.csv")]) == 0
    q = load_queue(review, classifier)
    assert q.kind == "review folder" and len(q.cards) == 7
    assert all(c.current["label"] == c.path.parent.name for c in q.cards)
    assert [c.score for c in q.cards] == sorted((c.score for c in q.cards), reverse=True)


def test_training_reads_the_decisions_over_the_shops_folders(tmp_path, capsys):
    from fashionclf.data.sources import load_data
    from fashionclf.review.decisions import Decisions

    shop = write_queue(tmp_path / "shop", {"bags": [f"b{i}.jpg" for i in range(8)],
                                           "shoes": [f"s{i}.jpg" for i in range(8)]})
    decisions = Decisions.open(tmp_path / "review" / "decisions.csv", ["label"])
    decisions.decide([shop / "bags" / "b0.jpg", shop / "bags" / "b1.jpg"], "label", "shoes")  # corrected
    decisions.decide([shop / "shoes" / "s0.jpg"], "label", "_unknown")  # not one of ours
    logged = []
    ds = load_data([str(shop), str(decisions.path)], log=logged.append)
    every = np.concatenate([ds.train.labels, ds.val.labels, ds.test.labels])
    assert np.bincount(every).tolist() == [6, 9]  # 8 - 2 bags; 8 - 1 + 2 shoes
    assert not ds.problems["label_noise"]  # a decision is not label noise
    assert ds.problems["decisions"] == {"decided": 3, "overriding": 3, "not_ours": 1, "added": 0}
    assert any("3 photo(s) decided in review" in line for line in logged)


def test_label_studio_tasks_out_and_its_json_min_export_back_as_decisions(tagged_model, tmp_path, capsys):
    import json
    import xml.etree.ElementTree as ET

    from fashionclf.cli import main

    model, shop = tagged_model
    queue = tmp_path / "queue"
    queue.mkdir()
    for photo in sorted((shop / "photos").glob("*.jpg"))[:5]:
        (queue / photo.name).write_bytes(photo.read_bytes())
    tasks = tmp_path / "tasks.json"
    assert main(["review", str(queue), "--model", str(model), "--export-label-studio", str(tasks)]) == 0
    exported = json.loads(tasks.read_text())
    assert len(exported) == 5 and exported[0]["data"]["image"].startswith("/data/local-files/?d=")
    prediction = exported[0]["predictions"][0]
    assert {r["from_name"] for r in prediction["result"]} <= {"category", "colour", "looks"}
    assert all(r["type"] == "choices" and r["to_name"] == "image" for r in prediction["result"])
    scores = [t["predictions"][0]["score"] for t in exported]
    assert scores == sorted(scores, reverse=True)
    view = ET.fromstring(tasks.with_suffix(".xml").read_text())
    choices = {c.get("name"): (c.get("choice"), [v.get("value") for v in c]) for c in view.iter("Choices")}
    assert choices["looks"][0] == "multiple" and choices["category"][0] == "single"
    assert not (queue / "decisions.csv").exists()  # an export decides nothing

    # Label Studio's JSON-MIN export: the task's data fields, one field per attribute, its own fields.
    first, second = exported[0]["data"], exported[1]["data"]
    export = [{**first, "id": 1, "category": choices["category"][1][0], "looks": {"choices": ["warm", "upper"]},
               "annotator": 1, "annotation_id": 7, "created_at": "2026-11-30T10:00:00Z", "lead_time": 3.2},
              {"image": second["image"], "id": 2, "colour": "red"},  # found again by its image URL
              {"id": 3, "image": "/data/upload/1/other.jpg"}]  # not of this queue
    min_json = tmp_path / "export.json"
    min_json.write_text(json.dumps(export))
    assert main(["review", str(queue), "--model", str(model), "--import-label-studio", str(min_json)]) == 0
    assert "2 of 3 tasks decided" in capsys.readouterr().out
    rows = decisions_of(queue / "decisions.csv")
    one = rows[str(Path(first["fashionclf_path"]).relative_to(queue.resolve()))]
    in_order = ";".join(v for v in choices["looks"][1] if v in ("warm", "upper"))  # the attribute's value order
    assert one == {"category": choices["category"][1][0], "colour": "", "looks": in_order}
    assert sum(r["colour"] == "red" for r in rows.values()) == 1
    min_json.write_text(json.dumps([{**first, "category": "hat"}]))
    assert main(["review", str(queue), "--model", str(model), "--import-label-studio", str(min_json)]) == 2
    assert "task 1" in capsys.readouterr().err
