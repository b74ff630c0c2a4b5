"""Does `fashionclf serve` stay responsive under abuse? Slow-header connections and clients
uploading the largest allowed photos, while /health and a normal photo are timed.

    python benchmarks/abuse.py MODEL.pt [--slow 8] [--heavy 4] [--seconds 20]

The server runs in its own process on 127.0.0.1 (default settings). ``--slow`` connections
send a request's headers one byte a second (the server should answer 408 and close them);
``--heavy`` clients upload, in a loop, a PNG at
the per-image pixel limit (25 MP, a garment on white). Meanwhile /health is requested every
50 ms and a normal catalogue JPEG every 200 ms. Prints their latency (p50, p99, max), the
heavy uploads answered, and the server's peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import io
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py


def largest_photo() -> bytes:
    from PIL import Image

    from fashionclf.service.uploads import Limits

    side = int(Limits().max_pixels ** 0.5)
    img = Image.new("RGB", (side, side), (255, 255, 255))
    img.paste((120, 40, 40), (side // 4, side // 5, 3 * side // 4, 4 * side // 5))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    from helpers import catalogue_photo, dataset_like_image, free_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--slow", type=int, default=8)
    parser.add_argument("--heavy", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "fashionclf", "serve", args.model, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        big, normal = largest_photo(), catalogue_photo(dataset_like_image(), np.random.default_rng(0))
        stop = time.monotonic() + args.seconds
        heavy_answers: list[int] = []
        slow_closed: list[tuple[float, str]] = []  # (seconds after connecting, status line or "")

        def slow_headers():
            with socket.create_connection(("127.0.0.1", port)) as conn:
                opened = time.monotonic()
                for byte in b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data":
                    if time.monotonic() > stop:
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        slow_closed.append((time.monotonic() - opened, ""))
                        return
                    if select.select([conn], [], [], 1.0)[0]:  # the server answered or closed
                        answer = conn.recv(4096).decode(errors="replace")
                        slow_closed.append((time.monotonic() - opened, answer.split("\r\n", 1)[0]))
                        return

        def heavy():
            with httpx.Client(timeout=120) as client:
                while time.monotonic() < stop:
                    r = client.post(url + "/predict", files={"file": ("big.png", big, "image/png")})
                    heavy_answers.append(r.status_code)

        threads = [threading.Thread(target=slow_headers, daemon=True) for _ in range(args.slow)]
        threads += [threading.Thread(target=heavy, daemon=True) for _ in range(args.heavy)]
        for t in threads:
            t.start()
        time.sleep(1)
        health, photo = [], []
        with httpx.Client(timeout=30) as client:
            next_photo = time.monotonic()
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                client.get(url + "/health")
                health.append(1000 * (time.perf_counter() - t0))
                if time.monotonic() >= next_photo:
                    t0 = time.perf_counter()
                    assert client.post(url + "/predict", files={"file": ("n.jpg", normal, "image/jpeg")}).status_code == 200
                    photo.append(1000 * (time.perf_counter() - t0))
                    next_photo = time.monotonic() + 0.2
                time.sleep(0.05)
        for t in threads:
            t.join(timeout=130)
        peak = next((line.split()[1] for line in open(f"/proc/{server.pid}/status") if line.startswith("VmHWM")), "?")
    finally:
        server.terminate()
        server.wait(timeout=30)
    from fashionclf.device import cpu_info

    print(f"CPU: {cpu_info()['label']}")
    print(f"{args.slow} slow-header connections, {args.heavy} clients uploading {len(big):,}-byte "
          f"25 MP PNGs, {args.seconds:g} s")
    if slow_closed:
        print(f"slow-header connections closed by the server: {len(slow_closed)} of {args.slow}, after "
              f"{statistics.median(t for t, _ in slow_closed):.1f} s (median), answer {slow_closed[0][1]!r}")
    else:
        print(f"slow-header connections closed by the server: 0 of {args.slow}")
    print(f"/health: {len(health)} requests, p50 {percentile(health, 50):.1f} ms, p99 {percentile(health, 99):.1f} ms, "
          f"max {max(health):.1f} ms")
    print(f"normal photo: {len(photo)} requests, p50 {percentile(photo, 50):.1f} ms, p99 {percentile(photo, 99):.1f} ms, "
          f"max {max(photo):.1f} ms")
    print(f"heavy uploads answered: {len(heavy_answers)} ({statistics.mode(heavy_answers) if heavy_answers else '-'} "
          f"most often); server peak RSS {int(peak) / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
