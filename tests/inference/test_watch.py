"""`pawnet watch`: every file of an inbox sorted into exactly one place (its class,
`_review/<why>/` or `_errors/`), with one CSV row each, exactly once across runs, only once
completely written, picked up while watching (events, polling, and polling when events fail),
and neither lost nor duplicated when the watch is SIGKILLed at random moments and started
again (`benchmarks/watch_crash.py` at toy size); a name too long, or one the disk refuses,
neither stops the watch nor is retried every scan, a touched photo is not copied again,
`--move` never deletes what went to `_errors/`, and the journal stays small without a
restart. The journal's recovery is checked state by
state on real photo bytes without a model."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import SHARED_DATA, invoke, real_photos

import pawnet
from pawnet import storage
from pawnet.errors import DataError
from pawnet.inference import journal as journal_module
from pawnet.inference import watch as watch_module
from pawnet.inference import watch_events, watch_files
from pawnet.inference.journal import FOLDER, Entry, Journal
from pawnet.inference.watch import REVIEW_FOLDERS, Sorter, folder_for, skipped, watch
from pawnet.inference.watch_files import free_name
from pawnet.inference.watch_log import CsvLog

SETTLE = "0.1"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _inbox(folder: Path, per_class: int = 4) -> dict[str, bytes]:
    """Real cats and dogs, a photo of no animal, a CIFAR image, one in a sub-folder, a
    truncated photo and a text file; returns {path in the inbox: bytes}."""
    files = {p.name: p.read_bytes() for label in ("cat", "dog")
             for p in real_photos(label, per_class, split="test")}
    files["street.jpg"] = sorted((SHARED_DATA / "ood_photos").glob("*.jpg"))[0].read_bytes()
    files["tiny.jpg"] = sorted((SHARED_DATA / "ood" / "truck").glob("*.jpg"))[0].read_bytes()
    files["sub/cat.1000.jpg"] = files["cat.1000.jpg"]  # the same name twice
    files["truncated.jpg"] = files["dog.1001.jpg"][:2000]
    files["notes.txt"] = b"not a photo\n"
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def _sorted_files(into: Path) -> dict[str, str]:
    """{path in SORTED: SHA-256} of every file but the journal and the log."""
    return {p.relative_to(into).as_posix(): _sha(p.read_bytes()) for p in into.rglob("*")
            if p.is_file() and FOLDER not in p.relative_to(into).parts
            and p.name != "watch.csv"}


def _rows(into: Path) -> list[dict]:
    with open(into / "watch.csv", newline="") as f:
        return list(csv.DictReader(f))


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def predictor(transfer_run):
    return pawnet.load(transfer_run)


# --- unit: names, folders, the journal's recovery (real photo bytes, no model) -------------

def test_names_still_being_written_are_skipped():
    for name in (".DS_Store", "a.jpg.part", "a.tmp", "~a.jpg", "a.crdownload", ".a.jpg"):
        assert skipped(name), name
    for name in ("a.jpg", "cat.4142(1).jpg", "notes.txt", "a.part.jpg"):
        assert not skipped(name), name


@pytest.mark.parametrize("case", ["missing", "file", "same", "inside", "around"])
def test_folders_that_cannot_work_give_one_error_line(tmp_path, case):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "a.jpg").write_bytes(real_photos("cat", 1)[0].read_bytes())
    given, into, message = {
        "missing": (tmp_path / "nowhere", tmp_path / "sorted", "does not exist"),
        "file": (tmp_path / "a.jpg", tmp_path / "sorted", "is a file, not a folder"),
        "same": (inbox, inbox, "inside one another"),
        "inside": (inbox, inbox / "sorted", "inside one another"),
        "around": (inbox, tmp_path, "inside one another"),
    }[case]
    before = _listing(tmp_path)
    result = invoke("watch", given, "--model", "no-such-model", "--into", into, "--once")
    assert result.exit_code == 2, result.output
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0]
    assert "Try:" in errors[0]
    assert _listing(tmp_path) == before  # nothing written, nothing moved


def test_a_model_that_cannot_load_gives_one_error_line(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(real_photos("cat", 1)[0], inbox)
    result = invoke("watch", inbox, "--model", tmp_path, "--into", tmp_path / "s", "--once")
    assert result.exit_code == 2 and result.stderr.startswith("error:"), result.output
    assert result.stderr.count("\n") == 1 and not (tmp_path / "s").exists()
    assert (inbox / real_photos("cat", 1)[0].name).exists()


def _placed(tmp_path: Path, move: bool = False) -> tuple[Journal, CsvLog, Entry, bytes]:
    """A journal in tmp_path/sorted with one real photo placed from tmp_path/inbox."""
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir(exist_ok=True)
    photo = real_photos("cat", 1)[0]
    data = photo.read_bytes()
    (inbox / photo.name).write_bytes(data)
    info = (inbox / photo.name).stat()
    journal, log = Journal(into, inbox), CsvLog(into, ["cat", "dog"])
    assert journal.open(log) == []
    entry = Entry(photo.name, info.st_size, info.st_mtime_ns, _sha(data), f"cat/{photo.name}",
                  move=move, row={"time": "t", "label": "cat",
                                  "probabilities": {"cat": 0.9, "dog": 0.1}, "reason": None})
    journal.place([(entry, data)], log)
    journal.close()
    return journal, log, entry, data


def _reopen(journal: Journal, log: CsvLog) -> Journal:
    again = Journal(journal.into, journal.inbox)
    again.open(log)
    again.close()
    return again


def _journal_lines(into: Path) -> list[dict]:
    """The journal's records after its `inbox` line."""
    lines = [json.loads(line) for line in (into / FOLDER / "journal.jsonl").read_text()
             .splitlines()]
    assert lines[0]["op"] == "inbox"
    return lines[1:]


def _identities(journal: Journal) -> dict[str, tuple[int, int]]:
    return {src: entry.identity for src, entry in journal.sorted.items()}


def test_a_copy_killed_half_way_is_removed_and_redone(tmp_path):
    journal, log, entry, data = _placed(tmp_path)
    into = journal.into
    # the state after a kill mid-copy: the intent, a half-written temporary file, no dest
    lines = (into / FOLDER / "journal.jsonl").read_text().splitlines()[1:]  # after inbox
    (into / FOLDER / "journal.jsonl").write_text(lines[0] + "\n")
    (into / entry.dest).rename(into / json.loads(lines[0])["tmp"])
    (into / json.loads(lines[0])["tmp"]).write_bytes(data[: len(data) // 2])
    (into / "watch.csv").write_text(",".join(log.header) + "\n")
    again = _reopen(journal, log)
    assert _sorted_files(into) == {}  # the partial copy is gone
    assert again.sorted == {} and _journal_lines(into) == []  # to be sorted again
    assert _rows(into) == []


@pytest.mark.parametrize("move", [False, True])
def test_a_copy_killed_before_done_is_finished_once(tmp_path, move):
    journal, log, entry, data = _placed(tmp_path, move=move)
    into, inbox = journal.into, journal.inbox
    # the state after a kill between the rename and `done`: the photo in place, no row,
    # and with --move the source still in the inbox
    lines = (into / FOLDER / "journal.jsonl").read_text().splitlines()[1:]  # after inbox
    (into / FOLDER / "journal.jsonl").write_text(lines[0] + "\n")
    (into / "watch.csv").write_text(",".join(log.header) + "\n")
    if move:
        (inbox / entry.src).write_bytes(data)
    for _ in range(2):  # a second start changes nothing
        again = _reopen(journal, log)
        assert _sorted_files(into) == {entry.dest: entry.sha256}
        rows = _rows(into)
        assert [(r["file"], r["destination"], r["sha256"], r["cat"]) for r in rows] == [
            (entry.src, entry.dest, entry.sha256, "0.900000")]
        assert (inbox / entry.src).exists() is not move
        if not move:
            assert _identities(again) == {entry.src: entry.identity}
            assert [r["op"] for r in _journal_lines(into)] == ["sorted"]
    if move:  # a new photo at the same path is not the one sorted: it stays
        (inbox / entry.src).write_bytes(data[:100])
        journal.path.write_text(lines[0] + "\n" + lines[1] + "\n")
        _reopen(journal, log)
        assert (inbox / entry.src).read_bytes() == data[:100]


def test_a_torn_last_line_is_ignored_and_a_damaged_one_refused(tmp_path):
    journal, log, entry, _ = _placed(tmp_path)
    path = journal.path
    with open(path, "ab") as f:
        f.write(b'{"op": "intent", "src": "x.j')  # killed mid-write
    again = _reopen(journal, log)
    assert _identities(again) == {entry.src: entry.identity}
    assert path.read_bytes().endswith(b"}\n")  # compacted: nothing torn to append after
    with open(journal.into / "watch.csv", "ab") as f:
        f.write(b"2025-01-01,half a ro")  # a torn row
    _reopen(journal, log)
    assert len(_rows(journal.into)) == 1
    path.write_text("garbage\n" + path.read_text())
    before = _listing(tmp_path)
    with pytest.raises(DataError, match=r"damaged at line 1 of 3.*Try: move .pawnet-watch"):
        _reopen(journal, log)
    assert _listing(tmp_path) == before


def test_a_second_watch_on_the_same_folder_is_refused(tmp_path):
    journal, log, _, _ = _placed(tmp_path)
    first = Journal(journal.into, journal.inbox)
    first.open(log)
    try:
        with pytest.raises(DataError, match=r"another pawnet watch.*Try: stop it first"):
            Journal(journal.into, journal.inbox).open(log)
    finally:
        first.close()


def test_a_full_disk_stops_with_one_error_and_loses_nothing(tmp_path, monkeypatch):
    journal, log, entry, data = _placed(tmp_path, move=True)
    inbox, into = journal.inbox, journal.into
    (inbox / "b.jpg").write_bytes(data)
    info = (inbox / "b.jpg").stat()
    second = Entry("b.jpg", info.st_size, info.st_mtime_ns, entry.sha256, "cat/b.jpg",
                   move=True, row=entry.row)

    def full(*args):
        raise OSError(28, "No space left on device")

    again = Journal(into, inbox)
    again.open(log)
    with monkeypatch.context() as patched:
        patched.setattr("pawnet.inference.watch_files.os.link", full)
        with pytest.raises(DataError, match=r"cannot write .*b.jpg \(No space left on device\)"
                                            r"\. Try: free space"):
            again.place([(second, data)], log)
    again.close()
    assert (inbox / "b.jpg").read_bytes() == data  # not done: still in the inbox
    _reopen(journal, log)
    assert _sorted_files(into) == {entry.dest: entry.sha256}  # no partial copy left
    assert [r["file"] for r in _rows(into)] == [entry.src]


def test_a_row_lost_to_a_kill_is_written_even_if_the_source_was_replaced(tmp_path):
    """Killed between `done` and the CSV row (with --move), then a new photo put at the
    source's path before the restart: the sorted photo still gets its row, the new one
    stays in the inbox."""
    journal, log, entry, data = _placed(tmp_path, move=True)
    into, inbox = journal.into, journal.inbox
    lines = journal.path.read_text().splitlines()
    journal.path.write_text("\n".join(lines[:3]) + "\n")  # inbox, intent, done
    (into / "watch.csv").write_text(",".join(log.header) + "\n")
    (inbox / entry.src).write_bytes(data[:100])
    _reopen(journal, log)
    assert [(r["file"], r["destination"], r["sha256"]) for r in _rows(into)] == [
        (entry.src, entry.dest, entry.sha256)]
    assert (inbox / entry.src).read_bytes() == data[:100]
    assert _sorted_files(into) == {entry.dest: entry.sha256}


def test_another_inbox_or_another_models_log_is_refused(tmp_path):
    journal, log, _, _ = _placed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    before = _listing(tmp_path)
    with pytest.raises(DataError, match=r"sorted from .*inbox, not from .*other\. Try: --into"):
        Journal(journal.into, other).open(log)
    with pytest.raises(DataError, match=r"has the columns .*Try: --into another folder"):
        _reopen(journal, CsvLog(journal.into, ["cat", "dog", "bird"]))
    assert _listing(tmp_path) == before


def test_an_intent_the_disk_could_not_take_does_not_stop_the_next_start(tmp_path):
    """A journal from before names were shortened: an intent whose temporary and
    destination names are too long for the disk is undone, and the watch starts."""
    journal, log, entry, _ = _placed(tmp_path)
    long = {**_journal_lines(journal.into)[0], "op": "intent", "src": "b.jpg",
            "dest": "cat/" + "b" * 300 + ".jpg", "tmp": "cat/." + "b" * 300 + ".pawnet-tmp",
            "move": False, "row": {}}
    with open(journal.path, "a") as f:
        f.write(json.dumps(long) + "\n")
    again = _reopen(journal, log)
    assert _identities(again) == {entry.src: entry.identity}
    assert [r["src"] for r in _journal_lines(journal.into)] == [entry.src]


def test_a_name_too_long_for_the_disk_is_shortened_keeping_its_extension(tmp_path):
    sha = "4dee0ac7" + "0" * 56
    for name, ext in (("é" * 126 + ".jpg", ".jpg"), ("a" * 300 + ".jpeg", ".jpeg"),
                      ("x." + "y" * 300, "")):  # no extension but the name's tail
        first = free_name(tmp_path, "cat", name, sha)
        (tmp_path / first).parent.mkdir(exist_ok=True)
        (tmp_path / first).write_bytes(b"")  # the name is taken, and the disk took it
        second = free_name(tmp_path, "cat", name, sha)
        head = second.removesuffix(ext)
        last = free_name(tmp_path, "cat", name, sha,
                         taken={second, *(f"{head}-{n}{ext}" for n in range(2, 9999))})
        for found in (first, second, last):
            assert len(os.fsencode(Path(found).name)) <= 255, found
            assert Path(found).name.isprintable()  # no character cut in two
        assert second.endswith(f"-4dee0ac7{ext}") and last == f"{head}-9999{ext}"
    assert free_name(tmp_path, "dog", "a.jpg", sha) == "dog/a.jpg"  # short names as they are


def test_a_copy_never_replaces_a_file_put_at_its_destination_meanwhile(tmp_path):
    photo = real_photos("cat", 1)[0].read_bytes()
    dest = tmp_path / "a.jpg"
    dest.write_bytes(b"another program's file")
    tmp = watch_files.temp_name(dest)
    with pytest.raises(FileExistsError):
        watch_files.copy_into(photo, tmp, dest)
    assert dest.read_bytes() == b"another program's file" and not tmp.exists()
    watch_files.copy_into(photo, tmp, tmp_path / "b.jpg")
    assert (tmp_path / "b.jpg").read_bytes() == photo and sorted(tmp_path.iterdir()) == [
        dest, tmp_path / "b.jpg"]


def test_the_journal_is_rewritten_durably(tmp_path, monkeypatch):
    journal, log, _, _ = _placed(tmp_path)
    synced = []
    real = os.fsync
    monkeypatch.setattr(storage.os, "fsync", lambda fd: synced.append(
        os.path.isdir(f"/proc/self/fd/{fd}")) or real(fd))
    _reopen(journal, log)
    assert synced == [False, True]  # the new journal, then its folder
    synced.clear()
    storage.atomic_write_bytes(tmp_path / "a.txt", b"a")
    assert synced == [] and (tmp_path / "a.txt").read_bytes() == b"a"  # as before


# --- with a model --------------------------------------------------------------------------

@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_once_sorts_every_file_into_exactly_one_place(tmp_path, transfer_run, move):
    """Copied with the model's own minimum confidence (into class folders), moved with one
    it seldom reaches (to `_review/unsure/`)."""
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    files = _inbox(inbox)
    (inbox / ".DS_Store").write_bytes(b"\0" * 10)  # skipped names stay where they are
    (inbox / "big.jpg.part").write_bytes(files["cat.1001.jpg"][:500])
    before = _listing(inbox)
    confidence = ["--min-confidence", "0.99"] if move else []
    predictor = pawnet.load(transfer_run, min_confidence=0.99 if move else None)
    expected = {rel: folder_for(p) for rel, p in zip(
        files, predictor.predict(list(files.values()), names=list(files)), strict=True)}
    result = invoke("watch", inbox, "--model", transfer_run, "--into", into, "--once",
                    "--settle", SETTLE, *confidence, *(["--move"] if move else []))
    assert result.exit_code == 0, result.output
    placed = _sorted_files(into)
    assert sorted(placed.values()) == sorted(_sha(d) for d in files.values())
    rows = _rows(into)
    assert list(rows[0]) == ["time", "file", "label", *predictor.classes, "reason",
                             "destination", "sha256"]
    assert sorted(r["file"] for r in rows) == sorted(files)
    for row in rows:
        assert row["destination"].rpartition("/")[0] == expected[row["file"]]
        assert placed[row["destination"]] == row["sha256"] == _sha(files[row["file"]])
    assert {r["destination"] for r in rows} == set(placed)
    assert {expected["truncated.jpg"], expected["notes.txt"]} == {"_errors"}
    errors = {r["file"]: r["reason"] for r in rows if r["destination"].startswith("_errors")}
    assert "truncated" in errors["truncated.jpg"] and "not an image" in errors["notes.txt"]
    folder = expected["cat.1000.jpg"]  # two files of that name: neither overwritten
    assert {r["destination"] for r in rows if r["file"].endswith("cat.1000.jpg")} == {
        f"{folder}/cat.1000.jpg", f"{folder}/cat.1000-{_sha(files['cat.1000.jpg'])[:8]}.jpg"}
    review = {f for f in expected.values() if f.startswith("_review/")}
    assert review <= {f"_review/{name}" for name in REVIEW_FOLDERS.values()}
    used = set(expected.values())
    assert "_review/unsure" in used if move else used & set(predictor.classes)
    left = _listing(inbox)  # with --move, files sent to _errors/ are copied: perhaps a
    # writer paused mid-photo and will finish it; deleting it would lose the photo
    assert left == ([e for e in before if e[0] in (".DS_Store", "big.jpg.part", "notes.txt",
                                                   "truncated.jpg")] if move else before)
    assert "Sorted " in result.stderr and "unreadable 2" in result.stderr


def test_a_second_run_sorts_nothing_and_a_new_photo_alone(tmp_path, predictor):
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    _inbox(inbox, per_class=2)
    first = watch(inbox, predictor, into, once=True, settle=0.1)
    placed, rows = _sorted_files(into), _rows(into)
    assert first.counts.total() == len(rows) == len(placed) == 9
    second = watch(inbox, predictor, into, once=True, settle=0.1)
    assert second.counts.total() == 0
    assert _sorted_files(into) == placed and _rows(into) == rows
    new = real_photos("dog", 1, split="test", dataset=SHARED_DATA / "tongpython")[0]
    shutil.copy(new, inbox / new.name)
    third = watch(inbox, predictor, into, once=True, settle=0.1)
    assert third.counts.total() == 1
    added = set(_sorted_files(into)) - set(placed)
    assert len(added) == 1 and _rows(into)[:-1] == rows
    assert _rows(into)[-1]["file"] == new.name and _rows(into)[-1]["destination"] in added
    changed = real_photos("cat", 1, split="test")[0].name  # edited since it was sorted
    (inbox / changed).write_bytes((inbox / changed).read_bytes() + b"\0")
    assert watch(inbox, predictor, into, once=True, settle=0.1).counts.total() == 1
    assert _rows(into)[-1]["file"] == changed and len(_sorted_files(into)) == len(placed) + 2


def test_a_file_written_slowly_is_sorted_only_once_complete(tmp_path, predictor):
    """A photo written half, then (after more than `settle`) the rest: not sorted half
    (it does not decode), and `--once` waits for it; a text file appended to slowly is
    sorted whole, and a photo rewritten faster than `settle` only as last written (its size
    and mtime keep changing)."""
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photo = real_photos("cat", 1, split="test")[0].read_bytes()
    text = b"".join(f"line {i}\n".encode() for i in range(12))
    versions = [p.read_bytes() for p in real_photos("dog", 5, split="test")]

    def rewrite() -> None:
        for data in versions:
            (inbox / "again.jpg").write_bytes(data)  # whole each time, so it decodes
            time.sleep(0.15)

    def write_slowly() -> None:
        with open(inbox / "slow.jpg", "wb") as f:
            f.write(photo[: len(photo) // 2])
            f.flush()
            time.sleep(0.8)  # > settle (0.3), < the 1.5 s an undecodable file is given
            f.write(photo[len(photo) // 2 :])
        with open(inbox / "log.txt", "wb") as f:
            for i in range(12):
                f.write(text[i * 7 : (i + 1) * 7] if i < 11 else text[77:])
                f.flush()
                time.sleep(0.1)  # < settle: unsettled until the end
        (inbox / "late.jpg").write_bytes(photo)  # after --once started: for the next run

    writers = [threading.Thread(target=write_slowly), threading.Thread(target=rewrite)]
    for writer in writers:
        writer.start()
    time.sleep(0.1)
    (inbox / "log.txt").touch()  # there when --once starts: waited for
    summary = watch(inbox, predictor, into, once=True, settle=0.3)
    for writer in writers:
        writer.join()
    assert summary.counts.total() == 3
    placed = _sorted_files(into)
    assert sorted(placed.values()) == sorted([_sha(photo), _sha(text), _sha(versions[-1])])
    assert next(p for p, s in placed.items() if s == _sha(photo)).startswith(
        (*predictor.classes, "_review"))
    assert placed["_errors/log.txt"] == _sha(text)
    assert (inbox / "late.jpg").exists() and "late.jpg" not in {r["file"] for r in _rows(into)}


def test_slow_labelling_is_not_time_a_file_stood_still(tmp_path, predictor, monkeypatch):
    """A half-written photo read once it settled, while labelling it takes longer than an
    undecodable file is given: the time counted is up to its read, so it is not called
    unreadable; its writer finishes meanwhile, and it is sorted whole."""
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photo = real_photos("dog", 1, split="test")[0].read_bytes()
    (inbox / "a.jpg").write_bytes(photo[: len(photo) // 2])
    label, calls = predictor.predict, []

    def slowly(sources, names=None, **options):
        if not calls:
            time.sleep(6 * 0.1)  # > ERROR_SETTLES settles
            (inbox / "a.jpg").write_bytes(photo)  # the writer is done meanwhile
        calls.append(names)
        return label(sources, names=names, **options)

    monkeypatch.setattr(predictor, "predict", slowly)
    watch(inbox, predictor, into, once=True, settle=0.1)
    assert len(calls) == 2
    placed = _sorted_files(into)
    assert list(placed.values()) == [_sha(photo)] and not next(iter(placed)).startswith("_e")


def _start(inbox: Path, into: Path, predictor, **options):
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(inbox, predictor, into),
                              kwargs={"settle": 0.2, "stop": stop, **options})
    thread.start()
    return stop, thread


def _wait_for_rows(into: Path, n: int, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if (into / "watch.csv").exists() and len(_rows(into)) >= n:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not sorted in {seconds} s: {_sorted_files(into)}")


class _NoEvents:
    """An observer that cannot start, as where inotify's watches are used up."""

    def schedule(self, *args, **kwargs) -> None:
        pass

    def start(self) -> None:
        raise OSError(28, "inotify watch limit reached")


@pytest.mark.parametrize("how", ["events", "poll", "events fail"])
def test_the_watch_picks_up_photos_dropped_in_later(tmp_path, predictor, monkeypatch,
                                                   caplog, how):
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    monkeypatch.setattr(watch_module, "RESCAN_SECONDS", 60.0)  # only an event wakes it
    if how == "events fail":
        monkeypatch.setattr(watch_events, "Observer", _NoEvents)
    stop, thread = _start(inbox, into, predictor, move=True, poll=how == "poll")
    try:
        time.sleep(0.5)
        photos = real_photos("dog", 3, split="test")
        for photo in photos:  # as a browser or a copy tool does: a temporary name, renamed
            (inbox / f"{photo.name}.part").write_bytes(photo.read_bytes())
            (inbox / f"{photo.name}.part").rename(inbox / photo.name)
        assert _wait_for_rows(into, 3, 20) < 10
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert sorted(_sha(p.read_bytes()) for p in photos) == sorted(_sorted_files(into).values())
    assert list(inbox.iterdir()) == []
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warned) is (how == "events fail") and all("inotify" in m for m in warned)


@pytest.mark.integration  # a process of its own
def test_sigterm_stops_the_watch_cleanly(tmp_path, transfer_run):
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pawnet.cli", "watch", str(inbox),
                             "--model", str(transfer_run), "--into", str(into),
                             "--settle", "0.1"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline().startswith("Sorting ")
        shutil.copy(real_photos("cat", 1, split="test")[0], inbox)
        _wait_for_rows(into, 1, 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert "Sorted 1 photos" in proc.stderr.read()


@pytest.mark.integration  # processes it kills
def test_killed_at_random_moments_no_photo_is_lost_or_duplicated(tmp_path, transfer_run):
    from watch_crash import crash_loop, ok, report
    from watch_crash import real_photos as distinct_photos

    result = crash_loop(str(transfer_run), distinct_photos(36), tmp_path, seed=1, settle=0.2,
                        pace=0.08, pause=0.5, kill_after=(0.2, 1.5), min_kills=9)
    print(report(result))
    assert ok(result), report(result) + "\n" + result["last_output"]
    assert result["kills"] >= 9 and result["sorted_by_killed"] > 0


def test_photos_with_names_too_long_for_the_temporary_name_are_sorted(tmp_path, predictor):
    """A 250-byte name (the disk takes 255): its temporary name once was 21 bytes longer,
    which stopped the watch at every start."""
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    photo = real_photos("cat", 1, split="test")[0].read_bytes()
    name = "c" * 246 + ".jpg"
    for folder in (inbox, inbox / "sub"):  # the second copy gets the SHA-256 added too
        folder.mkdir(parents=True)
        (folder / name).write_bytes(photo)
    assert watch(inbox, predictor, into, once=True, settle=0.1).counts.total() == 2
    rows = _rows(into)
    assert sorted(r["file"] for r in rows) == sorted([name, f"sub/{name}"])
    assert set(_sorted_files(into)) == {r["destination"] for r in rows}
    assert all(len(Path(r["destination"]).name) <= 255 for r in rows)


def test_a_file_that_cannot_be_written_is_left_once_and_the_rest_sorted(
        tmp_path, predictor, monkeypatch, caplog):
    """A name the disk refuses (as `:` on exFAT): one warning, not retried every scan, the
    other photos sorted, nothing left half-written; sorted once the disk takes it."""
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photos = real_photos("dog", 3, split="test")
    for photo in photos:
        shutil.copy(photo, inbox / photo.name)
    bad = photos[0].name
    link = os.link

    def refuse(src, dst, *args, **kwargs):
        if Path(dst).name == bad:
            raise OSError(errno.EINVAL, "Invalid argument")
        return link(src, dst, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(watch_files.os, "link", refuse)
        stop, thread = _start(inbox, into, predictor, poll=True)
        try:
            _wait_for_rows(into, 2, 20)
            time.sleep(1.0)  # five more scans
        finally:
            stop.set()
            thread.join(10)
    assert sorted(r["file"] for r in _rows(into)) == sorted(p.name for p in photos[1:])
    assert len(_sorted_files(into)) == 2  # no temporary file left
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and bad in warned[0] and "Try: rename the file" in warned[0]
    assert watch(inbox, predictor, into, once=True, settle=0.1).counts.total() == 1
    assert sorted(r["file"] for r in _rows(into)) == sorted(p.name for p in photos)


def test_a_touched_photo_is_not_copied_again(tmp_path, predictor):
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photo = real_photos("cat", 1, split="test")[0]
    shutil.copy(photo, inbox / photo.name)
    assert watch(inbox, predictor, into, once=True, settle=0.1).counts.total() == 1
    placed, rows = _sorted_files(into), _rows(into)
    info = (inbox / photo.name).stat()
    os.utime(inbox / photo.name, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))  # touch
    for _ in range(2):  # the new mtime is recorded: the second run does not even read it
        assert watch(inbox, predictor, into, once=True, settle=0.1).counts.total() == 0
        assert _sorted_files(into) == placed and _rows(into) == rows
    assert _journal_lines(into)[-1]["mtime"] == info.st_mtime_ns + 10**9


@pytest.mark.parametrize("move", [True, False], ids=["move", "copy, then deleted"])
def test_the_journal_stays_small_while_photos_pass_through(tmp_path, predictor, monkeypatch,
                                                           move):
    """No restart: sorted photos that leave the inbox are forgotten, and the journal is
    compacted once it doubles (here past 4 kB)."""
    monkeypatch.setattr(journal_module, "COMPACT_FLOOR", 4096)
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    journal, log = Journal(into, inbox), CsvLog(into, predictor.classes)
    journal.open(log)
    sorter = Sorter(inbox, into, predictor, journal, log, move=move, settle=0.1)
    photos, sizes = real_photos("cat", 12, split="test") + real_photos("dog", 12, "test"), []
    try:
        for start in range(0, len(photos), 4):
            for photo in photos[start : start + 4]:
                shutil.copy(photo, inbox / photo.name)
            while sorter.step():
                time.sleep(0.05)
            for path in [] if move else inbox.iterdir():  # the user takes them away
                path.unlink()
            sizes.append(journal.path.stat().st_size)
        sorter.step()
        assert journal.sorted == {} and list(inbox.iterdir()) == []
    finally:
        journal.close()
    assert len(_rows(into)) == len(_sorted_files(into)) == 24
    assert max(sizes) < 4096 + 4 * 1000, sizes  # uncompacted: about 600 B a photo


def test_move_copies_what_goes_to_errors_and_sorts_it_again_once_complete(tmp_path,
                                                                         predictor):
    """A writer that pauses mid-photo for longer than an undecodable file is given: the half
    is copied to `_errors/`, not moved, so the writer's file survives; finished, it is sorted
    (and moved) as the photo it is."""
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photo = real_photos("dog", 1, split="test")[0].read_bytes()
    with open(inbox / "a.jpg", "wb") as writer:
        writer.write(photo[:3000])
        writer.flush()
        first = watch(inbox, predictor, into, once=True, move=True, settle=0.1)
        assert first.counts == {"_errors": 1} and (inbox / "a.jpg").exists()
        assert watch(inbox, predictor, into, once=True, move=True, settle=0.1).counts == {}
        writer.write(photo[3000:])
    second = watch(inbox, predictor, into, once=True, move=True, settle=0.1)
    assert second.counts.total() == 1 and "_errors" not in second.counts
    assert list(inbox.iterdir()) == []
    assert sorted(_sorted_files(into).values()) == sorted([_sha(photo[:3000]), _sha(photo)])


@pytest.mark.parametrize("fails", ["mkdir", "fsync"], ids=["read-only SORTED", "full disk"])
def test_sorted_that_cannot_be_written_gives_one_error_line(tmp_path, transfer_run,
                                                            monkeypatch, fails):
    """(root ignores a read-only folder's mode, so the refusals are simulated)"""
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    shutil.copy(real_photos("cat", 1, split="test")[0], inbox)
    mkdir = os.mkdir

    def refuse_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(into)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return mkdir(path, *args, **kwargs)

    def refuse_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fails == "mkdir":
        monkeypatch.setattr(os, "mkdir", refuse_mkdir)
    else:
        monkeypatch.setattr(os, "fsync", refuse_fsync)
    result = invoke("watch", inbox, "--model", transfer_run, "--into", into, "--once",
                    "--settle", SETTLE)
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot write")
    assert ("Try: make the folder writable" if fails == "mkdir"
            else "Try: free space on its disk") in result.stderr
    assert len(list(inbox.iterdir())) == 1
    assert not into.exists() or _sorted_files(into) == {}


def test_once_gives_up_on_a_file_that_keeps_changing(tmp_path, predictor, monkeypatch,
                                                     caplog):
    monkeypatch.setattr(watch_module, "ONCE_GIVE_UP", 0.6)
    monkeypatch.setattr(watch_module, "ONCE_SETTLES", 1)
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photo = real_photos("cat", 1, split="test")[0]
    shutil.copy(photo, inbox / photo.name)
    done = threading.Event()

    def append() -> None:
        with open(inbox / "growing.log", "ab") as f:
            while not done.wait(0.03):
                f.write(b"line\n")
                f.flush()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        started = time.monotonic()
        summary = watch(inbox, predictor, into, once=True, settle=0.1)
        took = time.monotonic() - started
        assert writer.is_alive()  # returned while the file still changes
    finally:
        done.set()
        writer.join()
    assert summary.counts.total() == 1 and [r["file"] for r in _rows(into)] == [photo.name]
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "growing.log kept changing for 0.6 s" in warned[0]
    assert took < 5
