"""Crash safety: `pawnet train` killed with SIGKILL at random moments of its run, scratch and
transfer, at toy size (`benchmarks/crash_loop.py` is the long version), sharing one cache
that parts of are emptied before each killed run, so that kills catch it being written.

Each killed run either holds a bundle that loads, or `pawnet train --resume` finishes it (a
bundle that loads), or refuses with one `error:` line saying why; no bundle is half-written,
the photo folder is unchanged, and no partial file is left. An unkilled run after the loop
gives the same history as one before it, so the scan, feature, weights and conversion caches
the killed runs wrote were never corrupted. Only the killed runs are processes of their own
(the kill is the point); the unkilled runs and the resumes run in this process."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import copy_photos, invoke

import pawnet

pytestmark = pytest.mark.integration  # trains, in processes it kills

KINDS = {
    "scratch": {"model": "tutorial-d-conv16", "image_size": 32, "epochs": 3, "batch_size": 8},
    "transfer": {"model": "efficientnet-lite0", "image_size": 64, "epochs": 3, "batch_size": 8},
}
# each killed run in turn, and what it finds emptied in the cache first: the scan cache, the
# features, nothing, or everything (weights and conversions too)
LOOP = [("scratch", ["scan"]), ("transfer", ["features"]), ("scratch", []),
        ("transfer", ["."])]


def _flags(settings: dict) -> list[str]:
    return [str(a) for k, v in settings.items() for a in ("--" + k.replace("_", "-"), v)]


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    """Every entry under `folder` with its size and modification time."""
    return sorted((str(p.relative_to(folder)), p.lstat().st_size, p.lstat().st_mtime_ns)
                  for p in folder.rglob("*"))


def _bundle_loads(run: Path) -> bool:
    """The bundle has every file and loads with its Keras model."""
    bundle = run / "bundle"
    if not all((bundle / name).is_file()
               for name in ("model.keras", "bundle.json", "provenance.json")):
        return False
    return pawnet.load(run, runtime="keras").bundle.model is not None


def _kill_during(args: list[str], run: Path, delay: float) -> bool:
    """Start `pawnet train ARGS`, SIGKILL it `delay` s after it makes its run folder; whether
    it was killed (or had finished first)."""
    proc = subprocess.Popen([sys.executable, "-m", "pawnet.cli", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not run.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.wait(delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _outcome(run: Path, killed: bool) -> str:
    if (run / "bundle").exists():
        if not _bundle_loads(run):
            return "BROKEN bundle"
        return "killed after the bundle" if killed else "finished"
    if not run.exists():
        return "killed before the run folder"
    resumed = invoke("train", "--resume", run)
    if resumed.exit_code == 0:
        return "resumed" if _bundle_loads(run) else "BROKEN bundle after resume"
    errors = [line for line in resumed.output.splitlines() if line.startswith("error:")]
    if resumed.exit_code == 2 and len(errors) == 1:
        return f"refused: {errors[0][7:60]}"
    return f"BROKEN resume (exit {resumed.exit_code}): {resumed.output[-300:]!r}"


def test_killed_runs_resume_or_say_why_and_corrupt_nothing(tmp_path, fresh_cache):
    photos = copy_photos(tmp_path / "photos", 12)
    before = _listing(photos)
    rng = random.Random(0)
    reference, seconds = {}, {}
    for kind, settings in KINDS.items():  # from an empty cache: every part is made
        run = pawnet.train(photos, out=str(tmp_path / f"reference-{kind}"), **settings)
        # how long the run took once it had made its run folder (config.yaml comes first)
        seconds[kind] = time.time() - (run / "config.yaml").stat().st_mtime
        reference[kind] = (run / "history.csv").read_text()

    details = []
    for i, (kind, forget) in enumerate(LOOP):
        for part in forget:
            shutil.rmtree(fresh_cache / part, ignore_errors=True)
        run = tmp_path / f"run{i}"
        delay = rng.uniform(0.03, 1.0) * seconds[kind]
        killed = _kill_during([str(photos), "--out", str(run), *_flags(KINDS[kind])], run,
                              delay)
        details.append((kind, round(delay, 2), _outcome(run, killed)))
    print("killed runs (kind, seconds after the run folder, outcome):", details)
    assert not [d for d in details if d[2].startswith("BROKEN")], details
    assert any(outcome != "finished" for _, _, outcome in details), details  # a kill landed

    for kind, settings in KINDS.items():
        again = pawnet.train(photos, out=str(tmp_path / f"again-{kind}"), **settings)
        assert (again / "history.csv").read_text() == reference[kind], (kind, details)
    assert _listing(photos) == before
    leftovers = [p for folder in (tmp_path, fresh_cache) for p in folder.rglob(".*-partial-*")]
    assert leftovers == [], details
