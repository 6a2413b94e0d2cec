"""Checking each file once: only a regular file is opened, its header read before anything
else, and only an image decoded and hashed; the results kept in the user cache by path,
size and modification time, so a second scan of the same folder checks nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pawnet.data.images import inspect_image
from pawnet.errors import ImageError
from pawnet.logs import progress
from pawnet.storage import atomic_write_text, cache_dir

Labelled = list[tuple[Path, str | None, str | None]]  # (file, class or None, given split)
SCAN_CACHE_VERSION = 1


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes in hex: a photo's identity (duplicates, splits, shards)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_file(path: Path, max_pixels: int) -> dict:
    """Check one file: only a regular file is opened, its header read before anything else,
    and only an image is decoded and hashed. Returns a JSON-able record for the scan cache:
    `sha256` and `kind`, or `error`."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            return {"error": "not a regular file (a pipe, socket or device); left alone"}
        info = inspect_image(path, max_pixels)
        digest = file_sha256(path)
    except ImageError as exc:
        return {"error": str(exc)}
    except FileNotFoundError:
        return {"error": "vanished during the scan, or a link to nothing"}
    except PermissionError as exc:
        return {"error": f"cannot read file ({exc.strerror or 'permission denied'})"}
    except OSError as exc:
        return {"error": f"cannot read file ({exc.strerror or exc})"}
    return {"sha256": digest, "kind": f"{info.mode} {info.format}"}


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _valid_entry(entry: object) -> bool:
    """Whether a scan-cache entry has the shape `_check_file` writes (plus its stamp)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("stamp"), str):
        return False
    if "error" in entry:
        return isinstance(entry["error"], str)
    return (isinstance(entry.get("sha256"), str) and bool(_SHA256.match(entry["sha256"]))
            and isinstance(entry.get("kind"), str))


class ScanCache:
    """Check results of files, keyed by absolute path, size and mtime, in the user cache."""

    def __init__(self, root: Path, max_pixels: int):
        key = hashlib.sha256(f"{root}|{max_pixels}".encode()).hexdigest()[:20]
        self.path = cache_dir() / "scan" / f"{key}.json"
        self.entries: dict[str, dict] = {}
        try:
            loaded = json.loads(self.path.read_text())
            entries = loaded["entries"] if loaded.get("version") == SCAN_CACHE_VERSION else {}
            # whatever does not look as written is checked again, never trusted
            self.entries = {k: v for k, v in entries.items() if _valid_entry(v)}
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            self.entries = {}  # missing or damaged cache: rescan

    @staticmethod
    def _stamp(path: Path) -> str | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return f"{st.st_size}:{st.st_mtime_ns}"

    def get(self, path: Path) -> dict | None:
        entry, stamp = self.entries.get(str(path)), self._stamp(path)
        return entry if entry and stamp is not None and entry.get("stamp") == stamp else None

    def put(self, path: Path, record: dict) -> None:
        stamp = self._stamp(path)
        if stamp is not None:  # a vanished file is not remembered
            self.entries[str(path)] = {**record, "stamp": stamp}

    def save(self, keep: Iterable[Path]) -> None:
        keep_set = {str(p) for p in keep}
        entries = {k: v for k, v in self.entries.items() if k in keep_set}
        atomic_write_text(self.path, json.dumps({"version": SCAN_CACHE_VERSION,
                                                 "entries": entries}))


def check_all(items: Labelled, cache: ScanCache, max_pixels: int, workers: int | None
               ) -> dict[Path, dict]:
    """Every file's record: from the cache, or checked now in parallel (then saved)."""
    records = {p: r for p, _, _ in items if (r := cache.get(p)) is not None}
    todo = [p for p, _, _ in items if p not in records]
    if not todo:
        return records
    with progress(len(todo), "Checking photos", "file") as bar, ThreadPoolExecutor(
        max_workers=workers or os.cpu_count() or 2
    ) as pool:
        for path, record in zip(todo, pool.map(lambda p: _check_file(p, max_pixels), todo),
                                strict=True):
            records[path] = record
            cache.put(path, record)
            bar.update()
    cache.save(p for p, _, _ in items)
    return records
