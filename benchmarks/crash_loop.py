"""Crash loop: `pawnet train` killed with SIGKILL at random moments, then checked.

Toy-size runs on real photos, alternating a scratch model and the default transfer model,
sharing one cache, parts of which are emptied before a run so that killed runs are caught
writing them. Each is killed at a random moment of an unkilled run's duration (from an
empty cache), then:

- its run folder either holds a bundle that loads, or `pawnet train --resume` finishes it
  (exit 0, a bundle that loads), or refuses with one `error:` line saying why;
- no bundle is ever half-written (each one loads, with all its files);
- nothing in the photo folder changed (a listing with sizes and mtimes, before and after).

At the end a fresh unkilled run of each kind must give the same history as before the
loop, so the feature and scan caches the killed runs shared were never corrupted.

    .venv/bin/python benchmarks/crash_loop.py --runs 20
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "cvtricks" / "train"
KINDS = {
    "scratch": ("--model", "pawnet-cnn", "--image-size", "32", "--epochs", "4",
                "--batch-size", "8"),
    "transfer": ("--epochs", "4"),
}


def toy_photos(dest: Path, per_class: int = 16) -> Path:
    for label in ("cat", "dog"):
        (dest / label).mkdir(parents=True)
        for src in sorted((PHOTOS / label).glob("*.jpg"))[:per_class]:
            shutil.copy(src, dest / label / src.name)
    return dest


def listing(folder: Path) -> list[tuple[str, int, int]]:
    """Every entry under `folder` with its size and modification time."""
    return sorted((str(p.relative_to(folder)), p.lstat().st_size, p.lstat().st_mtime_ns)
                  for p in folder.rglob("*"))


def _pawnet(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pawnet.cli", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


def train_args(kind: str, photos: Path, out: Path) -> list[str]:
    return ["train", str(photos), "--out", str(out), *KINDS[kind]]


def history(run: Path) -> str:
    return (run / "history.csv").read_text()


def bundle_loads(run: Path) -> bool:
    """The bundle has every file and loads with its Keras model."""
    import pawnet

    bundle = run / "bundle"
    if not all((bundle / name).is_file() for name in ("model.keras", "bundle.json",
                                                       "provenance.json")):
        return False
    predictor = pawnet.load(run, runtime="keras")
    return predictor.bundle.model is not None


def forget(cache: Path, kind: str, turn: int) -> None:
    """Empty part of the cache before a run, so killed runs are caught writing it too: the
    scan cache, or for transfer runs the features, or everything (weights, conversions)."""
    parts = {"scratch": [["scan"], []], "transfer": [["features"], ["."]]}[kind][turn % 2]
    for part in parts:
        shutil.rmtree(cache / part, ignore_errors=True)


def one_crash(kind: str, photos: Path, run: Path, kill_at: float, env: dict) -> str:
    """Start, kill at `kill_at` s, then check the run folder; returns the outcome."""
    proc = subprocess.Popen([sys.executable, "-m", "pawnet.cli", *train_args(kind, photos, run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(kill_at)
        finished = True
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = False
    if (run / "bundle").exists():
        if not bundle_loads(run):
            return "BROKEN bundle"
        return "finished" if finished else "killed after the bundle"
    if not run.exists():
        return "killed before the run folder"
    resumed = _pawnet("train", "--resume", str(run), env=env)
    if resumed.returncode == 0:
        return "resumed" if bundle_loads(run) else "BROKEN bundle after resume"
    errors = [line for line in resumed.stderr.splitlines() + resumed.stdout.splitlines()
              if line.startswith("error:")]
    if resumed.returncode == 2 and len(errors) == 1:
        return f"refused: {errors[0][7:60]}"
    return f"BROKEN resume (exit {resumed.returncode}): {resumed.stderr[-300:]}"


def crash_loop(runs: int, seed: int = 0, workdir: Path | None = None,
               fractions: list[float] | None = None) -> dict:
    """Run the loop; returns the outcomes, the checks, and the reference durations.

    Each run is killed at a random moment of an unkilled run's duration, or, given
    `fractions`, at those shares of it in turn."""
    rng = random.Random(seed)
    work = Path(workdir or tempfile.mkdtemp(prefix="pawnet-crash-"))
    photos = toy_photos(work / "photos")
    env = {**os.environ, "PAWNET_CACHE_DIR": str(work / "cache")}
    before = listing(photos)
    reference, seconds = {}, {}
    for kind in KINDS:
        started = time.monotonic()
        done = _pawnet(*train_args(kind, photos, work / f"reference-{kind}"), env=env)
        if done.returncode != 0:
            raise RuntimeError(f"the unkilled {kind} run failed:\n{done.stderr[-2000:]}")
        seconds[kind] = time.monotonic() - started
        reference[kind] = history(work / f"reference-{kind}")
    outcomes: Counter = Counter()
    details = []
    for i in range(runs):
        kind = list(KINDS)[i % len(KINDS)]
        forget(work / "cache", kind, i // len(KINDS))
        share = fractions[i % len(fractions)] if fractions else rng.uniform(0.03, 1.0)
        kill_at = share * seconds[kind]
        outcome = one_crash(kind, photos, work / f"run{i}", kill_at, env)
        outcomes[outcome] += 1
        details.append((kind, round(kill_at, 2), outcome))
    again = {}
    for kind in KINDS:
        done = _pawnet(*train_args(kind, photos, work / f"again-{kind}"), env=env)
        again[kind] = done.returncode == 0 and history(work / f"again-{kind}") == reference[kind]
    leftovers = [str(p) for p in work.rglob(".*-partial-*")]
    return {
        "runs": runs, "outcomes": dict(outcomes), "details": details,
        "broken": sum(n for o, n in outcomes.items() if o.startswith("BROKEN")),
        "caches_give_identical_runs": again, "photos_unchanged": listing(photos) == before,
        "partial_leftovers": leftovers, "unkilled_seconds": seconds, "workdir": str(work),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    result = crash_loop(args.runs, args.seed)
    print("unkilled runs: " + ", ".join(f"{k} {s:.1f} s"
                                          for k, s in result["unkilled_seconds"].items()))
    for kind, at, outcome in result["details"]:
        print(f"  {kind:<9} killed at {at:>6.2f} s -> {outcome}")
    print(f"{result['runs']} killed runs: " + ", ".join(
        f"{o} {n}" for o, n in sorted(result["outcomes"].items())))
    print(f"broken bundles or resumes: {result['broken']}")
    print(f"a later run gives the same history: {result['caches_give_identical_runs']}")
    print(f"photo folder unchanged: {result['photos_unchanged']}")
    print(f"partial files left behind: {len(result['partial_leftovers'])}")
    if not args.keep:
        shutil.rmtree(result["workdir"], ignore_errors=True)
    ok = (not result["broken"] and all(result["caches_give_identical_runs"].values())
          and result["photos_unchanged"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
