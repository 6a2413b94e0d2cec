"""Load test of `pawnet serve`: throughput, latency and batch sizes, batching on and off.

Starts one server per --max-batch on free loopback ports, side by side (or uses --url), then
runs 1, 8 and 32 concurrent clients that each post real photos one at a time (raw JPEG
bodies, keep-alive connections), and prints requests per second, p50/p99 latency, the batch
sizes the server ran (from its /metrics), the number of 5xx answers and of dropped
connections. Each level is bounded by a request count and a time limit, and runs on each
server in turn, --rounds times; the summary gives median req/s and, per round, the ratio
to batching off, which other work on a shared machine skews less than the req/s themselves.
Only loopback addresses are accepted.

    .venv/bin/python benchmarks/serve_load.py runs/train
    .venv/bin/python benchmarks/serve_load.py runs/train --clients 8 32 --requests 400
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 8
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "cvtricks" / "test"
CLIENTS = (1, 8, 32)
REQUESTS = 300  # per level
SECONDS = 60.0  # per level
ROUNDS = 3
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, *args: str, env: dict | None = None):
    """`pawnet serve MODEL` on 127.0.0.1:port in a subprocess; returns the Popen. Its output
    goes to a temporary file (a pipe nobody reads would fill up and stall the server),
    read back by `output`."""
    command = [sys.executable, "-m", "pawnet.cli", "serve", str(model), "--port", str(port),
               "--host", "127.0.0.1", *args]
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - read after the server stops
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    proc.log = log
    return proc


def output(proc) -> str:
    """What a server started by `start_server` has printed so far."""
    proc.log.flush()
    proc.log.seek(0)
    return proc.log.read()


def wait_healthy(url: str, proc=None, timeout: float = 180.0) -> None:
    """Poll /healthz until it answers 200; fail early if the server process ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}:\n"
                               + output(proc))
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}/healthz did not answer 200 within {timeout:g} s")


def stop_server(proc, timeout: float = 60.0) -> int:
    """SIGTERM, then wait for a clean exit; returns the exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


CLEAN_EXIT = (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown


@dataclass
class Served:
    """A `pawnet serve` started by `served`: its URL, process and, once stopped, exit code."""

    url: str
    proc: subprocess.Popen
    exit_code: int | None = None


@contextlib.contextmanager
def served(model: str, *args: str) -> Iterator[Served]:
    """`pawnet serve MODEL ARGS` on a free loopback port, healthy inside the block, stopped
    with SIGTERM after it (also when the block fails)."""
    port = free_port()
    server = Served(f"http://127.0.0.1:{port}", start_server(model, port, *args))
    try:
        wait_healthy(server.url, server.proc)
        yield server
    finally:
        server.exit_code = stop_server(server.proc)


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a running process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batch_histogram(url: str) -> dict[str, float]:
    """The server's batch-size histogram: {'count', 'sum', 'le=1', 'le=2', ...}."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        match = re.match(r'pawnet_batch_size_(bucket\{le="([^"]+)"\}|count|sum) (\S+)', line)
        if match:
            key = f"le={match.group(2)}" if match.group(2) else match.group(1)
            out[key] = float(match.group(3))
    return out


def _batch_summary(before: dict, after: dict) -> tuple[float, str]:
    calls = after.get("count", 0) - before.get("count", 0)
    images = after.get("sum", 0) - before.get("sum", 0)
    mean = images / calls if calls else 0.0
    largest = "-"
    for key in after:  # the smallest bucket that holds every batch of this level
        if key.startswith("le=") and after[key] - before.get(key, 0) >= calls > 0:
            largest = "<=" + key[3:].removesuffix(".0")
            break
    return mean, largest


def run_load(url: str, bodies: list[bytes], clients: int, requests: int = REQUESTS,
             seconds: float = SECONDS, api_key: str | None = None) -> dict:
    """`clients` threads post photos one at a time until `requests` are done or time is up.

    Returns:
        requests, seconds, throughput (requests/s), p50_ms, p99_ms, statuses {code: n},
        errors_5xx, dropped (connections that failed or closed mid-request).
    """
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise ValueError(f"loopback only; received: {url}")
    headers = {"Content-Type": "image/jpeg"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    dropped = [0]
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                if issued[0] >= requests:
                    break
                n = issued[0]
                issued[0] += 1
            body = bodies[(n + index) % len(bodies)]
            started = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                with lock:
                    dropped[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses[response.status] = statuses.get(response.status, 0) + 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "requests": len(latencies), "seconds": wall,
        "throughput": len(latencies) / wall if wall else 0.0,
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        "statuses": statuses, "errors_5xx": sum(n for s, n in statuses.items() if s >= 500),
        "dropped": dropped[0],
    }


def measure(url: str, bodies: list[bytes], clients: int, **kwargs) -> dict:
    """`run_load`, plus the mean and largest batch the server ran meanwhile."""
    before = batch_histogram(url)
    result = run_load(url, bodies, clients, **kwargs)
    result["mean_batch"], result["max_batch"] = _batch_summary(before, batch_histogram(url))
    return result


def print_row(label: str, clients: int, r: dict) -> None:
    print(f"{label:<9}{clients:>8}{r['requests']:>9}{r['throughput']:>10.1f}"
          f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['mean_batch']:>7.1f}{r['max_batch']:>7}"
          f"{r['errors_5xx']:>6}{r['dropped']:>9}", flush=True)


def print_summary(throughputs: dict[tuple[str, int], list[float]]) -> None:
    """Median req/s per setting and level; with batching off among them, each setting's
    ratio to it, the median of the rounds' ratios (each round's servers ran side by side, so
    a ratio is less noisy than two medians on a shared machine)."""
    labels = list(dict.fromkeys(label for label, _ in throughputs))
    print("\nmedian req/s" + ("  (x off: median of the rounds' ratios)" if "off" in labels
                            else ""))
    for clients in dict.fromkeys(c for _, c in throughputs):
        cells = []
        for label in labels:
            runs = throughputs[(label, clients)]
            cell = f"{label} {statistics.median(runs):.1f}"
            if "off" in labels and label != "off":
                ratios = [a / b for a, b in zip(runs, throughputs[("off", clients)],
                                                strict=True) if b]
                cell += f" ({statistics.median(ratios):.2f}x off)" if ratios else ""
            cells.append(cell)
        print(f"{clients:>3} clients: " + ", ".join(cells))


def _label(max_batch: int | None) -> str:
    return "given" if max_batch is None else ("off" if max_batch == 1 else f"on({max_batch})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="run/bundle folder or built-in name")
    parser.add_argument("--url", help="an already running server (loopback only)")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--requests", type=int, default=REQUESTS, help="per level")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per level")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="times every level runs on every server, in turn")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[32, 1],
                        help="server settings to compare (1 = batching off)")
    parser.add_argument("--runtime", default="auto", help="the server's --runtime")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.url):
        parser.error("give MODEL or --url, not both")
    paths = sorted(args.photos.rglob("*.jpg"))
    paths = paths[:: max(1, len(paths) // 64)][:64]  # both classes, spread over the folder
    bodies = [p.read_bytes() for p in paths]
    print(f"{len(bodies)} real photos from {args.photos}, {os.cpu_count()} CPU cores; "
          f"each level: at most {args.requests} requests or {args.seconds:g} s; "
          f"{args.rounds} rounds, the servers in turn")
    settings = [None] if args.url else args.max_batch
    with contextlib.ExitStack() as stack:
        servers = {_label(m): (args.url if m is None else stack.enter_context(
                   served(args.model, "--max-batch", str(m), "--runtime", args.runtime)))
                   for m in settings}
        urls = {label: s if isinstance(s, str) else s.url for label, s in servers.items()}
        for url in urls.values():  # warm-up
            run_load(url, bodies, max(args.clients), requests=2 * max(args.clients), seconds=30)
        failures, throughputs = _rounds(urls, bodies, args)
        for label, server in servers.items():
            if not isinstance(server, str):
                print(f"{label} server peak memory: {peak_rss_mb(server.proc.pid):.0f} MB "
                      f"(runtime {args.runtime})")
    for label, server in servers.items():
        if not isinstance(server, str) and server.exit_code not in CLEAN_EXIT:
            print(f"{label} server exited with code {server.exit_code}")
            failures += 1
    print_summary(throughputs)
    return 1 if failures else 0


def _rounds(urls: dict[str, str], bodies: list[bytes], args) -> tuple[int, dict]:
    """Every level on every server, in turn (in reverse order every other round, so that
    neither always goes first), `args.rounds` times: (5xx and dropped connections,
    {(label, clients): [req/s per round]})."""
    failures = 0
    throughputs: dict[tuple[str, int], list[float]] = {}
    print(f"{'batching':<9}{'clients':>8}{'requests':>9}{'req/s':>10}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'batch':>7}{'max':>7}{'5xx':>6}{'dropped':>9}")
    for round_ in range(args.rounds):
        order = list(urls.items()) if round_ % 2 == 0 else list(urls.items())[::-1]
        for clients in args.clients:
            for label, url in order:
                result = measure(url, bodies, clients, requests=args.requests,
                                 seconds=args.seconds)
                print_row(label, clients, result)
                throughputs.setdefault((label, clients), []).append(result["throughput"])
                failures += result["errors_5xx"] + result["dropped"]
    return failures, throughputs


if __name__ == "__main__":
    sys.exit(main())
