"""`pawnet watch`: sort the photos that arrive in an inbox folder into class folders,
unattended, each exactly once, whatever kills it.

A file is sorted once it is completely written: its size and mtime unchanged for `settle`
seconds and its bytes decoding as a photo (a file that will not decode is given
`ERROR_SETTLES` times as long before it is called unreadable, in case it is still being
written). Settled files are labelled in batches by the `Predictor`, then copied (or moved)
to `SORTED/<class>/`, `SORTED/_review/<why>/` (`unsure` and `neither`) or `SORTED/_errors/`,
through the journal of `pawnet.inference.journal`, which also keeps `SORTED/watch.csv`.

File-system events (watchdog) only wake the loop; a rescan every `RESCAN_SECONDS` (every
`settle` seconds with `poll`, or when events are not available) finds whatever they miss,
so sorting never depends on them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from pawnet import logs
from pawnet.errors import ConfigError, DataError, one_line
from pawnet.inference.journal import FOLDER, CsvLog, Entry, Journal
from pawnet.inference.predictor import Prediction, Predictor, load
from pawnet.trust.verdict import NEITHER, NOT_LIKELY, TOO_SMALL, UNLIKE, UNSURE, reason_kind

log = logging.getLogger(__name__)

REVIEW = "_review"  # unsure and neither, in a folder per reason
ERRORS = "_errors"  # files that are not readable photos
REVIEW_FOLDERS = {TOO_SMALL: "too-small", UNLIKE: "neither", NOT_LIKELY: "unsure"}
SKIPPED_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download")
ERROR_SETTLES = 5  # an undecodable file is unreadable once unchanged this many settles
RESCAN_SECONDS = 10.0  # between rescans when events are watched and nothing is pending
BATCH = 32  # photos read and labelled at once, and at most BATCH_BYTES of them
BATCH_BYTES = 256 * 2**20
MAX_FILE_BYTES = 512 * 2**20  # larger files are no photo pawnet reads: left in the inbox


def skipped(name: str) -> bool:
    """Names that are not (yet) photos: hidden, editor backups, downloads in progress."""
    return name.startswith((".", "~")) or name.lower().endswith(SKIPPED_SUFFIXES)


def check_folders(inbox: Path, into: Path) -> tuple[Path, Path]:
    """The inbox and SORTED folders, absolute, once they are usable.

    Raises:
        DataError: the inbox is missing or not a folder.
        ConfigError: SORTED is the inbox, or one is inside the other (photos would loop).
    """
    inbox, into = Path(os.path.realpath(inbox)), Path(os.path.realpath(into))
    if not inbox.is_dir():
        what = "is a file, not a folder" if inbox.exists() else "does not exist"
        raise DataError(f"the inbox {one_line(inbox)} {what}. Try: pawnet watch FOLDER "
                        "--into SORTED with the folder the photos arrive in")
    if into == inbox or inbox in into.parents or into in inbox.parents:
        raise ConfigError(f"--into {one_line(into)} and the inbox {one_line(inbox)} are "
                          "the same folder or inside one another, so sorted photos would "
                          "be sorted again. Try: --into a folder beside the inbox")
    if into.exists() and not into.is_dir():
        raise ConfigError(f"--into {one_line(into)} is a file. Try: --into a folder")
    return inbox, into


def folder_for(prediction: Prediction) -> str:
    """Where a photo goes in SORTED: its class, `_review/<why>` or `_errors`."""
    if prediction.error is not None:
        return ERRORS
    if prediction.label in (UNSURE, NEITHER):
        kind = reason_kind(prediction.reason)
        return f"{REVIEW}/{REVIEW_FOLDERS.get(kind, prediction.label)}"
    return prediction.label


def free_name(into: Path, folder: str, name: str, sha256: str,
              taken: set[str] = frozenset()) -> str:
    """`folder/name` in SORTED, or when that is taken (there, or in `taken`)
    `name-<first 8 of SHA-256>`, then `-2`, `-3`, ..."""
    stem, suffix = os.path.splitext(name)
    candidates = [name, f"{stem}-{sha256[:8]}{suffix}"]
    candidates += (f"{stem}-{sha256[:8]}-{n}{suffix}" for n in range(2, 10_000))
    for candidate in candidates:
        path = f"{folder}/{candidate}"
        if path not in taken and not os.path.lexists(into / path):
            return path
    raise DataError(f"no free name for {one_line(name)} in {one_line(into / folder)}")


@dataclass
class Summary:
    """What a watch sorted: photos per destination folder (class, `_review/...`,
    `_errors`)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, dest: str) -> None:
        self.counts[dest.rpartition("/")[0]] += 1

    def line(self) -> str:
        sorted_ = {k: n for k, n in self.counts.items()
                   if k != ERRORS and not k.startswith(f"{REVIEW}/")}
        review = {k.partition("/")[2]: n for k, n in self.counts.items()
                  if k.startswith(REVIEW)}
        parts = [f"Sorted {sum(sorted_.values())} photos"
                 + (": " + ", ".join(f"{k} {n}" for k, n in sorted(sorted_.items()))
                    if sorted_ else ""),
                 f"to review {sum(review.values())}"
                 + (f" ({', '.join(f'{k} {n}' for k, n in sorted(review.items()))})"
                    if review else ""),
                 f"unreadable {self.counts[ERRORS]}"]
        return "; ".join(parts)


@dataclass
class _Seen:
    identity: tuple[int, int]  # size, mtime in ns
    since: float  # when this identity was first seen (monotonic)


class _Waker(FileSystemEventHandler):
    def __init__(self, wake: threading.Event):
        self.wake = wake

    def on_any_event(self, event) -> None:
        self.wake.set()


class Sorter:
    """Sorts the settled photos of an inbox, one scan at a time (`step`)."""

    def __init__(self, inbox: Path, into: Path, predictor: Predictor, journal: Journal,
                 csv_log: CsvLog, move: bool = False, settle: float = 1.0):
        self.inbox, self.into, self.predictor = inbox, into, predictor
        self.journal, self.csv_log, self.move, self.settle = journal, csv_log, move, settle
        self.seen: dict[str, _Seen] = {}
        self.unreadable: dict[str, tuple[int, int]] = {}  # cannot be read: left alone
        self.summary, self.stop = Summary(), threading.Event()

    def scan(self) -> dict[str, tuple[int, int]]:
        """Every file in the inbox, but skipped names: path (relative, /) -> (size, mtime)."""
        found = {}
        for root, folders, files in os.walk(self.inbox):
            folders[:] = [f for f in folders if not skipped(f)]
            for name in files:
                if skipped(name):
                    continue
                path = os.path.join(root, name)
                try:
                    info = os.stat(path)
                except OSError:  # gone since listed, or a dangling link
                    continue
                if stat.S_ISREG(info.st_mode):  # not a pipe, which a read would wait on
                    rel = Path(path).relative_to(self.inbox).as_posix()
                    found[rel] = (info.st_size, info.st_mtime_ns)
        return found

    def step(self, only: set[str] | None = None) -> int:
        """Sort what has settled; returns how many files are still waiting to settle
        (`only`: consider these paths only)."""
        now, ready, waiting = time.monotonic(), [], 0
        found = self.scan()
        for rel, identity in sorted(found.items()):
            if ((only is not None and rel not in only) or identity
                    in (self.journal.sorted.get(rel), self.unreadable.get(rel))):
                continue
            seen = self.seen.get(rel)
            if seen is None or seen.identity != identity:
                seen = self.seen[rel] = _Seen(identity, now)
            if now - seen.since >= self.settle:
                ready.append(rel)
            else:
                waiting += 1
        self.seen = {rel: s for rel, s in self.seen.items() if rel in found}
        for batch in self._batches(ready):
            if self.stop.is_set():
                break
            waiting += self._sort(batch)
        return waiting

    def _batches(self, ready: list[str]) -> Iterator[list[str]]:
        """`ready` in batches of at most BATCH files and BATCH_BYTES (or one larger file);
        a file over MAX_FILE_BYTES is left in the inbox, with one warning."""
        batch, size = [], 0
        for rel in ready:
            nbytes = self.seen[rel].identity[0]
            if nbytes > MAX_FILE_BYTES:
                log.warning(f"{one_line(rel)} is larger than {MAX_FILE_BYTES >> 20} MB, so "
                            "no photo pawnet reads; left in the inbox")
                self.unreadable[rel] = self.seen[rel].identity
                continue
            if batch and (len(batch) == BATCH or size + nbytes > BATCH_BYTES):
                yield batch
                batch, size = [], 0
            batch.append(rel)
            size += nbytes
        if batch:
            yield batch

    def _read(self, rel: str) -> bytes | None:
        """The file's bytes when it is as last seen; None when it changed, went, or cannot
        be opened (left in the inbox, with one warning)."""
        try:
            with open(self.inbox / rel, "rb") as f:
                data = f.read()
                info = os.fstat(f.fileno())
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(f"{one_line(rel)} cannot be read ({exc.strerror}); left in the inbox")
            self.unreadable[rel] = self.seen[rel].identity  # not tried again as it is
            return None
        if (info.st_size, info.st_mtime_ns) != self.seen[rel].identity:
            self.seen[rel] = _Seen((info.st_size, info.st_mtime_ns), time.monotonic())
            return None
        return data

    def _sort(self, batch: list[str]) -> int:
        """Label and place a batch of settled files; returns how many must wait longer."""
        started = time.monotonic()  # how long each was unchanged is judged at its read
        read = {rel: data for rel in batch if (data := self._read(rel)) is not None}
        names = list(read)
        predictions = self.predictor.predict([read[n] for n in names], names=names)
        waiting = sum(rel not in read and self.unreadable.get(rel) != self.seen[rel].identity
                      for rel in batch)
        placed, taken = [], set()
        for rel, prediction in zip(names, predictions, strict=True):
            stable = started - self.seen[rel].since
            if prediction.error is not None and stable < ERROR_SETTLES * self.settle:
                waiting += 1  # perhaps still being written: give it time
                continue
            entry = self._entry(rel, read[rel], prediction, taken)
            placed.append((entry, read[rel], prediction))
        if placed:
            self.journal.place([(entry, data) for entry, data, _ in placed], self.csv_log)
        for entry, _, prediction in placed:
            self.summary.add(entry.dest)
            what = (f"unreadable: {prediction.error}" if prediction.error
                    else f"{prediction.label}: {prediction.reason}" if prediction.reason
                    else f"{prediction.label} {prediction.confidence:.2f}")
            log.info(f"{one_line(entry.src)} -> {one_line(entry.dest)} ({one_line(what)})")
        return waiting

    def _entry(self, rel: str, data: bytes, prediction: Prediction, taken: set[str]) -> Entry:
        """The journal entry of a photo to sort, its destination not in `taken` (the batch's
        other photos), which it joins."""
        sha256 = hashlib.sha256(data).hexdigest()
        size, mtime = self.seen[rel].identity
        dest = free_name(self.into, folder_for(prediction), Path(rel).name, sha256, taken)
        taken.add(dest)
        row = {"time": datetime.now().isoformat(sep=" ", timespec="seconds"),
               "label": prediction.label, "probabilities": prediction.probabilities,
               "reason": prediction.error or prediction.reason}
        return Entry(rel, size, mtime, sha256, dest, move=self.move, row=row)


def watch(inbox: str | Path, model: str | Path | Predictor, into: str | Path, *,
          move: bool = False, once: bool = False, settle: float = 1.0, poll: bool = False,
          runtime: str = "auto", min_confidence: float | None = None,
          stop: threading.Event | None = None, verbose: bool = True) -> Summary:
    """Sort the photos arriving in `inbox` into `into` (see the module), until `stop` is
    set, or with `once` until the files there when it starts are sorted.

    Args:
        inbox: the folder photos arrive in (searched recursively).
        model: a run folder, a bundle folder, a built-in name or a `Predictor`.
        into: the SORTED folder: `<class>/`, `_review/<why>/`, `_errors/`, `watch.csv`.
        move: delete each photo from the inbox once it is safely sorted. Defaults to False.
        once: sort what is there (waiting for files still being written), then return.
            Defaults to False.
        settle: seconds a file's size and mtime must stay unchanged. Defaults to 1.0.
        poll: rescan every `settle` seconds instead of waiting for file-system events.
            Defaults to False (events, or polling where they cannot be watched).
        runtime, min_confidence: as for `pawnet.load`.
        stop: set it to stop, after the photo being sorted. Defaults to None: never.
        verbose: log a line per photo and the summary. Defaults to True.

    Returns:
        The `Summary` of what was sorted (including what a killed watch left half done).

    Raises:
        DataError: no inbox; a damaged journal; another watch sorting into `into`.
        ConfigError: folders inside one another; a class named like pawnet's folders.
        BundleError: the model cannot be loaded.
    """
    inbox, into = check_folders(Path(inbox), Path(into))
    if settle < 0:
        raise ConfigError(f"--settle is in seconds, 0 or more; received: {settle}")
    with logs.verbosity(verbose):
        predictor = load(model, runtime=runtime, min_confidence=min_confidence)
        _check_classes(predictor.classes)
        into.mkdir(parents=True, exist_ok=True)
        journal, csv_log = Journal(into, inbox), CsvLog(into, predictor.classes)
        try:
            finished = journal.open(csv_log)
            sorter = Sorter(inbox, into, predictor, journal, csv_log, move=move,
                            settle=settle)
            sorter.stop = stop = stop or threading.Event()
            for entry in finished:
                sorter.summary.add(entry.dest)
            _loop(sorter, once, stop, poll)
        finally:
            journal.close()
        log.info(sorter.summary.line())
    return sorter.summary


def _check_classes(classes: list[str]) -> None:
    for name in classes:
        if name in (REVIEW, ERRORS) or name.startswith(".") or name == FOLDER:
            raise ConfigError(f"the model has a class named {one_line(name)}, which is the "
                              "name of a folder pawnet watch keeps for itself. Try: a model "
                              "trained with that class folder renamed")


def _loop(sorter: Sorter, once: bool, stop: threading.Event, poll: bool) -> None:
    """Step until stopped, or with `once` until nothing there at the start is waiting."""
    wake = threading.Event()
    observer = None if once else _observe(sorter.inbox, wake, poll, sorter.settle)
    only = set(sorter.scan()) if once else None
    how = ("once" if once else "polling" if observer is None else "watching events")
    log.info(f"Sorting {one_line(sorter.inbox)} into {one_line(sorter.into)} ({how}"
             f"{', moving' if sorter.move else ''})")
    try:
        while not stop.is_set():
            waiting = sorter.step(only)
            if once and not waiting:
                return
            rescan = RESCAN_SECONDS if observer is not None and not waiting else sorter.settle
            _wait(wake, stop, max(rescan, 0.05))
    finally:
        if observer is not None:
            observer.stop()
            observer.join()


def _observe(inbox: Path, wake: threading.Event, poll: bool, settle: float):
    """A started watchdog observer that sets `wake` on any change in the inbox, or None
    (`poll`, or events cannot be watched here: the loop rescans instead)."""
    if poll:
        return None
    observer = Observer()
    try:
        observer.schedule(_Waker(wake), str(inbox), recursive=True)
        observer.start()
    except OSError as exc:
        log.warning(f"file-system events cannot be watched in {one_line(inbox)} "
                    f"({one_line(exc)}); rescanning every {max(settle, 0.05):g} s instead")
        return None
    return observer


MIN_GAP = 0.1  # seconds between scans woken by events (a file being written sends many)


def _wait(wake: threading.Event, stop: threading.Event, seconds: float) -> None:
    """Until `seconds` pass, `stop` is set, or `wake` is (but not sooner than MIN_GAP)."""
    started = time.monotonic()
    while not stop.is_set():
        left = seconds - (time.monotonic() - started)
        if left <= 0:
            return
        if wake.wait(min(left, 0.25)) and time.monotonic() - started >= MIN_GAP:
            wake.clear()
            return
        if wake.is_set():
            time.sleep(max(0.0, MIN_GAP - (time.monotonic() - started)))
