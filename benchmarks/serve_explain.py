"""`/v1/explain` end to end: how soon `pawnet serve MODEL --timeout-s 3` draws heat-maps.

Starts the server on a free loopback port (`serve_load.served`), then times from a client,
with real cvtricks test photos (cats and dogs in turn, multipart fields named `file`): the
wait until `/healthz` says ok and the server's memory then, the first explain (one photo),
two requests of 8 photos, 6 concurrent requests of 8 photos (how many are answered within
the 3 s limit, how many get 503), and the server's memory after all that.

    .venv/bin/python benchmarks/serve_explain.py imagenet-catdog
    .venv/bin/python benchmarks/serve_explain.py runs/train --quick   # no concurrent requests
"""

from __future__ import annotations

import argparse
import http.client
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from serve_load import served

TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cvtricks" / "test"
TIMEOUT_S = 3


def photos() -> list[Path]:
    """Test cats and dogs, one of each in turn."""
    cats, dogs = sorted((TEST / "cat").glob("*.jpg")), sorted((TEST / "dog").glob("*.jpg"))
    return [p for pair in zip(cats, dogs, strict=False) for p in pair]


def rss_mb(pid: int) -> float:
    """The process's resident memory now, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def explain(url: str, paths: list[Path]) -> tuple[int, float]:
    """POST the photos to /v1/explain: the status and the seconds until the answer."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{p.name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
        for p in paths) + f"--{boundary}--\r\n".encode()
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    start = time.perf_counter()
    try:
        connection.request("POST", "/v1/explain", body,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder, a bundle or imagenet-catdog")
    parser.add_argument("--quick", action="store_true", help="leave out the 6 concurrent "
                        "requests")
    args = parser.parse_args(argv)
    shown = photos()
    print(f"load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    with served(args.model, "--timeout-s", str(TIMEOUT_S)) as server:
        pid = server.proc.pid
        print(f"ready after {time.perf_counter() - start:.1f} s, RSS {rss_mb(pid):,.0f} MB")
        print("first explain, 1 photo: {} in {:.2f} s".format(*explain(server.url, shown[:1])))
        for first in (1, 9):
            print("8 photos: {} in {:.2f} s".format(
                *explain(server.url, shown[first : first + 8])))
        if not args.quick:
            with ThreadPoolExecutor(6) as pool:
                done = sorted(pool.map(lambda k: explain(server.url, shown[20 + 8 * k :
                                                                            28 + 8 * k]),
                                       range(6)), key=lambda answer: answer[1])
            print("6 concurrent x 8 photos: " + " / ".join(f"{code} in {s:.2f} s"
                                                          for code, s in done))
            answered = sum(code == 200 and s <= TIMEOUT_S for code, s in done)
            print(f"  {answered} answered within {TIMEOUT_S} s, "
                  f"{sum(code == 503 for code, _ in done)} got 503")
        print(f"RSS after all that: {rss_mb(pid):,.0f} MB")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
