"""The journal of `pawnet watch`: what it has sorted, so that a watch killed at any moment
and started again sorts every photo exactly once, and its CSV log has one row per photo.

`SORTED/.pawnet-watch/journal.jsonl` holds one JSON record per line, each flushed and
fsynced before the step it announces:

```
inbox    {path}                                              first line: the INBOX it sorts
intent   {src, size, mtime, sha256, dest, tmp, move, row}   before the copy
done     {src, sha256}                                       once the copy is in place
removed  {src, sha256}                                       --move: the source is deleted
sorted   {src, size, mtime, sha256, dest}                    sorted, a file there in INBOX
```

A photo is copied to a temporary name beside its destination, fsynced, linked into place
and its folder fsynced (`pawnet.inference.watch_files`); only then is `done` written, then
its CSV row, and with `--move` only then is the source deleted (`removed` is not fsynced: a
replay finds the source gone anyway). A batch takes each step for all its photos before the
next, so the journal is fsynced twice a batch. A sorted photo found again with a new size or
mtime but the same SHA-256 (touched) gets a new `sorted` line instead of a second copy.

On start the journal is replayed in memory: an `intent` without `done` whose destination
holds the same SHA-256 is done; otherwise its temporary file is removed and the photo, still
in INBOX, is sorted again later. A `done` photo whose CSV row is missing gets it; a moved
one still in INBOX with the same SHA-256 is deleted. Then the journal is compacted: rewritten
(atomically, durably) as its `inbox` line and one `sorted` line per sorted photo with a file
of that name in INBOX; the same happens while watching whenever the journal has grown to
twice its compacted size (and COMPACT_FLOOR more), after photos that left the inbox are
forgotten, so it grows with the inbox, not with time. Replay appends nothing and every step
of it can be done twice, so a watch killed while starting starts again the same way. A torn
last line (killed mid-write) is ignored; a damaged line before it stops the watch, as it
cannot tell what was sorted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pawnet.data.checks import file_sha256
from pawnet.errors import DataError, one_line
from pawnet.inference.watch_files import (
    FATAL,
    copy_into,
    data_error,
    hint,
    make_folder,
    temp_name,
    writing,
)
from pawnet.storage import atomic_write_bytes, fsync_folder

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one watch per folder is up to the user
    fcntl = None

log = logging.getLogger(__name__)

FOLDER = ".pawnet-watch"  # in SORTED: the journal and the lock
COMPACT_FLOOR = 2**20  # bytes the journal may grow past twice its compacted size
_FIELDS = {"inbox": ("path",),
           "intent": ("src", "size", "mtime", "sha256", "dest", "tmp", "move", "row"),
           "done": ("src", "sha256"), "removed": ("src", "sha256"),
           "sorted": ("src", "size", "mtime", "sha256", "dest")}
_TYPES = {"path": str, "src": str, "size": int, "mtime": int, "sha256": str, "dest": str,
          "tmp": str, "move": bool, "row": dict}


@dataclass
class Entry:
    """One photo in the journal: where it came from (path in INBOX, size, mtime in ns, its
    SHA-256), where it goes (path in SORTED), and how far it got (intent, done, removed;
    undone, or changed: its source is no longer what was read)."""

    src: str
    size: int
    mtime: int
    sha256: str
    dest: str
    tmp: str = ""
    move: bool = False
    row: dict | None = None  # its CSV row's fields until the row is known to be written
    state: str = "intent"
    logged: bool = field(default=False, compare=False)

    @property
    def identity(self) -> tuple[int, int]:
        return self.size, self.mtime


class RowLog(Protocol):
    """The CSV log the journal keeps in step (`pawnet.inference.watch_log.CsvLog`)."""

    def repair(self, entries: list[Entry]) -> int: ...

    def write(self, entries: list[Entry]) -> None: ...


def _line(op: str, entry: Entry) -> str:
    """One journal record of `entry`: the fields of `op`, as a JSON line."""
    return json.dumps({"op": op, **{k: getattr(entry, k) for k in _FIELDS[op]}}) + "\n"


def _records(path: Path) -> Iterator[dict]:
    """The journal's records; a bad last line is a torn write and is skipped.

    Raises:
        DataError: a line before the last is not a journal record.
    """
    with writing(path, "read"):
        lines = path.read_bytes().split(b"\n") if path.exists() else []
    while lines and not lines[-1].strip(b"\0 \r\t"):
        lines.pop()
    for number, line in enumerate(lines, 1):
        record = _parse(line)
        if record is not None:
            yield record
        elif number < len(lines):
            raise DataError(
                f"the watch journal {one_line(path)} is damaged at line {number} of "
                f"{len(lines)}, so pawnet cannot tell which photos it already sorted. Try: "
                f"move {FOLDER} out of the folder to start afresh (what is sorted stays; "
                "photos still in the inbox are sorted again)")


def _parse(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("op") not in _FIELDS:
        return None
    fields = _FIELDS[record["op"]]
    if not all(isinstance(record.get(k), _TYPES[k]) for k in fields):
        return None
    return {"op": record["op"], **{k: record[k] for k in fields}}


def replayed(path: Path) -> tuple[str | None, list[Entry]]:
    """The INBOX the journal belongs to (None in a journal from before it said) and its
    entries in order, each at its latest state (see the module)."""
    inbox, entries = None, {}
    for record in _records(path):
        op = record.pop("op")
        if op == "inbox":
            inbox = record["path"]
            continue
        src = record["src"]
        if op in ("intent", "sorted"):
            entries.pop(src, None)  # a new version of the photo: the old one is finished
            entries[src] = Entry(**record, state="done" if op == "sorted" else "intent",
                                 logged=op == "sorted")
        elif src in entries and entries[src].sha256 == record["sha256"]:
            entries[src].state = op
    return inbox, list(entries.values())


class Journal:
    """The open journal of one SORTED folder, locked against a second watch."""

    def __init__(self, into: Path, inbox: Path):
        self.into, self.inbox = into, inbox
        self.path = into / FOLDER / "journal.jsonl"
        # src -> its entry, for each sorted photo with a file of that name still in INBOX
        # (perhaps changed since: a new photo, or the same bytes touched)
        self.sorted: dict[str, Entry] = {}
        self._lock = self._file = None
        self._compacted = 0  # the journal's size when last compacted

    def open(self, rows: RowLog) -> list[Entry]:
        """Lock, replay and compact the journal, completing what a killed watch left half
        done; returns the entries it completed now. Raises `DataError` when locked, damaged,
        another inbox's, or not writable."""
        with writing(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_folder()
        try:
            return self._recover(rows)
        except BaseException:
            self.close()
            raise

    def _recover(self, rows: RowLog) -> list[Entry]:
        inbox, entries = replayed(self.path)
        if inbox is not None and inbox != str(self.inbox):
            raise DataError(f"{one_line(self.into)} holds what pawnet watch sorted from "
                            f"{one_line(inbox)}, not from {one_line(self.inbox)}. Try: --into "
                            "another folder for this inbox")
        finished, undone, removed = [], 0, 0
        for entry in entries:
            if entry.state == "intent":
                self._resolve(entry)
                finished += [entry] if entry.state == "done" else []
                undone += entry.state == "undone"
            if entry.state == "done" and entry.move:
                self._remove_source(entry, check=True)
                removed += entry.state == "removed"
        added = rows.repair([e for e in entries  # "changed": its source replaced since
                             if e.state in ("done", "removed", "changed") and not e.logged])
        if finished or undone or removed or added:
            log.info(f"Finished what a stopped watch left half done: {len(finished)} copies "
                     f"in place, {undone} not (any partial copy removed; sorted again), "
                     f"{added} rows added to the log, {removed} moved photos removed from "
                     "the inbox")
        self.sorted = {e.src: e for e in entries
                       if e.state == "done" and os.path.isfile(self.inbox / e.src)}
        self.compact()
        return finished

    def _lock_folder(self) -> None:
        if fcntl is None:
            return
        lock = self.path.parent / "lock"
        with writing(lock):
            self._lock = open(lock, "a")  # noqa: SIM115 (held open until close)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise DataError(f"another pawnet watch is sorting into {one_line(self.into)}. "
                            "Try: stop it first, or --into another folder") from None

    def _resolve(self, entry: Entry) -> None:
        """An intent without `done`: done if its destination holds the photo, else undone
        (its temporary file removed; the photo is still in INBOX)."""
        dest = self.into / entry.dest
        with writing(dest, "read"):  # a name too long for the disk: isfile says False
            whole = os.path.isfile(dest) and file_sha256(dest) == entry.sha256
        entry.state = "done" if whole else "undone"
        if entry.tmp:
            with contextlib.suppress(OSError):  # gone, or a name the disk never took
                (self.into / entry.tmp).unlink()

    def _remove_source(self, entry: Entry, check: bool = False) -> None:
        """--move: delete a sorted photo's source, unless it changed since it was read (a
        new photo): by size and mtime while watching, by SHA-256 (`check`) on replay."""
        source = self.inbox / entry.src
        try:
            if check:
                changed = file_sha256(source) != entry.sha256
            else:
                info = source.stat()
                changed = (info.st_size, info.st_mtime_ns) != entry.identity
            if changed:
                entry.state = "changed"
                return
            source.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # kept, and remembered as sorted
            log.warning(f"{one_line(entry.src)} was sorted but cannot be removed from the "
                        f"inbox ({exc.strerror}); it stays there")
            return
        entry.state = "removed"
        if self._file is not None:  # replay finds the source gone anyway: no fsync
            self.record("removed", entry)

    def record(self, op: str, entry: Entry) -> None:
        """Append one record (durable once `_sync` has run)."""
        with writing(self.path):
            self._file.write(_line(op, entry).encode())
            self._file.flush()

    def _sync(self) -> None:
        with writing(self.path):
            os.fsync(self._file.fileno())

    def place(self, batch: list[tuple[Entry, bytes]], rows: RowLog) -> list[Entry]:
        """Sort photos, each entry with its bytes: intents, copies, `done`s, CSV rows and
        with `entry.move` the sources removed, each step for the whole batch before the
        next, so the journal is fsynced twice a batch, not twice a photo (see the module).
        Returns the entries that cannot be written where they go (a name that disk does
        not take, a folder without permission), each `undone`, with one warning.

        Raises:
            DataError: the disk is full or read-only, or the journal cannot be written;
                the photos not done stay in the inbox, and are sorted again at the next
                start.
        """
        for entry, _ in batch:
            entry.tmp = temp_name(self.into / entry.dest).relative_to(self.into).as_posix()
            self.record("intent", entry)
        self._sync()
        failed = [entry for entry, data in batch if not self._copy(entry, data)]
        done = [entry for entry, _ in batch if entry.state != "undone"]
        for folder in {(self.into / entry.dest).parent for entry in done}:
            fsync_folder(folder)
        for entry in done:
            entry.state = "done"
            self.record("done", entry)
        self._sync()
        rows.write(done)
        for entry in done:
            if entry.move:
                self._remove_source(entry)
            if entry.state == "removed":
                self.sorted.pop(entry.src, None)
            else:
                self.sorted[entry.src] = entry
        return failed

    def _copy(self, entry: Entry, data: bytes) -> bool:
        """Copy one photo into place; False when it cannot be written there (with one
        warning). Either way, when it is not in place its state is `undone` (sorted again
        later: something else took its name meanwhile)."""
        dest = self.into / entry.dest
        try:
            make_folder(dest.parent)
            copy_into(data, self.into / entry.tmp, dest)
            return True
        except OSError as exc:
            entry.state = "undone"
            if isinstance(exc, FileExistsError):
                return True
            if exc.errno in FATAL:
                raise data_error(dest, exc) from None
            log.warning(f"{one_line(entry.src)} cannot be written to {one_line(dest)} "
                        f"({exc.strerror or exc}). Try: {hint(exc)}; it stays in the inbox "
                        "(tried again once it changes, or at the next start)")
            return False

    def same_again(self, entry: Entry, identity: tuple[int, int]) -> None:
        """A sorted photo found with a new size and mtime but the same bytes (touched, or
        rewritten by a sync tool): recorded as it is now rather than sorted again."""
        entry.size, entry.mtime = identity
        self.record("sorted", entry)  # lost in a crash: hashed again, no harm

    def forget(self, present: set[str]) -> None:
        """Drop the sorted photos no longer in INBOX (`present`: the paths there now)."""
        for src in [src for src in self.sorted if src not in present]:
            del self.sorted[src]

    def maybe_compact(self) -> None:
        """Compact once the journal has grown past twice its compacted size (and
        COMPACT_FLOOR)."""
        if self._file.tell() > 2 * self._compacted + COMPACT_FLOOR:
            self.compact()

    def compact(self) -> None:
        """Rewrite the journal, atomically and durably, as its `inbox` line and one `sorted`
        line per photo in `sorted`, and append to that from now on."""
        lines = [json.dumps({"op": "inbox", "path": str(self.inbox)}) + "\n"]
        lines += [_line("sorted", e) for e in self.sorted.values()]
        data = "".join(lines).encode()
        if self._file is not None:
            self._file.close()
            self._file = None
        with writing(self.path):
            atomic_write_bytes(self.path, data, durable=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 (held open until close)
        self._compacted = len(data)

    def close(self) -> None:
        for handle in (self._file, self._lock):
            if handle is not None:
                handle.close()
        self._file = self._lock = None
