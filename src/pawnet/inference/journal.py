"""The journal of `pawnet watch`: what it has sorted, so that a watch killed at any moment
and started again sorts every photo exactly once, and its CSV log has one row per photo.

`SORTED/.pawnet-watch/journal.jsonl` holds one JSON record per line, each flushed and
fsynced before the step it announces:

```
intent   {src, size, mtime, sha256, dest, tmp, move, row}   before the copy
done     {src, sha256}                                       once the copy is in place
removed  {src, sha256}                                       --move: the source is deleted
sorted   {src, size, mtime, sha256, dest}                    compacted: sorted, still in INBOX
```

A photo is copied to a temporary name beside its destination, fsynced, renamed into place
and its folder fsynced; only then is `done` written, then its CSV row, and with `--move`
only then is the source deleted (`removed` is not fsynced: a replay finds the source gone
anyway). A batch takes each step for all its photos before the next, so the journal is
fsynced twice a batch. On start the journal is replayed in memory: an `intent`
without `done` whose destination holds the same SHA-256 is done; otherwise its temporary
file is removed and the photo, still in INBOX, is sorted again later. A `done` photo whose
CSV row is missing gets it; a moved one still in INBOX with the same SHA-256 is deleted.
Then the journal is rewritten (atomically) with one `sorted` line per photo still in INBOX,
so it grows with the inbox, not with time. Replay appends nothing and every step of it can
be done twice, so a watch killed while starting starts again the same way. A torn last line
(killed mid-write) is ignored; a damaged line before it stops the watch, as it cannot tell
what was sorted.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pawnet.data.checks import file_sha256
from pawnet.errors import DataError, one_line
from pawnet.storage import atomic_path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one watch per folder is up to the user
    fcntl = None

log = logging.getLogger(__name__)

FOLDER = ".pawnet-watch"  # in SORTED: the journal and the lock
LOG_NAME = "watch.csv"
_FIELDS = {"intent": ("src", "size", "mtime", "sha256", "dest", "tmp", "move", "row"),
           "done": ("src", "sha256"), "removed": ("src", "sha256"),
           "sorted": ("src", "size", "mtime", "sha256", "dest")}
_TYPES = {"src": str, "size": int, "mtime": int, "sha256": str, "dest": str, "tmp": str,
          "move": bool, "row": dict}
TMP_SUFFIX = ".pawnet-tmp"  # a photo being copied into SORTED: `.NAME.TOKEN.pawnet-tmp`


@dataclass
class Entry:
    """One photo in the journal: where it came from (path in INBOX, size, mtime in ns, its
    SHA-256), where it goes (path in SORTED), and how far it got (intent, done, removed)."""

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


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (not possible on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_folder(folder: Path) -> None:
    """Create `folder` and its missing parents, each made durable in its parent."""
    if not folder.is_dir():
        _make_folder(folder.parent)
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        fsync_folder(folder.parent)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """OSError while writing `path` in SORTED as the DataError a person can act on."""
    try:
        yield
    except OSError as exc:
        raise DataError(f"cannot write {one_line(path)} ({exc.strerror or exc}). Try: free "
                        "space on its disk or make the folder writable; photos not sorted "
                        "yet stay in the inbox") from None


def _copy(data: bytes, tmp: Path, dest: Path) -> None:
    """`data` to `tmp`, fsynced, renamed to `dest` (free when chosen; the folder is
    locked): `dest` is whole or absent."""
    try:
        with _writing(dest):
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary name, fsync, rename, fsync the folder):
    a crash leaves the old file or the new one, whole."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_folder(path.parent)


def _records(path: Path) -> Iterator[dict]:
    """The journal's records; a bad last line is a torn write and is skipped.

    Raises:
        DataError: a line before the last is not a journal record.
    """
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


def replayed(path: Path) -> list[Entry]:
    """The journal's entries in order, each at its latest state (see the module)."""
    entries: dict[str, Entry] = {}
    for record in _records(path):
        op, src = record.pop("op"), record["src"]
        if op in ("intent", "sorted"):
            entries.pop(src, None)  # a new version of the photo: the old one is finished
            entries[src] = Entry(**record, state="done" if op == "sorted" else "intent",
                                 logged=op == "sorted")
        elif src in entries and entries[src].sha256 == record["sha256"]:
            entries[src].state = op
    return list(entries.values())


class Journal:
    """The open journal of one SORTED folder, locked against a second watch."""

    def __init__(self, into: Path, inbox: Path):
        self.into, self.inbox = into, inbox
        self.path = into / FOLDER / "journal.jsonl"
        self.sorted: dict[str, tuple[int, int]] = {}  # src -> identity, sorted and in INBOX
        self._lock = self._file = None

    def open(self, csv_log: CsvLog) -> list[Entry]:
        """Lock, replay and compact the journal, completing what a killed watch left half
        done; returns the entries it completed now. Raises `DataError` when locked or
        damaged."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_folder()
        try:
            return self._recover(csv_log)
        except BaseException:
            self.close()
            raise

    def _recover(self, csv_log: CsvLog) -> list[Entry]:
        entries, finished, undone, removed = replayed(self.path), [], 0, 0
        for entry in entries:
            if entry.state == "intent":
                self._resolve(entry)
                finished += [entry] if entry.state == "done" else []
                undone += entry.state == "undone"
            if entry.state == "done" and entry.move:
                self._remove_source(entry, check=True)
                removed += entry.state == "removed"
        rows = csv_log.repair([e for e in entries
                               if e.state in ("done", "removed") and not e.logged])
        if finished or undone or removed or rows:
            log.info(f"Finished what a stopped watch left half done: {len(finished)} copies "
                     f"in place, {undone} not (any partial copy removed; sorted again), "
                     f"{rows} rows added to {LOG_NAME}, {removed} moved photos removed from "
                     "the inbox")
        for entry in entries:
            if entry.state == "done" and self._in_inbox(entry):
                self.sorted[entry.src] = entry.identity
        kept = [{"op": "sorted", **{k: v for k, v in asdict(e).items() if k in _FIELDS["sorted"]}}
                for e in entries if e.src in self.sorted]
        write_durably(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self._file = open(self.path, "ab")  # noqa: SIM115 (held open until close)
        return finished

    def _lock_folder(self) -> None:
        if fcntl is None:
            return
        self._lock = open(self.path.parent / "lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise DataError(f"another pawnet watch is sorting into {one_line(self.into)}. "
                            "Try: stop it first, or --into another folder") from None

    def _resolve(self, entry: Entry) -> None:
        """An intent without `done`: done if its destination holds the photo, else undone
        (its temporary file removed; the photo is still in INBOX)."""
        dest = self.into / entry.dest
        whole = dest.is_file() and file_sha256(dest) == entry.sha256
        entry.state = "done" if whole else "undone"
        if entry.tmp:
            with contextlib.suppress(FileNotFoundError):
                (self.into / entry.tmp).unlink()

    def _in_inbox(self, entry: Entry) -> bool:
        try:
            info = (self.inbox / entry.src).stat()
        except OSError:
            return False
        return (info.st_size, info.st_mtime_ns) == entry.identity

    def _remove_source(self, entry: Entry, check: bool = False) -> None:
        """--move: delete a sorted photo's source, unless it changed since it was read (a
        new photo): by size and mtime while watching, by SHA-256 (`check`) on replay."""
        source = self.inbox / entry.src
        try:
            info = source.stat()
            if ((info.st_size, info.st_mtime_ns) != entry.identity if not check
                    else file_sha256(source) != entry.sha256):
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
            self.record("removed", entry, sync=False)

    def record(self, op: str, entry: Entry, sync: bool = True) -> None:
        """Append one record; with `sync`, durable before this returns."""
        values = asdict(entry)
        self._file.write((json.dumps({"op": op, **{k: values[k] for k in _FIELDS[op]}})
                          + "\n").encode())
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())

    def place(self, batch: list[tuple[Entry, bytes]], csv_log: CsvLog) -> None:
        """Sort photos, each entry with its bytes: intents, copies, `done`s, CSV rows and
        with `entry.move` the sources removed, each step for the whole batch before the
        next, so the journal is fsynced twice a batch, not twice a photo (see the module).

        Raises:
            DataError: a copy cannot be written (disk full, no permission); the photos
                not done stay in the inbox, and are sorted again at the next start.
        """
        for entry, _ in batch:
            dest = self.into / entry.dest
            with _writing(dest):
                _make_folder(dest.parent)
            # not storage.atomic_path: its clean-up lists the whole folder on every photo
            tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
            entry.tmp = tmp.relative_to(self.into).as_posix()
            self.record("intent", entry, sync=False)
        os.fsync(self._file.fileno())
        for entry, data in batch:
            _copy(data, self.into / entry.tmp, self.into / entry.dest)
        for folder in {(self.into / entry.dest).parent for entry, _ in batch}:
            fsync_folder(folder)
        for entry, _ in batch:
            entry.state = "done"
            self.record("done", entry, sync=False)
        os.fsync(self._file.fileno())
        csv_log.write([entry for entry, _ in batch])
        for entry, _ in batch:
            if entry.move:
                self._remove_source(entry)
            if entry.state != "removed":
                self.sorted[entry.src] = entry.identity

    def close(self) -> None:
        for handle in (self._file, self._lock):
            if handle is not None:
                handle.close()
        self._file = self._lock = None


class CsvLog:
    """`SORTED/watch.csv`: one row per sorted photo (time, file, label, one probability
    column per class, reason, destination, sha256), appended and flushed."""

    def __init__(self, into: Path, classes: list[str]):
        self.path = into / LOG_NAME
        self.header = ["time", "file", "label", *classes, "reason", "destination", "sha256"]
        self.classes = classes

    def repair(self, entries: list[Entry]) -> int:
        """Check the header, drop a torn last row, and add the rows of `entries` missing
        from the log (a watch killed between a photo's `done` and its row); returns how
        many rows were added."""
        text = self.path.read_bytes() if self.path.exists() else b""
        if text and not text.endswith(b"\n"):  # a row torn by a kill
            text = text[: text.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(text))
        rows = list(csv.reader(text.decode("utf-8", "replace").splitlines()))
        if rows and rows[0] != self.header:
            raise DataError(f"{one_line(self.path)} has the columns {', '.join(rows[0])}; "
                            f"this model writes {', '.join(self.header)}. Try: --into another "
                            f"folder for this model, or move {LOG_NAME} away")
        written = {(row[-2], row[-1]) for row in rows[1:] if len(row) == len(self.header)}
        if not rows:
            self._append([self.header])
        missing = [self._row(e) for e in entries if (one_line(e.dest), e.sha256) not in written]
        self._append(missing)
        return len(missing)

    def _row(self, entry: Entry) -> list[str]:
        row = entry.row or {}
        probabilities = row.get("probabilities") or {}
        return [row.get("time", ""), one_line(entry.src), row.get("label") or "",
                *(f"{probabilities[c]:.6f}" if c in probabilities else ""
                  for c in self.classes),
                one_line(row.get("reason") or ""), one_line(entry.dest), entry.sha256]

    def write(self, entries: list[Entry]) -> None:
        self._append([self._row(entry) for entry in entries])

    def _append(self, rows: list[list[str]]) -> None:
        if rows:
            with _writing(self.path), open(self.path, "a", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerows(rows)
