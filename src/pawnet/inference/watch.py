"""`pawnet watch`: sort the photos that arrive in an inbox folder into class folders,
unattended, each exactly once, whatever kills it.

A file is sorted once it is completely written: its size and mtime unchanged for `settle`
seconds and its bytes decoding as a photo (a file that will not decode is given
`ERROR_SETTLES` times as long before it is called unreadable, in case it is still being
written). Settled files are labelled in batches by the `Predictor`, then copied (or moved)
to `SORTED/<class>/`, `SORTED/_review/<why>/` (`unsure` and `neither`) or `SORTED/_errors/`
(always copied: a file that does not decode may still be being written), through the
journal of `pawnet.inference.journal`, which keeps `SORTED/watch.csv` in step.

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

from pawnet import logs
from pawnet.errors import ConfigError, DataError, one_line
from pawnet.inference.journal import FOLDER, Entry, Journal
from pawnet.inference.predictor import Prediction, Predictor, load
from pawnet.inference.watch_events import observe, wait
from pawnet.inference.watch_files import free_name
from pawnet.inference.watch_log import CsvLog
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
MIN_SETTLE = 0.1  # seconds; less would sort files between two writes of their writer
ONCE_GIVE_UP, ONCE_SETTLES = 60.0, 30  # --once: seconds (or settles, if longer) a file
# may keep changing before it is left for the next run


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
    first: float  # when the file was first seen


class Sorter:
    """Sorts the settled photos of an inbox, one scan at a time (`step`)."""

    def __init__(self, inbox: Path, into: Path, predictor: Predictor, journal: Journal,
                 csv_log: CsvLog, move: bool = False, settle: float = 1.0):
        self.inbox, self.into, self.predictor = inbox, into, predictor
        self.journal, self.csv_log, self.move, self.settle = journal, csv_log, move, settle
        self.seen: dict[str, _Seen] = {}
        # src -> identity of files left in the inbox until they change: cannot be read or
        # written where they go, or too large
        self.unreadable: dict[str, tuple[int, int]] = {}
        self.give_up: float | None = None  # --once: seconds a file may keep changing
        self.given_up: set[str] = set()
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
        self.journal.forget(set(found))
        self.unreadable = {rel: i for rel, i in self.unreadable.items() if rel in found}
        for rel, identity in sorted(found.items()):
            if (only is not None and rel not in only) or self._left(rel, identity):
                continue
            seen = self.seen.get(rel)
            if seen is None or seen.identity != identity:
                seen = self.seen[rel] = _Seen(identity, now, seen.first if seen else now)
            if now - seen.since >= self.settle:
                ready.append(rel)
            elif self.give_up is not None and now - seen.first >= self.give_up:
                log.warning(f"{one_line(rel)} kept changing for {self.give_up:g} s; left in "
                            "the inbox for the next run")
                self.given_up.add(rel)
            else:
                waiting += 1
        self.seen = {rel: s for rel, s in self.seen.items() if rel in found}
        for batch in self._batches(ready):
            if self.stop.is_set():
                break
            waiting += self._sort(batch)
        self.journal.maybe_compact()
        return waiting

    def _left(self, rel: str, identity: tuple[int, int]) -> bool:
        """Whether the file is not to be sorted as it is: sorted, or left in the inbox."""
        entry = self.journal.sorted.get(rel)
        return ((entry is not None and entry.identity == identity)
                or self.unreadable.get(rel) == identity or rel in self.given_up)

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
            self.seen[rel] = _Seen((info.st_size, info.st_mtime_ns), time.monotonic(),
                                   self.seen[rel].first)
            return None
        return data

    def _sort(self, batch: list[str]) -> int:
        """Label and place a batch of settled files; returns how many must wait longer."""
        started = time.monotonic()  # how long each was unchanged is judged at its read
        read = {rel: data for rel in batch if (data := self._read(rel)) is not None}
        waiting = sum(rel not in read and self.unreadable.get(rel) != self.seen[rel].identity
                      for rel in batch)
        hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in read.items()}
        names = [rel for rel in read if not self._same_again(rel, hashes[rel])]
        predictions = self.predictor.predict([read[n] for n in names], names=names)
        placed, taken = [], set()
        for rel, prediction in zip(names, predictions, strict=True):
            stable = started - self.seen[rel].since
            if prediction.error is not None and stable < ERROR_SETTLES * self.settle:
                waiting += 1  # perhaps still being written: give it time
                continue
            entry = self._entry(rel, hashes[rel], prediction, taken)
            placed.append((entry, read[rel], prediction))
        failed = (self.journal.place([(e, data) for e, data, _ in placed], self.csv_log)
                  if placed else [])
        for entry in failed:  # not tried again until it changes
            self.unreadable[entry.src] = entry.identity
        for entry, _, prediction in placed:
            if entry.state == "undone":  # failed, or its name was taken meanwhile: again
                waiting += entry not in failed
                continue
            self.summary.add(entry.dest)
            what = (f"unreadable: {prediction.error}" if prediction.error
                    else f"{prediction.label}: {prediction.reason}" if prediction.reason
                    else f"{prediction.label} {prediction.confidence:.2f}")
            log.info(f"{one_line(entry.src)} -> {one_line(entry.dest)} ({one_line(what)})")
        return waiting

    def _same_again(self, rel: str, sha256: str) -> bool:
        """Whether a sorted photo, found with a new size or mtime, still has the bytes that
        were sorted (touched): then it is recorded as it is now, not sorted again."""
        entry = self.journal.sorted.get(rel)
        if entry is None or entry.sha256 != sha256:
            return False
        self.journal.same_again(entry, self.seen[rel].identity)
        return True

    def _entry(self, rel: str, sha256: str, prediction: Prediction, taken: set[str]) -> Entry:
        """The journal entry of a photo to sort, its destination not in `taken` (the batch's
        other photos), which it joins. A file for `_errors` is copied even with --move: it
        may be a photo whose writer paused, still writing to it."""
        size, mtime = self.seen[rel].identity
        folder = folder_for(prediction)
        dest = free_name(self.into, folder, Path(rel).name, sha256, taken)
        taken.add(dest)
        row = {"time": datetime.now().isoformat(sep=" ", timespec="seconds"),
               "label": prediction.label, "probabilities": prediction.probabilities,
               "reason": prediction.error or prediction.reason}
        return Entry(rel, size, mtime, sha256, dest, move=self.move and folder != ERRORS,
                     row=row)


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
        settle: seconds a file's size and mtime must stay unchanged, at least MIN_SETTLE.
            Defaults to 1.0.
        poll: rescan every `settle` seconds instead of waiting for file-system events.
            Defaults to False (events, or polling where they cannot be watched).
        runtime, min_confidence: as for `pawnet.load`.
        stop: set it to stop, once the batch being sorted is done. Defaults to None:
            never.
        verbose: log a line per photo and the summary. Defaults to True.

    Returns:
        The `Summary` of what was sorted (including what a killed watch left half done).

    Raises:
        DataError: no inbox; a damaged journal, or another inbox's; another watch sorting
            into `into`; `into` cannot be written (read-only, full).
        ConfigError: folders inside one another; a class named like pawnet's folders;
            `settle` below MIN_SETTLE.
        BundleError: the model cannot be loaded.
    """
    inbox, into = check_folders(Path(inbox), Path(into))
    if not settle >= MIN_SETTLE:
        raise ConfigError(f"--settle is in seconds, {MIN_SETTLE:g} or more (a writer's pauses "
                          f"must not look settled); received: {settle}")
    with logs.verbosity(verbose):
        predictor = load(model, runtime=runtime, min_confidence=min_confidence)
        _check_classes(predictor.classes)
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
    observer = None if once else observe(sorter.inbox, wake, poll, sorter.settle)
    only = set(sorter.scan()) if once else None
    sorter.give_up = max(ONCE_GIVE_UP, ONCE_SETTLES * sorter.settle) if once else None
    how = ("once" if once else "polling" if observer is None else "watching events")
    log.info(f"Sorting {one_line(sorter.inbox)} into {one_line(sorter.into)} ({how}"
             f"{', moving' if sorter.move else ''})")
    try:
        while not stop.is_set():
            waiting = sorter.step(only)
            if once and not waiting:
                return
            rescan = RESCAN_SECONDS if observer is not None and not waiting else sorter.settle
            wait(wake, stop, rescan)
    finally:
        if observer is not None:
            observer.stop()
            observer.join()
