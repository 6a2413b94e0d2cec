"""Crash loop for `pawnet watch`: SIGKILLed at random moments while photos arrive, then checked.

A feeder drops real photos into an inbox, some written under a temporary name and renamed
in, some written slowly in place (half, a pause, the rest), a few into sub-folders. Meanwhile
`pawnet watch INBOX --model RUN --into SORTED` runs in a process of its own, killed with
SIGKILL at a random moment of each run and started again, until the feeder is done. A last
`pawnet watch --once` (not killed) must exit 0, and then:

- every photo's content is in exactly one place (by SHA-256, across INBOX and SORTED with
  `--move`, in SORTED without it, the inbox unchanged): none lost, none duplicated;
- SORTED holds nothing else: no partial copy, no temporary file;
- `SORTED/watch.csv` has exactly one row per photo, naming where it is.

    .venv/bin/python benchmarks/watch_crash.py RUN --photos 500
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cdfiltered"


def real_photos(n: int) -> list[Path]:
    """`n` distinct real photos, cats and dogs in turn (cats_and_dogs_filtered has no
    duplicates)."""
    cats, dogs = (sorted((DATA / split / label).glob("*.jpg"))
                  for split, label in (("train", "cat"), ("train", "dog")))
    return [p for pair in zip(cats, dogs, strict=False) for p in pair][:n]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def feed(photos: list[Path], inbox: Path, rng: random.Random, pace: float,
         pause: float) -> None:
    """Drop `photos` into `inbox` in bursts of 1 to 8, about `pace` s a photo: every other
    burst starts with a photo written slowly in place (half, up to `pause` s, the rest), the
    others are renamed in from a `.part` name at once; every seventh goes in a sub-folder."""
    i = 0
    while i < len(photos):
        burst = photos[i : i + rng.randint(1, 8)]
        for n, src in enumerate(burst, i):
            data = src.read_bytes()
            folder = inbox / f"sub{n % 2}" if n % 7 == 0 else inbox
            folder.mkdir(parents=True, exist_ok=True)
            if n == i and rng.random() < 0.5:
                with open(folder / src.name, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    time.sleep(rng.uniform(0.0, pause))
                    f.write(data[len(data) // 2 :])
            else:
                (folder / f"{src.name}.part").write_bytes(data)
                os.replace(folder / f"{src.name}.part", folder / src.name)
        i += len(burst)
        time.sleep(rng.uniform(0.0, 2 * pace * len(burst)))


def watch_args(model: str, inbox: Path, into: Path, move: bool, settle: float) -> list[str]:
    return [sys.executable, "-m", "pawnet.cli", "watch", str(inbox), "--model", model,
            "--into", str(into), "--settle", str(settle), *(["--move"] if move else [])]


KINDS = ("from start", "once ready", "in a batch")  # when each kill lands, in turn


def kill_loop(args: list[str], feeder: threading.Thread, rng: random.Random,
              kill_after: tuple[float, float], min_kills: int, work: Path) -> dict:
    """Start the watch and SIGKILL it, again and again while the feeder runs and until the
    inbox is sorted (at least `min_kills` times; at most a minute after the feeder), in
    turn: at a random moment `kill_after` s after it starts (its start-up and replay), up
    to `kill_after[1]` s after it is ready, or up to 30 ms after it starts a batch (journals
    its intents: copying, renaming, journaling `done`, logging, removing). Returns the
    kills by kind and the watch's exits of its own (none expected)."""
    kills, exits, deadline = Counter(), [], None
    while feeder.is_alive() or kills.total() < min_kills or _waiting(work):
        if not feeder.is_alive():  # the killed runs sort it all, in at most a minute more
            deadline = deadline or time.monotonic() + 60
            if time.monotonic() > deadline:
                break
        kind = KINDS[kills.total() % len(KINDS)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        signals = {"Sorting ": threading.Event()}
        reader = threading.Thread(target=_copy_lines,
                                  args=(proc.stderr, work / "watch.log", signals))
        reader.start()
        if kind == "from start":
            time.sleep(rng.uniform(*kill_after))
        elif kind == "once ready":
            signals["Sorting "].wait(60)
            time.sleep(rng.uniform(0.0, kill_after[1]))
        else:
            signals["Sorting "].wait(60)
            _batch_started(work, proc, feeder)
            time.sleep(rng.uniform(0.0, 0.03))
        if proc.poll() is None:
            proc.kill()
            kills[kind] += 1
        else:
            exits.append(proc.returncode)
        proc.wait()
        reader.join()
    return {"kills": kills.total(), "kills_by_kind": dict(kills), "exits": exits}


def _batch_started(work: Path, proc: subprocess.Popen, feeder: threading.Thread) -> None:
    """Return once the watch appends to its journal (a batch's intents), or when it
    ended, or the feeder is done and nothing is left to sort."""
    journal = work / "sorted" / ".pawnet-watch" / "journal.jsonl"
    size, checked = journal.stat().st_size, time.monotonic()
    while journal.stat().st_size == size and proc.poll() is None:
        if time.monotonic() - checked > 0.5:
            if not feeder.is_alive() and not _waiting(work):
                return
            checked = time.monotonic()
        time.sleep(0.001)


def _waiting(work: Path) -> bool:
    """Whether the inbox holds a file the journal does not list as sorted."""
    inbox, journal = work / "inbox", work / "sorted" / ".pawnet-watch" / "journal.jsonl"
    listed = journal.read_text() if journal.exists() else ""
    return any(f'"{p.relative_to(inbox).as_posix()}"' not in listed
               for p in inbox.rglob("*") if p.is_file())


def _copy_lines(stream, log: Path, signals: dict[str, threading.Event]) -> None:
    """Append the watch's lines to `log`, setting the event of each text seen."""
    with open(log, "ab") as out:
        for line in stream:
            out.write(line)
            for text, event in signals.items():
                if text.encode() in line:
                    event.set()


def check(photos: list[Path], inbox: Path, into: Path, move: bool) -> dict:
    """Where each photo's content ended up (see the module): lost, duplicated, strangers
    (files in SORTED that are no photo: partial copies), leftovers and the CSV's rows."""
    expected = {sha256(p) for p in photos}
    sorted_files = [p for p in into.rglob("*") if p.is_file()
                    and ".pawnet-watch" not in p.relative_to(into).parts
                    and p != into / "watch.csv"]
    found = Counter(sha256(p) for p in sorted_files)
    in_inbox = Counter(sha256(p) for p in inbox.rglob("*") if p.is_file())
    if move:
        found += in_inbox
    with open(into / "watch.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    good_rows = [r for r in rows if (into / r["destination"]).is_file()
                 and sha256(into / r["destination"]) == r["sha256"]]
    return {
        "photos": len(expected),
        "lost": sorted(s for s in expected if found[s] == 0),
        "duplicated": sorted(s for s in expected if found[s] > 1),
        "strangers": sorted(str(p) for p in sorted_files if sha256(p) not in expected),
        "leftovers": sorted(str(p) for p in sorted_files if p.name.startswith(".")),
        "inbox_left": sum(in_inbox.values()),
        "inbox_ok": (in_inbox.total() == 0 if move else set(in_inbox) == expected
                     and in_inbox.total() == len(photos)),
        "rows": len(rows),
        "rows_per_photo": Counter(Counter(r["sha256"] for r in good_rows).values()),
        "rows_bad": len(rows) - len(good_rows),
    }


def crash_loop(model: str, photos: list[Path], work: Path, *, move: bool = True,
               seed: int = 0, settle: float = 0.2, pace: float = 0.1, pause: float = 0.5,
               kill_after: tuple[float, float] = (0.3, 2.0), min_kills: int = 5) -> dict:
    """Run the loop in `work` (see the module); returns the checks with kills, exits of the
    watch's own (none expected), the last run's exit code and the seconds it all took."""
    rng, started = random.Random(seed), time.monotonic()
    inbox, into, log = work / "inbox", work / "sorted", work / "watch.log"
    inbox.mkdir(parents=True)
    feeder = threading.Thread(target=feed, args=(photos, inbox, random.Random(seed + 1),
                                                 pace, pause))
    feeder.start()
    args = watch_args(model, inbox, into, move, settle)
    try:
        loop = kill_loop(args, feeder, rng, kill_after, min_kills, work)
    finally:
        feeder.join()
    before_last = _rows(into)
    last = subprocess.run([*args, "--once"], capture_output=True, text=True, timeout=600)
    result = check(photos, inbox, into, move)
    recovered = [line for line in log.read_text().splitlines() if "half done" in line]
    return {**loop, **result, "recovered": len(recovered), "sorted_by_killed": before_last,
            "last_exit": last.returncode,
            "last_output": last.stderr[-2000:], "seconds": time.monotonic() - started}


def _rows(into: Path) -> int:
    """Rows in the CSV log (a torn last one counted too)."""
    log = into / "watch.csv"
    return max(0, len(log.read_bytes().splitlines()) - 1) if log.exists() else 0


def report(result: dict) -> str:
    kinds = ", ".join(f"{n} {kind}" for kind, n in result["kills_by_kind"].items())
    return (f"kills {result['kills']} ({kinds}; {result['recovered']} restarts found a photo "
            f"half sorted), photos {result['photos']} ({result['sorted_by_killed']} sorted by "
            f"killed runs), lost {len(result['lost'])}, "
            f"duplicated {len(result['duplicated'])}, partial or stray files "
            f"{len(result['strangers'])}, temporary files left {len(result['leftovers'])}, "
            f"CSV rows {result['rows']} (per photo {dict(result['rows_per_photo'])}, bad "
            f"{result['rows_bad']}), own exits {result['exits']}, last run exit "
            f"{result['last_exit']}, {result['seconds']:.1f} s")


def ok(result: dict) -> bool:
    return (not result["lost"] and not result["duplicated"] and not result["strangers"]
            and not result["leftovers"] and not result["exits"] and result["last_exit"] == 0
            and result["rows"] == result["photos"] and not result["rows_bad"]
            and result["rows_per_photo"] == Counter({1: result["photos"]})
            and result["inbox_ok"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained run folder")
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--copy", action="store_true", help="copy instead of --move")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pace", type=float, default=0.05, help="mean seconds between photos")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pawnet-watch-crash-"))
    result = crash_loop(args.model, real_photos(args.photos), work, move=not args.copy,
                        seed=args.seed, pace=args.pace, kill_after=(0.3, 3.0))
    print(f"{'copy' if args.copy else 'move'}: {report(result)}")
    if not ok(result):
        print(result["last_output"], file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
