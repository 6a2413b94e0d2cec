"""Peak memory of `pawnet explain` on one huge photo, against the same run on a normal one.

Makes a JPEG of WIDTHxHEIGHT pixels (default 6000x4000, about 0.5 MB) from a real photo,
runs `pawnet explain MODEL PHOTO --out TMP --json` in a fresh process for it and for the
real photo itself, and prints each run's peak memory (max RSS), the overlay's size and the
`.npy` file's size.

    .venv/bin/python benchmarks/explain_memory.py RUN
    .venv/bin/python benchmarks/explain_memory.py imagenet-catdog --size 8000x6000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTO = SHARED / "cvtricks" / "test" / "cat" / "cat.1000.jpg"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder, bundle folder or imagenet-catdog")
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of the huge photo")
    args = parser.parse_args(argv)
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
