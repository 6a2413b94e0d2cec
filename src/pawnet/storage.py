"""Files pawnet writes: atomic replacement, the per-user cache and numbered run folders.

What pawnet writes itself goes to a temporary name beside its target and is renamed into
place, so a reader (or a run killed half-way) sees the old file or folder or the new one,
never half of one. A folder is only ever replaced when it is pawnet's own output of the
same kind (its `Output` marker, and nothing in it that pawnet did not write there); a
user's folder or file given as a destination is refused, never removed.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pawnet.errors import ConfigError, one_line

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"
_PARTIAL = re.compile(r"-partial-([A-Za-z0-9]+)-(\d+)-[0-9a-f]+")
_TEMPORARY = re.compile(r"\..+-(partial-[A-Za-z0-9]+-\d+-[0-9a-f]+|old)(\..*)?")  # ours
MARKER = ".pawnet-output"  # in every folder pawnet writes as a whole: {"kind": ...}
SNIFF_BYTES = 4096  # how much of an existing file is read to tell whether pawnet wrote it


@dataclass(frozen=True)
class Output:
    """A kind of folder pawnet writes as a whole (a bundle, an export, a report, ...).

    `names` matches (a regular expression) every entry pawnet writes in it; `legacy`
    matches an entry that marks such a folder written before folders had a marker.
    """

    kind: str
    names: str
    legacy: str

    def owns(self, folder: Path) -> bool:
        """Whether `folder` is pawnet's own output of this kind: marked as such (or, from
        an older pawnet, unmarked and holding its `legacy` entry) and holding nothing
        that pawnet does not write there."""
        entries = [p.name for p in folder.iterdir()
                   if p.name != MARKER and not _TEMPORARY.fullmatch(p.name)]
        if (folder / MARKER).exists():
            marked = _marker_kind(folder) == self.kind
        else:
            marked = any(re.fullmatch(self.legacy, name) for name in entries)
        return marked and all(re.fullmatch(self.names, name) for name in entries)

    def mark(self, folder: Path) -> None:
        from pawnet import __version__

        (folder / MARKER).write_text(json.dumps({"kind": self.kind,
                                                 "pawnet": __version__}) + "\n")


def _marker_kind(folder: Path) -> str | None:
    try:
        found = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found.get("kind") if isinstance(found, dict) else None


def _listing(folder: Path, most: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(one_line(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_output_folder(path: str | Path, output: Output, flag: str = "--out") -> Path:
    """`path` as an absolute path, once it is clear pawnet may write its `output` there:
    it does not exist, is an empty folder, or is pawnet's own earlier output of that kind.

    Raises:
        ConfigError: it is a file, a link, the current folder or one above it, or a
            folder holding anything pawnet did not write there as `output`.
    """
    path = Path(os.path.abspath(path))
    hint = f"Try: {flag} a folder that does not exist yet"
    if path.is_symlink():
        raise ConfigError(f"{one_line(path)} is a link; pawnet writes {output.kind} folders "
                          f"only where it can replace them whole. {hint}")
    if path == Path.cwd() or path in Path.cwd().parents:
        raise ConfigError(f"{one_line(path)} is the current folder or holds it; pawnet "
                          f"does not write a {output.kind} folder over it. {hint}")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{one_line(path)} is a file, not a folder; pawnet never "
                          f"replaces files it did not write. {hint}")
    if path.is_dir() and any(path.iterdir()) and not output.owns(path):
        raise ConfigError(f"{one_line(path)} already exists and is not a pawnet "
                          f"{output.kind} folder (it holds {_listing(path)}); pawnet never "
                          f"replaces what it did not write. {hint}, or move it away")
    return path


def check_output_file(path: str | Path, kind: str, is_own: Callable[[bytes], bool],
                      flag: str = "--out") -> Path:
    """`path` as an absolute path, once it is clear pawnet may write a `kind` file there:
    it does not exist, or it is one pawnet wrote (`is_own` of its first bytes says so).

    Raises:
        ConfigError: it is a folder, not a regular file, or a file pawnet did not write.
    """
    path = Path(os.path.abspath(path))
    hint = f"Try: {flag} a file name that does not exist yet"
    if path.is_dir():
        raise ConfigError(f"{one_line(path)} is a folder; {flag} takes the {kind} file to "
                          f"write. Try: {flag} {one_line(path / ('pawnet-' + kind))}")
    if not path.exists() and not path.is_symlink():
        return path
    if not path.is_file() or path.is_symlink():
        raise ConfigError(f"{one_line(path)} is not a regular file; pawnet writes {kind} "
                          f"files only. {hint}")
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot read {one_line(path)} ({exc.strerror}). {hint}") from None
    if not is_own(head):
        raise ConfigError(f"{one_line(path)} already exists and was not written by pawnet "
                          f"as {kind}; pawnet never replaces files it did not write. {hint}, "
                          "or move it away")
    return path


def cache_dir() -> Path:
    """Per-user cache folder: `$PAWNET_CACHE_DIR`, else `~/.cache/pawnet`; made private
    (mode 700) when pawnet creates it.

    Raises:
        ConfigError: the folder belongs to another user, or others can write to it (they
            could plant cached features or converted models).
    """
    root = os.environ.get("PAWNET_CACHE_DIR") or Path.home() / ".cache" / "pawnet"
    path = Path(root)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(path)
    return path


def _own_group(gid: int) -> bool:
    """Whether group `gid` is this user's private group (named after the user, no other
    members): what many Linux systems give each user, with umask 002."""
    try:
        import grp
        import pwd

        group = grp.getgrgid(gid)
        return (gid == os.getgid() and not group.gr_mem
                and group.gr_name == pwd.getpwuid(os.getuid()).pw_name)
    except (ImportError, KeyError):
        return False


def _check_private(path: Path) -> None:
    if not hasattr(os, "getuid"):  # Windows: ownership is an ACL, not checked here
        return
    info = path.stat()
    fix = ("Try: PAWNET_CACHE_DIR=a folder of your own that only you can write "
           "(mkdir -m 700 ...)")
    if info.st_uid != os.getuid():
        raise ConfigError(f"the cache folder {one_line(path)} belongs to another user (uid "
                          f"{info.st_uid}), who could plant cached features or models in it. "
                          f"{fix}")
    if info.st_mode & 0o002 or (info.st_mode & 0o020 and not _own_group(info.st_gid)):
        raise ConfigError(f"the cache folder {one_line(path)} can be written by other users "
                          f"(mode {info.st_mode & 0o777:o}), who could plant cached features "
                          f"or models in it. Try: chmod go-w {one_line(path)}, or "
                          f"PAWNET_CACHE_DIR=a folder only you can write")


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
def atomic_path(path: str | Path, output: Output | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; when the block succeeds, rename it to
    `path`. Works for a file or a folder written at the temporary path; a folder is
    `output`, and gets its marker.

    A folder already at `path` is replaced only when it is empty or pawnet's own `output`
    (see `check_output_folder`): it is first set aside (see `committed`), then removed once
    the new one is in place. A file never replaces a folder. When the block fails, the
    temporary path is removed and `path` is left as it was.

    Raises:
        ConfigError: `path` holds something pawnet may not replace.
    """
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    tmp = _sibling(path, f"partial-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        if tmp.is_dir():
            _replace_folder(tmp, path, output)
        elif path.is_dir() and not path.is_symlink():
            raise ConfigError(f"{one_line(path)} is a folder; pawnet writes a file there "
                              "only in place of a file. Try: another file name")
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _replace_folder(tmp: Path, path: Path, output: Output | None) -> None:
    if output is None:
        raise ValueError("a folder written with atomic_path needs its Output kind")
    output.mark(tmp)
    if not path.is_dir() or path.is_symlink() or not any(path.iterdir()):
        os.replace(tmp, path)  # over nothing, or over an empty folder: one rename
        return
    check_output_folder(path, output)
    old = _sibling(path, "old")
    _remove(old)
    os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def read_text_file(path: str | Path) -> str:
    """The text (UTF-8) of a regular file; a pipe, device or folder is refused without
    waiting on it (a FIFO named like a run's file would block a plain open forever).

    Raises:
        OSError: it cannot be read, or is not a regular file.
        UnicodeDecodeError: it is not UTF-8 text.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return f.read().decode("utf-8")


def committed(path: str | Path) -> Path | None:
    """`path` if it exists; else the folder `atomic_path` set aside, when the process that
    was replacing it died between its two renames; else None."""
    path = Path(path)
    if path.exists():
        return path
    old = _sibling(path, "old")
    return old if old.exists() else None


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write `data` to `path` atomically: readers see the old file or the new one. With
    `durable`, the file is fsynced before its rename and its folder after, so a power cut
    too leaves one of them whole. Defaults to False: a crash of pawnet is covered, the
    machine's is not."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    if durable:
        fsync_folder(Path(os.path.abspath(path)).parent)


def fsync_folder(folder: str | Path) -> None:
    """Make the names created, renamed or removed in `folder` durable (a no-op where a
    folder cannot be opened, as on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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

