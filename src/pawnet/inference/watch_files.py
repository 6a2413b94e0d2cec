"""The files `pawnet watch` writes into SORTED: names that fit the file system, copies that
are whole or absent, folders made durable, and the OSErrors of writing them as one line a
person can act on.

A photo is written under a fixed-size hidden name beside its destination
(`.pawnet-TOKEN.tmp`, so a long photo name cannot make it too long), fsynced, then
hard-linked to its destination, which fails rather than replace a file another process put
there since the name was chosen; where the file system has no hard links it is renamed.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from pawnet.errors import DataError, one_line
from pawnet.storage import fsync_folder

NAME_BYTES = 255  # the longest file name of ext4, XFS, APFS, NTFS (UTF-16 units), exFAT
TMP_PREFIX, TMP_SUFFIX = ".pawnet-", ".tmp"  # a photo being copied: `.pawnet-TOKEN.tmp`
# errors that stop the watch: every later photo would fail the same way
_EDQUOT = getattr(errno, "EDQUOT", errno.ENOSPC)  # not in Windows' errno
FATAL = frozenset({errno.ENOSPC, _EDQUOT, errno.EROFS})
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                       errno.ENOSYS, errno.EXDEV})


def hint(exc: OSError) -> str:
    """What to try after `exc`, chosen by its errno."""
    if exc.errno in (errno.ENOSPC, _EDQUOT):
        return "free space on its disk"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable (and readable) by this user"
    if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
        return "rename the file: that file system does not take this name"
    return "check the disk and the folder"


def data_error(path: Path, exc: OSError, verb: str = "write") -> DataError:
    """`exc`, met writing (or reading) `path` in SORTED, as one line a person can act on."""
    return DataError(f"cannot {verb} {one_line(path)} ({exc.strerror or exc}). Try: "
                     f"{hint(exc)}; what is sorted stays sorted, and photos not sorted yet "
                     "stay in the inbox")


@contextlib.contextmanager
def writing(path: Path, verb: str = "write") -> Iterator[None]:
    """OSError while writing (or reading) `path` in SORTED as a `data_error`."""
    try:
        yield
    except OSError as exc:
        raise data_error(path, exc, verb) from None


def make_folder(folder: Path) -> None:
    """Create `folder` and its missing parents, each made durable in its parent."""
    if not folder.is_dir():
        make_folder(folder.parent)
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        fsync_folder(folder.parent)


def temp_name(dest: Path) -> Path:
    """A fresh temporary name beside `dest`, of a fixed size whatever `dest`'s name."""
    return dest.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}{TMP_SUFFIX}")


def copy_into(data: bytes, tmp: Path, dest: Path) -> None:
    """`data` to `tmp`, fsynced, then linked (or renamed) to `dest`: `dest` is whole or
    absent, and `tmp` is gone (its folder is not fsynced here).

    Raises:
        FileExistsError: something appeared at `dest` since its name was chosen.
        OSError: `tmp` or `dest` cannot be written.
    """
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, dest)
        except OSError as exc:  # EEXIST raised; no hard links on this file system: a rename
            if exc.errno not in _NO_LINKS:
                raise
            os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):  # a clean-up must not hide what went wrong
            tmp.unlink()


def _cut(text: str, nbytes: int) -> str:
    """The longest start of `text` that is at most `nbytes` bytes in the file system's
    encoding, never cutting a character in two."""
    out, used = [], 0
    for char in text:
        used += len(os.fsencode(char))
        if used > nbytes:
            break
        out.append(char)
    return "".join(out)


def free_name(into: Path, folder: str, name: str, sha256: str,
              taken: set[str] = frozenset()) -> str:
    """`folder/name` in SORTED, or when that is taken (there, or in `taken`)
    `name-<first 8 of SHA-256>`, then `-2`, `-3`, ...; a name too long for that (over
    NAME_BYTES with the longest such ending) is shortened first, keeping its extension."""
    stem, suffix = os.path.splitext(name)
    if len(os.fsencode(suffix)) > 16:  # not an extension: part of the name
        stem, suffix = name, ""
    room = NAME_BYTES - len(os.fsencode(suffix)) - len("-12345678-9999")
    stem = _cut(stem, room) if len(os.fsencode(stem)) > room else stem
    numbered = (f"{stem}-{sha256[:8]}-{n}{suffix}" for n in range(2, 10_000))
    for candidate in itertools.chain([stem + suffix, f"{stem}-{sha256[:8]}{suffix}"], numbered):
        path = f"{folder}/{candidate}"
        if path not in taken and not os.path.lexists(into / path):
            return path
    raise DataError(f"no free name for {one_line(name)} in {one_line(into / folder)}. Try: "
                    "move some of the files named like it out of that folder")
