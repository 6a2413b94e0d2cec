"""Soak test of `pawnet serve`: real photos from 8 clients with one request in ten hostile.

Starts the server on a free loopback port, runs the clients for a bounded time posting
real photos, first all good (the baseline), then with every tenth request hostile: a
decompression bomb, a 16-bit bomb, a large transparent PNG that passes the limits, random
bytes, a truncated photo, an oversize body, a slow body, a wrong content type. Prints the
requests served, the statuses per kind, the 5xx answers (must be 0: every hostile request
is the client's fault), the p99 latency of the good requests against the baseline's, and
the server's peak memory against its idle peak (must stay under 2x). Loopback only.

    .venv/bin/python benchmarks/serve_soak.py runs/train
    .venv/bin/python benchmarks/serve_soak.py runs/train --seconds 120 --clients 8
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import select
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from serve_load import PHOTOS, peak_rss_mb, served

SERVER_ARGS = ("--max-upload-mb", "2", "--timeout-s", "3", "--max-wait-ms", "5")


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def hostile_requests(photo: bytes) -> dict[str, tuple[bytes, str]]:
    """{kind: (body, content type)} of the hostile requests, made from a real photo."""
    rng = np.random.default_rng(0)
    transparent = Image.new("RGBA", (6000, 6000), (200, 120, 40, 128))  # a few KB as PNG
    transparent.paste(Image.open(io.BytesIO(photo)).convert("RGBA"), (2800, 2800))
    return {
        "bomb": (_png(Image.new("1", (9500, 9500))), "image/png"),
        "16-bit bomb": (_png(Image.fromarray(np.full((9000, 9000), 40000, np.uint16))),
                        "image/png"),
        "large transparent": (_png(transparent), "image/png"),  # within every limit
        "garbage": (rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes(), "image/jpeg"),
        "truncated": (photo[: len(photo) // 2], "image/jpeg"),
        "oversize": (photo * (3_000_000 // len(photo) + 1), "image/jpeg"),
        "wrong type": (photo, "text/plain"),
        "slow body": (photo, "image/jpeg"),
    }


def _slow_post(host: str, port: int, body: bytes, stop_after: float = 10.0) -> int:
    """Declare a body, then send it a byte every 0.2 s; returns the status the server sends."""
    with socket.create_connection((host, port), timeout=stop_after + 5) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        deadline = time.monotonic() + stop_after
        sock.setblocking(False)
        answer = b""
        for byte in body:
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(4096)
            if answer:
                break
            sock.send(bytes([byte]))
            time.sleep(0.2)
        sock.setblocking(True)
        while b"\r\n" not in answer:
            part = sock.recv(4096)
            if not part:
                break
            answer += part
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0


def soak(url: str, photos: list[bytes], clients: int, seconds: float,
         hostile_every: int = 0) -> dict:
    """`clients` threads post for `seconds`; every `hostile_every`-th request is hostile
    (0: none). Returns counts per kind and status, 5xx, dropped, and good latencies."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    hostile = hostile_requests(photos[0]) if hostile_every else {}
    kinds = list(hostile)
    lock = threading.Lock()
    issued = [0]
    statuses: Counter = Counter()
    good_ms: list[float] = []
    dropped = Counter()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        last_used = time.monotonic()
        while time.monotonic() < deadline:
            with lock:
                n = issued[0]
                issued[0] += 1
            kind = kinds[(n // hostile_every) % len(kinds)] if (
                hostile_every and n % hostile_every == hostile_every - 1) else "good"
            if kind == "slow body":
                status = _slow_post(host, port, hostile[kind][0])
                with lock:
                    statuses[kind, status] += 1
                continue
            body, content_type = hostile.get(kind, (photos[n % len(photos)], "image/jpeg"))
            idle = time.monotonic() - last_used
            if conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
                conn.close()  # closed by the server while idle: as urllib3, do not reuse it
            started = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=body,
                             headers={"Content-Type": content_type})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                with lock:
                    dropped[f"{kind} ({type(exc).__name__}, {idle:.1f} s idle)"] += 1
                continue
            finally:
                last_used = time.monotonic()
            with lock:
                statuses[kind, response.status] += 1
                if kind == "good":
                    good_ms.append((time.perf_counter() - started) * 1000)
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "requests": sum(statuses.values()),
        "statuses": {f"{kind} {status}": n for (kind, status), n in sorted(statuses.items())},
        "errors_5xx": sum(n for (_, status), n in statuses.items() if status >= 500),
        "hostile_5xx": sum(n for (kind, status), n in statuses.items()
                           if status >= 500 and kind != "good"),
        "dropped": dict(dropped),
        "good": len(good_ms),
        "good_p50_ms": float(np.percentile(good_ms, 50)) if good_ms else float("nan"),
        "good_p99_ms": float(np.percentile(good_ms, 99)) if good_ms else float("nan"),
    }


def run(model: str, photos: list[bytes], clients: int, seconds: float,
        hostile_every: int = 10) -> dict:
    """A baseline then a hostile soak on one fresh server; adds its idle and final peaks."""
    with served(model, *SERVER_ARGS) as server:
        soak(server.url, photos, clients, min(5.0, seconds))  # warm-up
        idle_peak = peak_rss_mb(server.proc.pid)
        baseline = soak(server.url, photos, clients, seconds)
        mixed = soak(server.url, photos, clients, seconds, hostile_every)
        peak = peak_rss_mb(server.proc.pid)
    return {"baseline": baseline, "hostile": mixed, "idle_peak_mb": idle_peak,
            "peak_mb": peak, "exit_code": server.exit_code}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run/bundle folder or built-in name")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="per phase")
    parser.add_argument("--hostile-every", type=int, default=10)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    args = parser.parse_args(argv)
    paths = sorted(args.photos.rglob("*.jpg"))
    photos = [p.read_bytes() for p in paths[:: max(1, len(paths) // 64)][:64]]
    result = run(args.model, photos, args.clients, args.seconds, args.hostile_every)
    base, mixed = result["baseline"], result["hostile"]
    print(f"{args.clients} clients, {args.seconds:g} s per phase, one request in "
          f"{args.hostile_every} hostile; server {' '.join(SERVER_ARGS)}")
    for name, r in (("baseline", base), ("hostile", mixed)):
        print(f"{name:<9} requests {r['requests']:>6}  good {r['good']:>6}  5xx "
              f"{r['errors_5xx']}  dropped {r['dropped'] or 0}  good p50 "
              f"{r['good_p50_ms']:.1f} ms  p99 {r['good_p99_ms']:.1f} ms")
    for key, n in mixed["statuses"].items():
        print(f"  {key:<24}{n:>7}")
    ratio = mixed["good_p99_ms"] / base["good_p99_ms"]
    memory = result["peak_mb"] / result["idle_peak_mb"]
    print(f"good p99 with hostile requests / without: {ratio:.2f}x")
    print(f"server peak memory {result['peak_mb']:.0f} MB, idle peak "
          f"{result['idle_peak_mb']:.0f} MB: {memory:.2f}x (limit 2x)")
    failed = (mixed["errors_5xx"] or base["errors_5xx"] or memory >= 2
              or any(kind.startswith("good") for kind in mixed["dropped"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
