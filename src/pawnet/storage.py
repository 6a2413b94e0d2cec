"""Files pawnet writes: atomic replacement, the per-user cache, numbered run folders, and
progress bars.

What pawnet writes itself goes to a temporary name beside its target and is renamed into
place, so a reader (or a run killed half-way) sees the old file or folder or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from pawnet.errors import ConfigError

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"
_PARTIAL = re.compile(r"-partial-([A-Za-z0-9]+)-(\d+)-[0-9a-f]+")


def cache_dir() -> Path:
    """Per-user cache folder: `$PAWNET_CACHE_DIR`, else `~/.cache/pawnet`."""
    root = os.environ.get("PAWNET_CACHE_DIR") or Path.home() / ".cache" / "pawnet"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sibling(path: Path, tag: str) -> Path:
    """A hidden name beside `path` that keeps its suffixes: `a.weights.h5` ->
    `.a-TAG.weights.h5` (Keras chooses the file format by suffix)."""
    head, dot, tail = path.name.partition(".")
    return path.with_name(f".{head}-{tag}{dot}{tail}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove_stale_partials(path: Path) -> None:
    """Delete what killed processes of this host left half-written beside `path`
    (checkpoints can be hundreds of MB). Another host's processes cannot be checked, so
    what they write is left alone."""
    head = path.name.partition(".")[0]
    for leftover in path.parent.glob(f".{glob.escape(head)}-partial-*"):
        match = _PARTIAL.search(leftover.name)
        if match and match.group(1) == _HOST and not _alive(int(match.group(2))):
            _remove(leftover)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; when the block succeeds, rename it to
    `path`. Works for a file or a folder written at the temporary path.

    A folder already at `path` is first set aside (see `committed`), then removed once the
    new one is in place. When the block fails, the temporary path is removed and `path` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    tmp = _sibling(path, f"partial-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = _sibling(path, "old")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def committed(path: str | Path) -> Path | None:
    """`path` if it exists; else the folder `atomic_path` set aside, when the process that
    was replacing it died between its two renames; else None."""
    path = Path(path)
    if path.exists():
        return path
    old = _sibling(path, "old")
    return old if old.exists() else None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically: readers see the old file or the new one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of `atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def next_run_dir(path: str | Path) -> Path:
    """Return `path` if it does not exist yet, else the first free `path2`, `path3`, ...

    The folder is created, so two runs started at once never share it.
    """
    path = Path(path)
    stem = re.sub(r"\d+$", "", path.name) or path.name
    candidates = [path] + [path.with_name(f"{stem}{n}") for n in range(2, 10_000)]
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"no free run folder next to {path}. Try: --out OTHER/FOLDER")


def progress(total: int | None, desc: str, unit: str = "photo", **options):
    """A progress bar on stderr, shown only when stderr is a terminal (stdout may be JSON).
    `options` go to tqdm, e.g. `unit_scale=True` for bytes."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False, **options)
