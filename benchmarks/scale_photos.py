"""Growth benchmark: time and peak memory of each pawnet command on 2,500 to 25,000 photos.

Builds photo sets of N photos from the shared cats and dogs (../shared/data/{cvtricks,
cdfiltered,tongpython}), using each distinct photo that `pawnet data check` accepts (bad
files and exact duplicates left out), every copy re-encoded with Pillow: a random crop of
80-100% of each side, resized to 60-100%, saved at JPEG quality 70-95, all drawn from
--seed, and copies of one source at distinct qualities, so no two files are the same bytes.
A set is `ROOT/N/{train,test}/{cat,dog}/` (--test-share of the sources, with all their
copies, go to test/, so nothing leaks), built by a process pool, and reused while its
manifest matches. Then, per size, each command runs as a child process with a fresh empty
PAWNET_CACHE_DIR for that size (so sizes share nothing, while the commands of one size
share the cache as one user's would):

    pawnet data check SET --json
    pawnet train SET --out RUN                    (default settings)
    pawnet evaluate RUN --json                    (its test split: SET/test)
    pawnet predict RUN SET/test --format csv --out FILE
    pawnet data issues SET --json --out SHEET
    pawnet predict RUN FOLDER --format csv --out FILE   (largest size only: --predict-files
                                                         hard links to its photos)

and prints wall time, seconds per 1,000 photos and peak memory (the process tree's RSS,
polled with psutil when installed; in any case at least the largest single process's max
RSS from wait4, the number `/usr/bin/time -v` prints), then per command the per-photo time
ratio of the largest size to the smallest (target <= 1.2x) and the largest peak (target
<= 2,000 MB).

A full run (--sizes 2500,10000,25000 --predict-files 100000) takes about 1.5 hours on 2
CPU cores: ~5 minutes to build the sets, ~35 minutes for the three sizes (mostly `train`
extracting features, ~45 photos/s cold) and ~45 minutes for the 100,000 predictions (~36
photos/s). Small, to check the script (about 4 minutes):

    .venv/bin/python benchmarks/scale_photos.py --sizes 200,500 --predict-files 2000
    .venv/bin/python benchmarks/scale_photos.py --json docs/scale_photos.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DATASETS = ("cvtricks", "cdfiltered", "tongpython")
FEATURE_DIM = 1280  # EfficientNet-Lite0's pooled features, float32
TIME_RATIO_TARGET = 1.2
PEAK_TARGET_MB = 2_000
QUALITIES = range(70, 96)
MANIFEST_VERSION = 1


# -- building the photo sets ----------------------------------------------------------------


def sources(cache: Path) -> list[tuple[str, str]]:
    """(path, label) of each distinct shared cat and dog photo that pawnet would use: its
    own scan skips bad files and keeps one copy of exact duplicates; copies across the
    datasets (cvtricks/train is inside cdfiltered/train) are dropped by SHA-256 here."""
    os.environ["PAWNET_CACHE_DIR"] = str(cache)  # the scan cache of this process only
    from pawnet.data.scan import scan

    seen: set[str] = set()
    found: list[tuple[str, str]] = []
    for dataset in DATASETS:
        for photo in scan(SHARED / dataset).photos:
            if photo.sha256 not in seen:
                seen.add(photo.sha256)
                found.append((photo.path, photo.label))
    return found


@dataclass(frozen=True)
class Copy:
    """One file to write: `source` re-encoded with these settings as `dest`."""

    source: str
    dest: str
    crop: tuple[float, float, float, float]  # left, top, width, height as shares of the side
    scale: float
    quality: int


def plan_copies(found: list[tuple[str, str]], root: Path, n: int, seed: int,
                test_share: float) -> list[Copy]:
    """The `n` copies of a set: the sources in a seeded order, cycled; a source is in
    test/ with all its copies, so no near-duplicate straddles train and test."""
    order = np.random.default_rng([seed, 0]).permutation(len(found))
    quality_start = np.random.default_rng([seed, 1]).integers(0, len(QUALITIES), len(found))
    copies = []
    for i in range(n):
        turn, k = divmod(i, len(found))
        path, label = found[order[k]]
        split = "test" if int((k + 1) * test_share) > int(k * test_share) else "train"
        rng = np.random.default_rng([seed, n, i])
        width, height = rng.uniform(0.8, 1.0, 2)
        left, top = rng.uniform(0, 1 - width), rng.uniform(0, 1 - height)
        # copies of one source differ in quality (11 is prime to 26), hence in their bytes
        quality = QUALITIES[(quality_start[order[k]] + 11 * turn) % len(QUALITIES)]
        dest = root / split / label / f"{Path(path).stem}-{i:06d}.jpg"
        copies.append(Copy(path, str(dest), (left, top, width, height),
                           float(rng.uniform(0.6, 1.0)), quality))
    return copies


def write_copy(copy: Copy) -> None:
    image = Image.open(copy.source).convert("RGB")
    w, h = image.size
    left, top, width, height = copy.crop
    box = (int(left * w), int(top * h), int(left * w) + max(1, int(width * w)),
           int(top * h) + max(1, int(height * h)))
    image = image.crop(box)
    size = (max(16, round(image.width * copy.scale)), max(16, round(image.height * copy.scale)))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=copy.quality)
    Path(copy.dest).write_bytes(buffer.getvalue())


def _files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def _reusable(folder: Path, manifest: dict, files: int) -> bool:
    """Whether `folder` holds a complete set made with these settings."""
    try:
        stored = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return stored == manifest and _files(folder) == files + 1  # + the manifest


def _start_over(folder: Path) -> None:
    """Empty a folder this script made (it has a manifest or a building marker)."""
    if folder.exists():
        if not any((folder / name).exists() for name in ("manifest.json", "building")):
            sys.exit(f"{folder} exists and was not made by this script: choose another --root")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "building").touch()


def _finish(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (folder / "building").unlink()


def build_set(found: list[tuple[str, str]], root: Path, n: int, seed: int,
              test_share: float, workers: int) -> Path:
    """ROOT/n: n re-encoded copies, made in a process pool, or reused when already there."""
    folder = root / str(n)
    manifest = {"version": MANIFEST_VERSION, "photos": n, "seed": seed,
                "test_share": test_share, "sources": len(found)}
    if _reusable(folder, manifest, n):
        print(f"reusing {folder} ({n:,} photos)", flush=True)
        return folder
    _start_over(folder)
    copies = plan_copies(found, folder, n, seed, test_share)
    for d in {Path(c.dest).parent for c in copies}:
        d.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ProcessPoolExecutor(workers) as pool:
        for _ in pool.map(write_copy, copies, chunksize=64):
            pass
    _finish(folder, manifest)
    print(f"built {folder} ({n:,} photos, {time.monotonic() - started:.0f} s on "
          f"{workers} processes)", flush=True)
    return folder


def link_many(photos: Path, root: Path, count: int) -> Path:
    """A flat folder of `count` files: hard links to the photos of `photos`, cycled (copied
    where the file system has no hard links)."""
    folder = root / f"predict-{count}-from-{photos.name}"
    manifest = {"version": MANIFEST_VERSION, "files": count, "from": str(photos)}
    if _reusable(folder, manifest, count):
        print(f"reusing {folder} ({count:,} files)", flush=True)
        return folder
    _start_over(folder)
    found = sorted(p for p in photos.rglob("*.jpg"))
    for i in range(count):
        src, dest = found[i % len(found)], folder / f"{i:06d}-{found[i % len(found)].name}"
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
    _finish(folder, manifest)
    return folder


# -- measuring the commands -----------------------------------------------------------------


@dataclass
class Row:
    """One command at one size."""

    command: str
    what: str
    photos: int
    seconds: float
    peak_mb: float
    size: int
    notes: dict = field(default_factory=dict)

    @property
    def per_1000(self) -> float:
        return 1000 * self.seconds / self.photos


class TreePeak:
    """The largest RSS sum of a process and all its descendants, polled with psutil in a
    thread (0 where psutil is not installed)."""

    def __init__(self, pid: int, every: float = 0.05):
        self.peak, self._stop = 0, threading.Event()
        try:
            import psutil
        except ImportError:
            self._thread = None
            return
        self._thread = threading.Thread(target=self._poll, args=(psutil, pid, every),
                                        daemon=True)
        self._thread.start()

    def _poll(self, psutil, pid: int, every: float) -> None:
        try:
            root = psutil.Process(pid)
            while not self._stop.is_set():
                total = 0
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # a child that ended meanwhile
                        total += p.memory_info().rss
                self.peak = max(self.peak, total)
                self._stop.wait(every)
        except psutil.Error:  # the process itself ended
            pass

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak


def peak_method() -> str:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return "wait4 max RSS (the largest process of the tree, as /usr/bin/time -v)"
    return "psutil RSS of the process tree, polled every 50 ms (and at least wait4 max RSS)"


def pawnet_command() -> list[str]:
    script = Path(sys.executable).parent / "pawnet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pawnet.cli"]


def measure(args: list[str], cache: Path, log: Path) -> tuple[float, float]:
    """Run `pawnet ARGS` with its own cache; (wall seconds, peak MB). Its output goes to
    LOG.out and LOG.err."""
    env = {**os.environ, "PAWNET_CACHE_DIR": str(cache)}
    started = time.monotonic()
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        child = subprocess.Popen([*pawnet_command(), *args], env=env, stdout=out, stderr=err)
        tree = TreePeak(child.pid)
        _, status, usage = os.wait4(child.pid, 0)  # this child's rusage, not the others'
    seconds = time.monotonic() - started
    peak = max(tree.stop(), usage.ru_maxrss * 1024)  # ru_maxrss: KiB on Linux
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"pawnet {' '.join(args)}: exit {code}\n"
                 f"{log.with_suffix('.err').read_text()[-3000:]}")
    return seconds, peak / 2**20


def _json_from(log: Path) -> dict:
    return json.loads(log.with_suffix(".out").read_text())


def _csv_rows(path: Path) -> int:
    with open(path) as f:
        return sum(1 for _ in f) - 1


def run_size(photos: Path, n: int, work: Path, many: Path | None) -> list[Row]:
    """Every command on one set, in a user's order, sharing one fresh cache."""
    if work.exists():
        shutil.rmtree(work)
    cache, run = work / "cache", work / "run"
    cache.mkdir(parents=True)
    tests = _files(photos / "test")
    steps = [
        ("data check", "", n, ["data", "check", str(photos), "--json"]),
        ("train", "", n, ["train", str(photos), "--out", str(run)]),
        ("evaluate", "test split", tests, ["evaluate", str(run), "--json"]),
        ("predict", "test split", tests, ["predict", str(run), str(photos / "test"),
                                          "--format", "csv", "--out", str(work / "test.csv")]),
        ("data issues", "", n, ["data", "issues", str(photos), "--json",
                                "--out", str(work / "issues.html")]),
    ]
    if many is not None:
        steps.append(("predict", "many files", _files(many) - 1,
                      ["predict", str(run), str(many), "--format", "csv",
                       "--out", str(work / "many.csv")]))
    rows = []
    for i, (command, what, count, args) in enumerate(steps):
        log = work / f"{i}-{command.replace(' ', '-')}"
        seconds, peak = measure(args, cache, log)
        row = Row(command, what, count, seconds, peak, n, notes(command, log, args))
        print(f"  {command} {what}: {seconds:.1f} s, {peak:,.0f} MB {row.notes or ''}",
              flush=True)
        rows.append(row)
    return rows


def notes(command: str, log: Path, args: list[str]) -> dict:
    """What a command found, to check that it did its work on the whole set, and whether
    it converted a model for a runtime first (once per cache: a fixed cost in time and
    memory, whatever the photos)."""
    converted = "Converting" in log.with_suffix(".err").read_text()
    return {**({"converted_model": True} if converted else {}), **_found(command, log, args)}


def _found(command: str, log: Path, args: list[str]) -> dict:
    if command == "data check":
        found = _json_from(log)
        return {"usable": sum(found["classes"].values()), "skipped": len(found["skipped"]),
                "duplicates": len(found["duplicates"])}
    if command == "evaluate":
        return {"accuracy": _json_from(log).get("accuracy")}
    if command == "predict":
        return {"rows": _csv_rows(Path(args[-1]))}
    if command == "data issues":
        found = _json_from(log)
        return {"label_issues": len(found["label_issues"]),
                "near_duplicates": found["near_duplicates_total"]}
    return {}


# -- reporting ------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def summary(rows: list[Row]) -> list[dict]:
    """Per command: the per-photo time of its run on the most photos over that on the
    fewest, and its largest peak, each against its target."""
    out = []
    for command in dict.fromkeys(r.command for r in rows):
        mine = [r for r in rows if r.command == command]
        small, large = min(mine, key=lambda r: r.photos), max(mine, key=lambda r: r.photos)
        ratio = large.per_1000 / small.per_1000
        peak = max(r.peak_mb for r in mine)
        out.append({"command": command, "fewest": small.photos, "most": large.photos,
                    "time_ratio": ratio, "time_ok": ratio <= TIME_RATIO_TARGET,
                    "peak_mb": peak, "peak_ok": peak <= PEAK_TARGET_MB})
    return out


def print_tables(rows: list[Row], sums: list[dict]) -> None:
    print("\n| command | photos | wall s | s per 1,000 photos | peak MB |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        name = f"{r.command} ({r.what})" if r.what else r.command
        print(f"| {name} | {r.photos:,} | {r.seconds:.1f} | {r.per_1000:.2f} | "
              f"{r.peak_mb:,.0f} |")
    print(f"\n| command | per-photo time, most vs fewest photos (<= {TIME_RATIO_TARGET}x) | "
          f"largest peak MB (<= {PEAK_TARGET_MB:,}) |")
    print("|---|---|---|")
    for s in sums:
        print(f"| {s['command']} | {s['time_ratio']:.2f}x ({s['most']:,} vs {s['fewest']:,})"
              f" {mark(s['time_ok'])} | {s['peak_mb']:,.0f} {mark(s['peak_ok'])} |")


def feature_mb(n: int) -> float:
    return n * FEATURE_DIM * 4 / 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2500,10000,25000",
                        help="photos per set, comma-separated (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/pawnet-scale"),
                        help="where the sets, caches and runs go (default: %(default)s)")
    parser.add_argument("--predict-files", type=int, default=100_000,
                        help="files for the last predict, linked from the largest set; "
                             "0 skips it (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--test-share", type=float, default=0.1,
                        help="share of the sources in test/ (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                        help="processes building a set (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(","))
    root = args.root.resolve()
    if root.is_relative_to(REPO):
        sys.exit(f"--root {root} is inside the repository: choose a folder outside it")
    found = sources(root / "source-scan-cache")
    print(f"{len(found):,} distinct source photos; peak memory: {peak_method()}")
    print("Each size gets a fresh empty PAWNET_CACHE_DIR; the commands of one size share it, "
          "as one user's would (train fills the feature cache that data issues reuses).")
    sets = {n: build_set(found, root, n, args.seed, args.test_share, args.workers)
            for n in sizes}
    many = link_many(sets[sizes[-1]], root, args.predict_files) if args.predict_files else None
    rows: list[Row] = []
    for n in sizes:
        print(f"{n:,} photos (feature matrix {n:,} x {FEATURE_DIM} float32 = "
              f"{feature_mb(n):,.1f} MB):", flush=True)
        rows += run_size(sets[n], n, root / f"work-{n}", many if n == sizes[-1] else None)
    sums = summary(rows)
    print_tables(rows, sums)
    print("\nfeature matrix (photos x 1280 float32): "
          + ", ".join(f"{n:,}: {feature_mb(n):,.1f} MB" for n in sizes))
    if args.json:
        args.json.write_text(json.dumps({
            "sizes": sizes, "predict_files": args.predict_files, "seed": args.seed,
            "peak_method": peak_method(), "cores": os.cpu_count(),
            "feature_matrix_mb": {n: feature_mb(n) for n in sizes},
            "rows": [asdict(r) | {"s_per_1000": r.per_1000} for r in rows],
            "summary": sums, "targets": {"time_ratio": TIME_RATIO_TARGET,
                                         "peak_mb": PEAK_TARGET_MB}}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
