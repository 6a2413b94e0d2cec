"""Peak memory of `pawnet explain` on one huge photo, against the same run on a normal one;
with --batches, the time and memory of heat-maps by photos a call.

Makes a JPEG of WIDTHxHEIGHT pixels (default 6000x4000, about 0.5 MB) from a real photo,
runs `pawnet explain MODEL PHOTO --out TMP --json` in a fresh process for it and for the
real photo itself, and prints each run's peak memory (max RSS), the overlay's size and the
`.npy` file's size.

With --batches 1,2,4,8, for each N in a fresh process: loads MODEL on the Keras runtime,
decodes N cvtricks test photos (sorted, cats and dogs in turn) at the model's size with
`load_pixels`, calls `heatmap.heat_maps` on them once (it traces the pass), then times 4
more calls, and prints per N the best call's ms per photo, the trace call's seconds and the
RSS added (the process's max RSS after the calls minus its RSS before the first, MB; marked
"<=" when loading the model had peaked higher, so that the figure is only an upper bound).

    .venv/bin/python benchmarks/explain_memory.py RUN
    .venv/bin/python benchmarks/explain_memory.py imagenet-catdog --size 8000x6000
    .venv/bin/python benchmarks/explain_memory.py imagenet-catdog --batches 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from pawnet.reporting.text import aligned

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTO = SHARED / "cvtricks" / "test" / "cat" / "cat.1000.jpg"
TIMED_CALLS = 4


def explain_once(model: str, photo: Path, out: Path) -> dict:
    """Run `pawnet explain` in a child process; its peak RSS in MB and what it wrote."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-m", "pawnet.cli", "explain", model, str(photo),
                           "--out", str(out), "--json"], capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    [found] = json.loads(done.stdout)
    with Image.open(found["overlay"]) as overlay:
        size = overlay.size
    return {"peak_mb": max(peak, before) / 1024, "overlay": size,
            "npy_mb": Path(found["heatmap"]).stat().st_size / 1e6}


def photos(n: int) -> list[Path]:
    """`n` cvtricks test photos, sorted, cats and dogs in turn."""
    test = SHARED / "cvtricks" / "test"
    cats, dogs = sorted((test / "cat").glob("*.jpg")), sorted((test / "dog").glob("*.jpg"))
    return [p for pair in zip(cats, dogs, strict=False) for p in pair][:n]


def rss_mb() -> float:
    """This process's resident memory now, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def one_batch(model: str, n: int) -> dict:
    """Heat-maps of `n` photos a call, in this process: trace, then the best of 4 calls."""
    import numpy as np

    import pawnet
    from pawnet.data.images import load_pixels
    from pawnet.reporting import heatmap

    predictor = pawnet.load(model, runtime="keras")
    keras_model = predictor.model
    pixels = np.stack([load_pixels(p, predictor.image_size) for p in photos(n)])
    before, loading = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    heatmap.heat_maps(keras_model, pixels)
    first = time.perf_counter() - start
    times = []
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        heatmap.heat_maps(keras_model, pixels)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # when loading peaked higher than the heat-maps, the figure is only an upper bound
    return {"photos": n, "size": predictor.image_size, "first_s": first,
            "ms_per_photo": min(times) * 1000 / n, "rss_added_mb": peak / 1024 - before,
            "bound": peak <= loading}


def batch_table(model: str, sizes: list[int]) -> str:
    """Run `one_batch` for each size in a fresh process; the results as a table."""
    rows = [["photos a call", "ms/photo (best of 4)", "first call s", "RSS added MB"]]
    for n in sizes:
        done = subprocess.run([sys.executable, __file__, model, "--one-batch", str(n)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        found = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append([str(n), f"{found['ms_per_photo']:.0f}", f"{found['first_s']:.2f}",
                     ("<= " if found["bound"] else "") + f"{found['rss_added_mb']:,.0f}"])
        print(f"{n} photos a call at {found['size']} px: done", file=sys.stderr)
    return aligned(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder, bundle folder or imagenet-catdog")
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of the huge photo")
    parser.add_argument("--batches", help="photos a call to time, e.g. 1,2,4,8 (instead of "
                        "the huge photo)")
    parser.add_argument("--one-batch", type=int, help=argparse.SUPPRESS)  # a child's part
    args = parser.parse_args(argv)
    if args.one_batch:
        print(json.dumps(one_batch(args.model, args.one_batch)))
        return 0
    if args.batches:
        print(batch_table(args.model, [int(v) for v in args.batches.split(",")]))
        return 0
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        huge = Path(tmp) / "huge.jpg"
        Image.open(PHOTO).convert("RGB").resize((width, height)).save(huge, quality=40)
        print(f"huge photo: {width}x{height}, {huge.stat().st_size / 1e6:.2f} MB")
        # the small photo first: RUSAGE_CHILDREN keeps the largest child's peak
        for name, photo in (("normal", PHOTO), ("huge", huge)):
            found = explain_once(args.model, photo, Path(tmp) / name)
            print(f"{name:>6}: peak {found['peak_mb']:,.0f} MB, overlay "
                  f"{found['overlay'][0]}x{found['overlay'][1]}, .npy {found['npy_mb']:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
