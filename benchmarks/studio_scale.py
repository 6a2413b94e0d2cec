"""Studio at scale: first screen and scrolling of `pawnet studio` on a 25,000-photo folder.

Target (the issue): "Opening a 25,000-photo folder (already scanned) shows the first screen
in <= 3 s and scrolling stays smooth (thumbnails on demand); the server's memory stays flat
while scrolling through all of them."

Builds (or reuses) ROOT/N/{train,test}/{cat,dog}/ with scale_photos.py's own functions, makes
a fresh PAWNET_CACHE_DIR for the whole run (ROOT/studio-XXXX/cache, its path printed) and
fills its scan cache with `pawnet data check SET --json`. Then, with `pawnet studio SET
--labels TMP/labels.csv` as a child process, like a browser at 1400x900 (7 x 7 cells: the
visible rows and one more above and below; pages of 200 photos; 6 connections):

  first screen  seconds from launching the server until (a) /api/state answers, (b) the
                first /api/photos page answers, (c) its first 49 thumbnails are fetched;
                opened twice: cold thumbnails, then (after SIGTERM) warm ones.
  scroll        from the second opening on: every photo, a screenful of 49 at a time as
                Page Down held (the pages of /api/photos fetched as needed), the server's
                RSS sampled after each screenful; latency of each screenful and each page.
                Cold (every thumbnail made), then warm through the first 5,000 photos.
                /api/state polled every second meanwhile, on its own connection, as the
                page does (the latency of each poll reported).
  jobs off      the same again (cold thumbnails: their cache emptied) with the background
                jobs not started (Jobs.start patched away in a server started by this
                script), so the memory is the page's alone: without --run the studio still
                runs the data issues job (Lite0 features of every photo, then neighbours).

Prints a table (and --json FILE writes the figures), the load average at the start and the
end (the machine may be shared), and what the jobs were doing at the end of each scroll.
The full run takes about 5 minutes on 2 CPU cores (two cold scrolls of ~2 minutes each),
plus 1-5 minutes to build the set the first time. Small, to check the script (~30 s):

    .venv/bin/python benchmarks/studio_scale.py --size 500
    .venv/bin/python benchmarks/studio_scale.py --json /tmp/studio_scale.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scale_photos import build_set, mark, pawnet_command, sources
from serve_load import free_port, peak_rss_mb, stop_server

SCREEN = 49  # thumbnails of a 1400x900 screen: 7 columns x (5 rows + 1 above + 1 below)
PAGE = 200  # photos per /api/photos request, as studio.js asks
CONNECTIONS = 6  # a browser's connections to one host
WARM_PHOTOS = 5_000
FIRST_SCREEN_TARGET_S = 3.0
RSS_RATIO_TARGET = 1.2
WARM_P95_TARGET_MS = 100.0
MILESTONES = (0.10, 0.25, 0.50, 0.75, 1.00)


class Browser:
    """GETs to the studio on keep-alive connections, up to CONNECTIONS at once."""

    def __init__(self, port: int):
        self.port, self._local, self._conns = port, threading.local(), []
        self._pool = ThreadPoolExecutor(CONNECTIONS)

    def get(self, path: str) -> tuple[int, bytes]:
        """(status, body); a kept-alive connection the server closed is opened again once."""
        for attempt in range(2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                     timeout=300)
                self._conns.append(conn)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, path: str) -> dict:
        status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def thumbs(self, ids: list[int]) -> int:
        """Fetch thumbnails on all connections at once; how many did not answer 200."""
        found = self._pool.map(lambda i: self.get(f"/api/photos/{i}/thumb")[0], ids)
        return sum(status != 200 for status in found)

    def close(self) -> None:
        self._pool.shutdown()
        for conn in self._conns:
            conn.close()


class StatePoller:
    """GET /api/state every second on a connection of its own, as the page polls it."""

    def __init__(self, port: int):
        self.ms: list[float] = []
        self._browser, self._stop = Browser(port), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            begun = time.perf_counter()
            self._browser.json("/api/state")
            self.ms.append(1000 * (time.perf_counter() - begun))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._browser.close()
        return spread(self.ms or [float("nan")])


def rss_mb(pid: int) -> float:
    """Resident memory of a process now (psutil when installed, else /proc), in MB."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")
    return psutil.Process(pid).memory_info().rss / 2**20


def start_studio(photos: Path, work: Path, cache: Path, name: str, jobs: bool
                 ) -> tuple[subprocess.Popen, int, float]:
    """`pawnet studio` (or this script's server without jobs) on a free port; (process,
    port, monotonic launch time). Its output goes to WORK/NAME.log."""
    port = free_port()
    args = [str(photos), "--labels", str(work / "labels.csv"), "--port", str(port)]
    command = ([*pawnet_command(), "studio", *args] if jobs
               else [sys.executable, __file__, "--serve-without-jobs", *args])
    with open(work / f"{name}.log", "w") as log:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PAWNET_CACHE_DIR": str(cache)})
    return proc, port, started


def first_screen(browser: Browser, proc: subprocess.Popen, started: float,
                 log: Path) -> dict:
    """Seconds from launch to /api/state, the first page, and its first SCREEN thumbnails."""
    while True:
        if proc.poll() is not None:
            sys.exit(f"the studio exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            browser.json("/api/state")
            break
        except OSError:
            if time.monotonic() - started > 600:
                raise TimeoutError("the studio did not answer within 600 s") from None
            time.sleep(0.02)
    state_s = time.monotonic() - started
    page = browser.json(f"/api/photos?offset=0&limit={PAGE}")
    photos_s = time.monotonic() - started
    failed = browser.thumbs([item["id"] for item in page["items"][:SCREEN]])
    return {"state_s": state_s, "photos_s": photos_s, "thumbs_s": time.monotonic() - started,
            "total": page["total"], "failed": failed}


def scroll(browser: Browser, pid: int, count: int) -> dict:
    """The first `count` photos a screenful at a time, pages fetched as the grid needs them;
    latencies, RSS after each screenful, and thumbnails that failed."""
    ids: list[int] = []
    screen_ms, page_ms, samples, failed = [], [], [], 0
    started = time.monotonic()
    for first in range(0, count, SCREEN):
        last = min(count, first + SCREEN)
        begun = time.perf_counter()
        while len(ids) < last:
            t = time.perf_counter()
            page = browser.json(f"/api/photos?offset={len(ids)}&limit={PAGE}")
            page_ms.append(1000 * (time.perf_counter() - t))
            ids += [item["id"] for item in page["items"]]
        failed += browser.thumbs(ids[first:last])
        screen_ms.append(1000 * (time.perf_counter() - begun))
        samples.append((last, rss_mb(pid)))
    seconds = time.monotonic() - started
    return {"photos": count, "screens": len(screen_ms), "seconds": seconds,
            "photos_per_s": count / seconds, "failed": failed,
            "screen_ms": spread(screen_ms), "page_ms": spread(page_ms),
            "rss_mb": rss_milestones(samples, count)}


def spread(ms: list[float]) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "max": float(max(ms))}


def rss_milestones(samples: list[tuple[int, float]], count: int) -> dict:
    """RSS after the first screenful, at each milestone share of the photos, the max, and
    (at 100%) / (at 10%)."""
    out = {"first": samples[0][1]}
    for share in MILESTONES:
        out[f"{share:.0%}"] = next(mb for seen, mb in samples if seen >= share * count)
    out["max"] = max(mb for _, mb in samples)
    out["ratio"] = out["100%"] / out["10%"]
    return out


def opening(photos: Path, work: Path, cache: Path, name: str, jobs: bool,
            scrolls: bool) -> dict:
    """Start the studio, measure its first screen, scroll (cold, then warm) if asked, stop."""
    proc, port, started = start_studio(photos, work, cache, name, jobs)
    browser, result = Browser(port), {}
    try:
        result["first_screen"] = first_screen(browser, proc, started, work / f"{name}.log")
        print(f"  {name}: first screen {fmt_first(result['first_screen'])}", flush=True)
        if scrolls:
            total, poller = result["first_screen"]["total"], StatePoller(port)
            result["cold"] = scroll(browser, proc.pid, total)
            print(f"  {name}: cold scroll {fmt_scroll(result['cold'])}", flush=True)
            result["warm"] = scroll(browser, proc.pid, min(WARM_PHOTOS, total))
            print(f"  {name}: warm scroll {fmt_scroll(result['warm'])}", flush=True)
            result["state_ms"] = poller.stop()
            result["jobs"] = browser.json("/api/state")["jobs"]
            print(f"  {name}: jobs at the end: {json.dumps(result['jobs'])}", flush=True)
        result["peak_rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        browser.close()
        begun = time.monotonic()
        code = stop_server(proc)
    result |= {"stop_s": time.monotonic() - begun, "exit_code": code}
    print(f"  {name}: stopped in {result['stop_s']:.1f} s, exit code {code}", flush=True)
    return result


def fmt_first(f: dict) -> str:
    return (f"state {f['state_s']:.2f} s, photos {f['photos_s']:.2f} s, {SCREEN} thumbnails "
            f"{f['thumbs_s']:.2f} s ({f['failed']} failed)")


def fmt_scroll(s: dict) -> str:
    ms, rss = s["screen_ms"], s["rss_mb"]
    return (f"{s['photos']:,} photos in {s['seconds']:.1f} s ({s['photos_per_s']:.0f}/s), "
            f"screenful p50/p95/max {ms['p50']:.0f}/{ms['p95']:.0f}/{ms['max']:.0f} ms, "
            f"RSS {rss['first']:.0f} -> {rss['100%']:.0f} MB (max {rss['max']:.0f})")


def print_tables(results: dict) -> None:
    runs = results["openings"]
    print(f"\nfirst screen, s from launch (target <= {FIRST_SCREEN_TARGET_S:g} s to "
          f"{SCREEN} thumbnails)")
    print(f"| opening | /api/state | /api/photos | {SCREEN} thumbnails | failed |")
    print("|---|---:|---:|---:|---:|")
    for name, r in runs.items():
        f = r["first_screen"]
        print(f"| {name} | {f['state_s']:.2f} | {f['photos_s']:.2f} | {f['thumbs_s']:.2f} "
              f"{mark(f['thumbs_s'] <= FIRST_SCREEN_TARGET_S)} | {f['failed']} |")
    print(f"\nscroll, screenfuls of {SCREEN} on {CONNECTIONS} connections (warm p95 target "
          f"<= {WARM_P95_TARGET_MS:g} ms)")
    print("| server | pass | photos | wall s | photos/s | screenful ms p50 / p95 / max | "
          "page ms p50 / p95 / max | failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        for kind in ("cold", "warm"):
            if kind in r:
                s, m, p = r[kind], r[kind]["screen_ms"], r[kind]["page_ms"]
                ok = f" {mark(m['p95'] <= WARM_P95_TARGET_MS)}" if kind == "warm" else ""
                print(f"| {name} | {kind} | {s['photos']:,} | {s['seconds']:.1f} | "
                      f"{s['photos_per_s']:.0f} | {m['p50']:.0f} / {m['p95']:.0f} / "
                      f"{m['max']:.0f}{ok} | {p['p50']:.0f} / {p['p95']:.0f} / "
                      f"{p['max']:.0f} | {s['failed']} |")
    print(f"\nserver RSS MB during the cold scroll (target: 100%/10% <= {RSS_RATIO_TARGET})")
    shares = [f"{s:.0%}" for s in MILESTONES]
    print(f"| server | first screen | {' | '.join(shares)} | max | 100%/10% | peak (VmHWM) |")
    print("|---|" + "---:|" * (len(shares) + 4))
    for name, r in runs.items():
        if "cold" in r:
            rss = r["cold"]["rss_mb"]
            print(f"| {name} | {rss['first']:.0f} | "
                  + " | ".join(f"{rss[s]:.0f}" for s in shares)
                  + f" | {rss['max']:.0f} | {rss['ratio']:.2f}x "
                  f"{mark(rss['ratio'] <= RSS_RATIO_TARGET)} | {r['peak_rss_mb']:.0f} |")
    for name, r in runs.items():
        if "state_ms" in r:
            ms = r["state_ms"]
            print(f"{name}: /api/state polled every second while scrolling, ms p50/p95/max "
                  f"{ms['p50']:.0f} / {ms['p95']:.0f} / {ms['max']:.0f}")


def measure_all(photos: Path, work: Path) -> dict:
    """The scan (data check), two openings with the jobs, one without (cold thumbnails)."""
    cache = work / "cache"
    env = {**os.environ, "PAWNET_CACHE_DIR": str(cache)}
    started = time.monotonic()
    with open(work / "data-check.json", "w") as out:
        subprocess.run([*pawnet_command(), "data", "check", str(photos), "--json"], env=env,
                       stdout=out, stderr=subprocess.DEVNULL, check=True)
    check_s = time.monotonic() - started
    print(f"pawnet data check (fills the scan cache): {check_s:.1f} s", flush=True)
    openings = {
        "cold, jobs on": opening(photos, work, cache, "cold-jobs-on", True, False),
        "warm, jobs on": opening(photos, work, cache, "warm-jobs-on", True, True),
    }
    shutil.rmtree(cache / "thumbs", ignore_errors=True)  # cold again, for the server alone
    openings["cold, jobs off"] = opening(photos, work, cache, "cold-jobs-off", False, True)
    return {"data_check_s": check_s, "openings": openings}


def serve_without_jobs(argv: list[str]) -> None:
    """`pawnet studio PHOTOS --labels FILE --port PORT` with its background jobs not started:
    what the page itself costs (this script runs itself this way, as the studio's server)."""
    from pawnet.studio import app
    from pawnet.studio.jobs import Jobs

    Jobs.start = Jobs.stop = lambda self, *a, **k: None  # no answers, queue, issues, growth
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    photos, _, labels, _, port = argv
    app.run(photos, None, labels, port=int(port))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=25_000, help="photos (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/pawnet-scale"),
                        help="where the set and this run's folder go (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--test-share", type=float, default=0.1, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                        help="processes building the set (default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep this run's folder (cache with thumbnails, labels, logs)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def source_version() -> str:
    """The repository's commit, and whether src/ has changes not committed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=False).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (" + changes in src/" if git(
        "status", "--porcelain", "--", "../src") else "")


def main() -> None:
    args = parse_args()
    root = args.root.resolve()
    if root.is_relative_to(Path(__file__).resolve().parents[1]):
        sys.exit(f"--root {root} is inside the repository: choose a folder outside it")
    load_start = os.getloadavg()
    found = sources(root / "source-scan-cache")
    photos = build_set(found, root, args.size, args.seed, args.test_share, args.workers)
    work = Path(tempfile.mkdtemp(prefix="studio-", dir=root))
    version = source_version()
    print(f"{args.size:,} photos in {photos}; source {version}; PAWNET_CACHE_DIR {work / 'cache'}; "
          f"{os.cpu_count()} CPU cores; load average {load_start[0]:.2f} "
          f"{load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    try:
        results = {"photos": args.size, "set": str(photos), "source": version,
                   "cache_dir": str(work / "cache"),
                   "cores": os.cpu_count(), "load_average_start": load_start,
                   **measure_all(photos, work)}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()
    print_tables(results)
    print(f"\nload average: start {' '.join(f'{x:.2f}' for x in load_start)}, end "
          f"{' '.join(f'{x:.2f}' for x in results['load_average_end'])}"
          + ("" if args.keep else f"; {work} removed (--keep keeps it)"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-without-jobs"]:
        serve_without_jobs(sys.argv[2:])
    else:
        main()
