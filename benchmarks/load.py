"""Load benchmark of ``fashionclf serve`` and of batch tagging, with real JPEG photos.

    python benchmarks/load.py MODEL.pt [--concurrency 1 8 32] [--requests 3000] [--seconds 20]
                                       [--workers 1] [--backend onnx] [--batch-files 2000] [--json FILE]
                                       [--client hey|python] [--before OLD/src] [--rounds 1]

The photos are catalogue-style JPEGs made from test images (``tests/helpers.py``'s ``catalogue_photo``:
white background, colour, 168-336 px, off-centre). The server runs in its own process on
127.0.0.1; each client keeps one HTTP/1.1 connection and sends ``POST /predict`` with one
photo, waiting for each answer before the next request (a closed loop). The load generator
is Debian's ``hey`` when installed (compiled, so it takes less of the 2 cores the server
shares with it; one photo of median size), else an asyncio client with the requests prepared
in advance (cycles through ``--photos`` JPEGs, checks every status). Each level stops after ``--requests`` requests or ``--seconds``,
whichever comes first, and reports requests/s, p50/p99 latency and errors (non-200 answers
and failed connections).

Batch tagging: ``fashionclf.inference.predict.tag_files`` over a folder of ``--batch-files`` JPEGs,
images/s, for each backend, and the same JPEGs in one ``POST /batch`` (answers streamed back).

``--before OLD/src``: the same levels against a server run from another checkout's ``src``
(``git worktree add /tmp/old COMMIT``), the two servers taking turns level by level
(``--rounds`` times each), so that both figures come from one run on one machine. The
server's footprint is reported too: resident memory after the warm-up, and whether libtorch
is loaded in it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # helpers.py: catalogue photos


def photos(count: int, seed: int = 0) -> list[bytes]:
    from helpers import catalogue_photo

    from fashionclf.data.fashion_mnist import load_dataset

    images = load_dataset(None).test.images
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), count, replace=False)
    return [catalogue_photo(images[i], rng, "jpeg") for i in picks]


def request_bytes(photo: bytes, port: int) -> bytes:
    boundary = "fashionclfbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def client(port: int, requests: list[bytes], stop_at: float, budget: list[int], latencies: list[float],
                 errors: list[str]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        errors.append(f"connect: {exc}")
        return
    i = 0
    while budget[0] > 0 and time.perf_counter() < stop_at:
        budget[0] -= 1
        data = requests[i % len(requests)]
        i += 1
        t = time.perf_counter()
        try:
            writer.write(data)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(f"connection: {exc}")
            return
        latencies.append(time.perf_counter() - t)
        status = status_line.split(b" ")[1:2]
        if status != [b"200"]:
            errors.append(status_line.decode(errors="replace").strip())
    writer.close()


async def level(port: int, requests: list[bytes], concurrency: int, total: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    budget = [total]
    start = time.perf_counter()
    await asyncio.gather(*(client(port, requests, start + seconds, budget, latencies, errors)
                           for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
    }


def hey_level(port: int, photo: bytes, concurrency: int, total: int, seconds: float) -> dict:
    """One level measured by Debian's ``hey`` (compiled Go, so the client costs the shared
    cores far less than Python does): ``total`` requests with one photo, at most ``seconds``."""
    import re
    import shutil

    head, body = request_bytes(photo, port).split(b"\r\n\r\n", 1)
    with tempfile.NamedTemporaryFile(suffix=".multipart") as f:
        f.write(body)
        f.flush()
        out = subprocess.run([shutil.which("hey"), "-n", str(max(total, concurrency)), "-c", str(concurrency),
                              "-t", "30", "-m", "POST", "-D", f.name,
                              "-T", "multipart/form-data; boundary=fashionclfbench",
                              f"http://127.0.0.1:{port}/predict"],
                             capture_output=True, text=True, timeout=seconds * 10 + 60).stdout

    def number(pattern: str) -> float | None:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None

    ok = int(number(r"\[200\]\s+(\d+) responses") or 0)
    answered = sum(int(n) for n in re.findall(r"\[\d+\]\s+(\d+) responses", out))
    failed = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+[^\n]*\n", out.split("Error distribution:")[1])) \
        if "Error distribution:" in out else 0
    return {"concurrency": concurrency, "requests": answered, "seconds": number(r"Total:\s+([\d.]+) secs"),
            "requests_per_s": number(r"Requests/sec:\s+([\d.]+)"),
            "p50_ms": 1000 * (number(r"50%+ in ([\d.]+) secs") or float("nan")),
            "p99_ms": 1000 * (number(r"99%+ in ([\d.]+) secs") or float("nan")),
            "errors": answered - ok + failed, "client": "hey"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, backend: str, workers: int, src: str | None = None) -> subprocess.Popen:
    """``fashionclf serve`` in its own process; ``src``: run another checkout's code."""
    import os

    env = dict(os.environ, PYTHONPATH=src) if src else None
    proc = subprocess.Popen([sys.executable, "-m", "fashionclf", "serve", model, "--port", str(port),
                             "--backend", backend, "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start in 60 s")


def footprint(pid: int) -> dict:
    """A server process's resident memory (MB) and whether libtorch is mapped into it."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024
    return {"rss_mb": round(rss, 1), "torch_loaded": "libtorch" in Path(f"/proc/{pid}/maps").read_text()}


def batch_endpoint(port: int, files: list[bytes]) -> dict:
    """All ``files`` in one ``POST /batch``; images/s until the summary line is in."""
    import httpx

    parts = [("file", (f"{i:06d}.jpg", data, "image/jpeg")) for i, data in enumerate(files)]
    start = time.perf_counter()
    last = "{}"
    with httpx.stream("POST", f"http://127.0.0.1:{port}/batch", files=parts, timeout=600) as r:
        for line in r.iter_lines():
            last = line or last
    seconds = time.perf_counter() - start
    summary = json.loads(last)["summary"]
    return {"backend": "serve /batch", "files": summary["tagged"], "failed": summary["failed"], "seconds": seconds,
            "images_per_s": summary["tagged"] / seconds}


def batch_tagging(model: str, files: list[bytes]) -> list[dict]:
    from fashionclf.inference.predict import TagSettings, tag_files

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "photos")
        folder.mkdir()
        for i, data in enumerate(files):
            (folder / f"{i:06d}.jpg").write_bytes(data)
        from fashionclf.inference.export import export_onnx

        onnx_file = Path(tmp, "model.onnx")  # exported once, as a user would, not per batch run
        export_onnx(model, onnx_file)
        for backend, path in (("onnx", onnx_file), ("torch", model)):
            t = time.perf_counter()
            counts = tag_files(path, [str(folder)], io.StringIO(), TagSettings(backend=backend, progress=False))
            seconds = time.perf_counter() - t
            rows.append({"backend": backend, "files": counts["rows"], "failed": counts["failed"],
                         "seconds": seconds, "images_per_s": counts["rows"] / seconds})
    return rows


def measure(model: str, args, src: str | None, jpegs: list[bytes], levels: dict, batch: bool) -> dict:
    """One server (this checkout's, or ``src``'s): warmed up, its footprint, one pass over the
    concurrency levels (appended to ``levels``), and with ``batch`` the /batch figure."""
    port = free_port()
    server = start_server(model, port, args.backend, args.workers, src)
    try:
        requests = [request_bytes(p, port) for p in jpegs[: args.photos]]
        asyncio.run(level(port, requests, 1, 50, 10))  # warm-up
        time.sleep(1)
        out = {"footprint": footprint(server.pid)}
        for c in args.concurrency:
            if args.client == "hey":
                photo = sorted(jpegs[: args.photos], key=len)[args.photos // 2]  # the median-size JPEG
                levels.setdefault(c, []).append(hey_level(port, photo, c, args.requests, args.seconds))
            else:
                levels.setdefault(c, []).append(asyncio.run(level(port, requests, c, args.requests, args.seconds)))
        if batch:
            out["batch_endpoint"] = batch_endpoint(port, jpegs[: args.batch_files])
        return out
    finally:
        server.terminate()
        server.wait(timeout=10)


def median_level(runs: list[dict]) -> dict:
    """The run of median requests/s among ``runs`` of one level."""
    return sorted(runs, key=lambda r: r["requests_per_s"] or 0)[len(runs) // 2]


def print_levels(title: str, levels: dict[int, list[dict]]) -> None:
    print(f"{title}\n\n| clients | requests | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for c, runs in levels.items():
        r = median_level(runs)
        print(f"| {c} | {r['requests']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {r['errors']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=3000, help="per level, at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="per level, at most")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch"))
    parser.add_argument("--photos", type=int, default=200, help="distinct JPEGs the clients cycle through")
    parser.add_argument("--batch-files", type=int, default=2000, help="JPEGs for the batch-tagging figure (0: skip)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--client", choices=("hey", "python"),
                        help="load generator: hey (Debian's package; the default when installed) or the asyncio "
                             "client here, which cycles through --photos JPEGs and checks every answer")
    parser.add_argument("--before", metavar="OLD_SRC",
                        help="also measure a server run from this src folder of another checkout, taking turns")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the levels per server (medians reported)")
    args = parser.parse_args()
    import shutil

    args.client = args.client or ("hey" if shutil.which("hey") else "python")
    if args.client == "hey" and not shutil.which("hey"):
        raise SystemExit("--client hey: install Debian's hey (apt-get install hey)")

    jpegs = photos(max(args.photos, args.batch_files))
    sides = {"after": None, "before": args.before} if args.before else {"after": None}
    levels: dict[str, dict[int, list[dict]]] = {name: {} for name in sides}
    servers: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for name, src in sides.items():
            last = round_ == args.rounds - 1
            servers[name] = measure(args.model, args, src, jpegs, levels[name],
                                    batch=last and bool(args.batch_files) and name == "after")
    from fashionclf.device import cpu_info

    result = {"model": args.model, "backend": args.backend, "workers": args.workers, "cpu": cpu_info(),
              "client": args.client, "rounds": args.rounds,
              "jpeg_bytes_median": int(statistics.median(len(p) for p in jpegs[: args.photos])),
              **{name: {"levels": [median_level(runs) for runs in levels[name].values()],
                        "all_levels": levels[name], **servers[name]} for name in sides},
              "batch_tagging": batch_tagging(args.model, jpegs[: args.batch_files]) if args.batch_files else []}
    print(f"`python benchmarks/load.py {args.model} --workers {args.workers} --backend {args.backend} "
          f"--client {args.client}{' --before ' + args.before if args.before else ''} --rounds {args.rounds}` "
          f"({cpu_info()['label']}; JPEGs of median {result['jpeg_bytes_median']:,} bytes)\n")
    for name in sides:
        fp = servers[name]["footprint"]
        print_levels(f"{name}{' (' + sides[name] + ')' if sides[name] else ''}: idle server {fp['rss_mb']:.0f} MB, "
                     f"torch {'loaded' if fp['torch_loaded'] else 'not loaded'}", levels[name])
        print()
    for b in [*result["batch_tagging"], *([servers["after"]["batch_endpoint"]] if args.batch_files else [])]:
        print(f"batch tagging ({b['backend']}): {b['files']} JPEGs in {b['seconds']:.1f} s = "
              f"{b['images_per_s']:,.0f} images/s, {b['failed']} failed")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
