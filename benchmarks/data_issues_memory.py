"""Memory, time and sheet size of `pawnet data issues` on N real photos.

Builds N distinct photos in a temporary folder (never in the repo) from the shared cats and
dogs (../shared/data/{cdfiltered,cvtricks,tongpython}): each source photo once as it is,
then again re-encoded at other sizes, crops and JPEG qualities until there are N, so a
folder holds near-duplicates the way a real one does; a fifth of the files go to
`validation/`, so some pairs straddle splits. Then runs `pawnet data issues FOLDER --json
--out SHEET` in a fresh process with its own empty cache (cold: the backbone is converted
and every photo's features extracted), and again on that cache (warm: features cached),
and prints each run's peak memory (the child's max RSS), wall time and sheet size.

    .venv/bin/python benchmarks/data_issues_memory.py --photos 3000
    .venv/bin/python benchmarks/data_issues_memory.py                # 12,000 photos

`--module FILE` runs another `data_issues.py` in the child (e.g. an older one, from `git
show COMMIT:src/pawnet/data_issues.py > /tmp/old/data_issues.py`), `--save-json DIR` keeps
each run's JSON, to check that two versions find the same things, and `--workdir DIR`
keeps the photos there for the next run (the cache is emptied every time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DATASETS = ("cdfiltered", "cvtricks", "tongpython")
VALIDATION_SHARE = 5  # every 5th file goes to validation/
# the child: `pawnet data issues`, optionally with another data_issues.py in its place
CHILD = """
import importlib.util, sys
if sys.argv[1]:
    spec = importlib.util.spec_from_file_location("pawnet.data.issues", sys.argv[1])
    sys.modules["pawnet.data.issues"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
from pawnet.cli import main
sys.argv = ["pawnet", *sys.argv[2:]]
sys.exit(main())
"""


def sources() -> list[Path]:
    """The shared cat and dog photos, each distinct content once, cats and dogs in turn."""
    seen: set[str] = set()
    found: dict[str, list[Path]] = {"cat": [], "dog": []}
    for dataset in DATASETS:
        for label in found:
            for path in sorted((SHARED / dataset).glob(f"*/{label}/*.jpg")):
                digest = hashlib.md5(path.read_bytes()).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    found[label].append(path)
    return [p for pair in zip(found["cat"], found["dog"], strict=False) for p in pair]


def variant(src: Path, turn: int) -> bytes | None:
    """`src` re-encoded for the `turn`-th time: cropped, scaled and saved differently."""
    import io

    image = Image.open(src).convert("RGB")
    w, h = image.size
    margin = 0.02 * turn
    box = (int(w * margin * (turn % 2)), int(h * margin * ((turn + 1) % 2)),
           w - int(w * margin * ((turn + 1) % 2)), h - int(h * margin * (turn % 2)))
    scale = (0.9, 0.75, 0.6, 1.2)[turn % 4]
    image = image.crop(box)
    image = image.resize((max(16, int(image.width * scale)), max(16, int(image.height * scale))))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=(88, 80, 72, 92)[turn % 4])
    return buffer.getvalue()


def make_photos(folder: Path, n: int) -> Path:
    """`n` distinct photos under folder/{train,validation}/{cat,dog}/ (made once)."""
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    photos = sources()
    for i in range(n):
        turn, src = divmod(i, len(photos))
        src = photos[src]
        split = "validation" if i % VALIDATION_SHARE == 0 else "train"
        dest = folder / split / src.parent.name / f"{src.stem}.v{turn}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if turn == 0:
            shutil.copyfile(src, dest)
        else:
            dest.write_bytes(variant(src, turn))
    done.touch()
    return folder


def run_issues(photos: Path, sheet: Path, cache: Path, module: str,
               json_out: Path) -> dict:
    """One `pawnet data issues` in a fresh process: its max RSS, wall time, exit code."""
    env = {**os.environ, "PAWNET_CACHE_DIR": str(cache)}
    command = [sys.executable, "-c", CHILD, module, "data", "issues", str(photos), "--json",
               "--out", str(sheet)]
    started = time.monotonic()
    with open(json_out, "w") as out, open(json_out.with_suffix(".err"), "w") as err:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not others'
    seconds = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"exit {code}: {json_out.with_suffix('.err').read_text()[-2000:]}")
    return {"max_rss_mb": usage.ru_maxrss / 1024, "seconds": seconds,
            "sheet_mb": sheet.stat().st_size / 2**20, "result": json.loads(json_out.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=12_000)
    parser.add_argument("--module", default="", help="another data_issues.py to run")
    parser.add_argument("--workdir", type=Path, help="keep photos here between runs "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--save-json", type=Path, help="copy each run's JSON here")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pawnet-issues-"))
    try:
        started = time.monotonic()
        photos = make_photos(work / f"photos-{args.photos}", args.photos)
        print(f"{args.photos} photos in {photos} ({time.monotonic() - started:.0f} s to make)")
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        for name in ("cold", "warm"):
            json_out = work / f"{name}.json"
            ran = run_issues(photos, work / f"{name}.html", cache, args.module, json_out)
            r = ran["result"]
            print(f"{name}: peak memory {ran['max_rss_mb']:,.0f} MB, {ran['seconds']:.1f} s, "
                  f"sheet {ran['sheet_mb']:.2f} MB; {r['photos']} photos, "
                  f"{len(r['label_issues'])} suspected label errors, "
                  f"{r.get('near_duplicates_total', len(r['near_duplicates']))} near-duplicate "
                  f"pairs ({r['straddling_pairs']} across splits, "
                  f"{len(r['near_duplicates'])} listed), {len(r['outliers'])} outliers")
            if args.save_json:
                args.save_json.mkdir(parents=True, exist_ok=True)
                shutil.copy(json_out, args.save_json / f"{args.photos}-{name}.json")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
