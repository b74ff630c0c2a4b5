"""Where the time of one ``POST /predict`` goes: CPU per request, part by part.

    python benchmarks/request_profile.py MODEL.pt [--backend onnx] [--requests 2000]

One catalogue JPEG of median size (as ``benchmarks/load.py`` sends), timed in this process,
without the network: the whole app called as ASGI (every middleware, the multipart parser,
decoding, the photo pipeline, the model, JSON), and each part alone: reading the multipart
form, decoding the JPEG, decoding plus the photo pipeline (``photos.photo_to_28`` or the
model's converter), the model at batch 1, the JSON answer. What is left of the latency that
``load.py`` measures at 1 client is uvicorn's HTTP handling, the socket and the client.
Medians of ``--requests`` repetitions, in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # load.py's photos
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


def timed(fn, n: int) -> float:
    """Median microseconds of ``fn()`` over ``n`` calls (after 20 untimed)."""
    for _ in range(20):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main() -> int:
    from load import photos, request_bytes

    from fashionclf.data.photos import decode, open_image
    from fashionclf.device import cpu_info
    from fashionclf.inference.classifier import load_classifier
    from fashionclf.service.serve import create_app
    from fashionclf.service.settings import ServeSettings
    from fashionclf.service.uploads import Limits, public, tag_uploads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch"))
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    jpegs = photos(200)
    photo = sorted(jpegs, key=len)[100]
    head, body = request_bytes(photo, 8000).split(b"\r\n\r\n", 1)
    headers = [(k.strip().lower().encode(), v.strip().encode()) for k, v in
               (line.split(":", 1) for line in head.decode().split("\r\n")[1:])]
    classifier = load_classifier(args.model, args.backend, threads=2)
    app = create_app(ServeSettings(args.model, backend=args.backend), Limits(), classifier=classifier)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {}}
    loop = asyncio.new_event_loop()

    async def call_app():
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        await app(dict(scope), receive, send)
        assert sent[0]["status"] == 200, sent

    async def read_form():  # the service's own reader (routes.PhotoRoutes uses it)
        from fashionclf.service.forms import files
        from fashionclf.service.routes import form_limits

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        return await files(dict(scope), receive, form_limits(Limits()))

    def decode_draft():
        decode(open_image(photo, Limits().max_pixels), "L")

    image = open_image(photo, Limits().max_pixels)
    image.load()
    batch = classifier.to_input(image)[None]
    results, _ = tag_uploads(classifier, [("p.jpg", photo)], Limits())
    from fastapi.responses import JSONResponse

    parts = {
        "whole app (ASGI, no network)": lambda: loop.run_until_complete(call_app()),
        "multipart form": lambda: loop.run_until_complete(read_form()),
        "JPEG decode (at reduced scale, to grey)": decode_draft,
        "decode + photo pipeline (bytes to the model's input)": lambda: classifier.to_input(photo),
        f"model, batch 1 ({classifier.backend})": lambda: classifier.predict(batch),
        "JSON answer": lambda: JSONResponse(public(results)),
    }
    print(f"CPU: {cpu_info()['label']}; {args.model}, {args.backend}; a {len(photo):,}-byte JPEG of "
          f"{image.size[0]}x{image.size[1]}; medians of {args.requests} calls\n")
    print("| part | µs per request |\n|---|---|")
    for name, fn in parts.items():
        print(f"| {name} | {timed(fn, args.requests):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
