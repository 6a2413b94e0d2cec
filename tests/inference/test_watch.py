"""`pawnet watch`: every file of an inbox sorted into exactly one place (its class,
`_review/<why>/` or `_errors/`), with one CSV row each, exactly once across runs, only once
completely written, picked up while watching (events, polling, and polling when events fail),
and neither lost nor duplicated when the watch is SIGKILLed at random moments and started
again (`benchmarks/watch_crash.py` at toy size). The journal's recovery is checked state by
state on real photo bytes without a model."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
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
from pawnet.errors import DataError
from pawnet.inference import watch as watch_module
from pawnet.inference.journal import FOLDER, CsvLog, Entry, Journal
from pawnet.inference.watch import REVIEW_FOLDERS, folder_for, skipped, watch

SETTLE = "0.05"


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
    return [json.loads(line) for line in (into / FOLDER / "journal.jsonl").read_text()
            .splitlines()]


def test_a_copy_killed_half_way_is_removed_and_redone(tmp_path):
    journal, log, entry, data = _placed(tmp_path)
    into = journal.into
    # the state after a kill mid-copy: the intent, a half-written temporary file, no dest
    lines = (into / FOLDER / "journal.jsonl").read_text().splitlines()
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
    lines = (into / FOLDER / "journal.jsonl").read_text().splitlines()
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
            assert again.sorted == {entry.src: entry.identity}
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
    assert again.sorted == {entry.src: entry.identity}
    assert path.read_bytes().endswith(b"}\n")  # compacted: nothing torn to append after
    with open(journal.into / "watch.csv", "ab") as f:
        f.write(b"2025-01-01,half a ro")  # a torn row
    _reopen(journal, log)
    assert len(_rows(journal.into)) == 1
    path.write_text("garbage\n" + path.read_text())
    before = _listing(tmp_path)
    with pytest.raises(DataError, match=r"damaged at line 1 of 2.*Try: move .pawnet-watch"):
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
        patched.setattr("pawnet.inference.journal.os.replace", full)
        with pytest.raises(DataError, match=r"cannot write .*b.jpg \(No space left on device\)"
                                            r"\. Try: free space"):
            again.place([(second, data)], log)
    again.close()
    assert (inbox / "b.jpg").read_bytes() == data  # not done: still in the inbox
    _reopen(journal, log)
    assert _sorted_files(into) == {entry.dest: entry.sha256}  # no partial copy left
    assert [r["file"] for r in _rows(into)] == [entry.src]


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
    left = _listing(inbox)
    assert left == ([e for e in before if e[0] in (".DS_Store", "big.jpg.part")] if move
                    else before)
    assert "Sorted " in result.stderr and "unreadable 2" in result.stderr


def test_a_second_run_sorts_nothing_and_a_new_photo_alone(tmp_path, predictor):
    inbox, into = tmp_path / "inbox", tmp_path / "sorted"
    _inbox(inbox, per_class=2)
    first = watch(inbox, predictor, into, once=True, settle=0.05)
    placed, rows = _sorted_files(into), _rows(into)
    assert first.counts.total() == len(rows) == len(placed) == 9
    second = watch(inbox, predictor, into, once=True, settle=0.05)
    assert second.counts.total() == 0
    assert _sorted_files(into) == placed and _rows(into) == rows
    new = real_photos("dog", 1, split="test", dataset=SHARED_DATA / "tongpython")[0]
    shutil.copy(new, inbox / new.name)
    third = watch(inbox, predictor, into, once=True, settle=0.05)
    assert third.counts.total() == 1
    added = set(_sorted_files(into)) - set(placed)
    assert len(added) == 1 and _rows(into)[:-1] == rows
    assert _rows(into)[-1]["file"] == new.name and _rows(into)[-1]["destination"] in added
    changed = real_photos("cat", 1, split="test")[0].name  # edited since it was sorted
    (inbox / changed).write_bytes((inbox / changed).read_bytes() + b"\0")
    assert watch(inbox, predictor, into, once=True, settle=0.05).counts.total() == 1
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
        monkeypatch.setattr(watch_module, "Observer", _NoEvents)
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
