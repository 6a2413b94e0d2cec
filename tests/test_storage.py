import os
import stat
import subprocess
import sys

import pytest

from pawnet.errors import ConfigError
from pawnet.storage import (
    _HOST,
    MARKER,
    Output,
    atomic_path,
    atomic_write_text,
    cache_dir,
    check_output_file,
    check_output_folder,
    committed,
    next_run_dir,
    read_text_file,
)

BUNDLE = Output("bundle", r"model\.(txt|keras)", r"model\.(txt|keras)")


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PAWNET_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and cache_dir().is_dir()


def test_a_failed_write_leaves_the_old_file_and_no_litter(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "bundle"
    for version in ("one", "two"):
        with atomic_path(target, BUNDLE) as tmp:
            tmp.mkdir()
            (tmp / "model.txt").write_text(version)
    assert (target / "model.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "model.txt"]


def test_temporary_names_keep_the_suffixes(tmp_path):
    with atomic_path(tmp_path / "w.weights.h5") as tmp:
        assert tmp.name.endswith(".weights.h5") and tmp.name.startswith(".w-partial-")
        tmp.write_bytes(b"x")


def test_committed_recovers_a_folder_set_aside_by_a_killed_replace(tmp_path):
    assert committed(tmp_path / "last") is None
    (tmp_path / ".last-old").mkdir()  # died between the two renames
    assert committed(tmp_path / "last") == tmp_path / ".last-old"
    (tmp_path / "last").mkdir()
    assert committed(tmp_path / "last") == tmp_path / "last"


def test_leftovers_of_dead_processes_of_this_host_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".last-partial-{_HOST}-{dead}-ab12cd34"
    mine = tmp_path / f".last-partial-{_HOST}-{os.getpid()}-ab12cd34"  # a write in progress
    elsewhere = tmp_path / f".last-partial-otherhost-{dead}-ab12cd34"  # cannot be checked
    for folder in (stale, mine, elsewhere):
        folder.mkdir()
    with atomic_path(tmp_path / "last", BUNDLE) as tmp:
        tmp.mkdir()
    assert not stale.exists() and mine.exists() and elsewhere.exists()


def test_run_folders_are_numbered_and_never_reused(tmp_path):
    assert [next_run_dir(tmp_path / "train").name for _ in range(3)] == [
        "train", "train2", "train3"]
    assert next_run_dir(tmp_path / "eval").name == "eval"


def test_no_free_run_folder_is_a_clear_error(tmp_path, monkeypatch):
    def taken(self, **kwargs):
        raise FileExistsError(self)

    monkeypatch.setattr("pawnet.storage.Path.mkdir", taken)
    with pytest.raises(ConfigError, match=r"no free run folder.*Try: --out"):
        next_run_dir(tmp_path / "train")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mode):
    # before: files written through mkstemp were 0600 whatever the umask
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        with atomic_path(tmp_path / "bundle", BUNDLE) as tmp:
            tmp.mkdir()
            (tmp / "model.keras").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "bundle" / "model.keras").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o777 & ~umask


def _users_folder(path):
    (path / "taxes").mkdir(parents=True)
    (path / "notes.txt").write_text("keep")
    return path


def _untouched(path) -> bool:
    return (path / "notes.txt").read_text() == "keep" and (path / "taxes").is_dir()


def test_a_users_folder_is_never_replaced(tmp_path):
    # before: atomic_path renamed the folder aside and removed it, notes.txt and all
    target = _users_folder(tmp_path / "mydocs")
    with pytest.raises(ConfigError, match=r"mydocs already exists and is not a pawnet bundle "
                                          r"folder \(it holds notes.txt, taxes\).*Try: "), \
            atomic_path(target, BUNDLE) as tmp:
        tmp.mkdir()
        (tmp / "model.txt").write_text("new")
    assert _untouched(target) and sorted(p.name for p in tmp_path.iterdir()) == ["mydocs"]


def test_pawnets_own_folder_with_a_users_file_added_is_not_replaced(tmp_path):
    target = tmp_path / "bundle"
    with atomic_path(target, BUNDLE) as tmp:
        tmp.mkdir()
        (tmp / "model.txt").write_text("one")
    (target / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a pawnet bundle folder"), \
            atomic_path(target, BUNDLE) as tmp:
        tmp.mkdir()
    assert (target / "notes.txt").read_text() == "keep"


def test_another_kinds_folder_is_not_replaced(tmp_path):
    target = tmp_path / "out"
    with atomic_path(target, Output("export", r"model\.txt", r"model\.txt")) as tmp:
        tmp.mkdir()
        (tmp / "model.txt").write_text("export")
    with pytest.raises(ConfigError, match="not a pawnet bundle folder"):
        check_output_folder(target, BUNDLE)


def test_an_older_pawnets_unmarked_folder_is_recognised(tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "model.keras").write_bytes(b"x")
    assert check_output_folder(tmp_path / "bundle", BUNDLE) == tmp_path / "bundle"


def test_a_file_never_replaces_a_folder(tmp_path):
    target = _users_folder(tmp_path / "report.json")
    with pytest.raises(ConfigError, match="is a folder"), atomic_path(target) as tmp:
        tmp.write_text("{}")
    assert _untouched(target)


@pytest.mark.parametrize("where", [".", "cwd", "parent"])
def test_the_current_folder_is_refused_even_when_empty(tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = {".": ".", "cwd": str(work), "parent": str(tmp_path)}[where]
    with pytest.raises(ConfigError, match="current folder"):
        check_output_folder(path, BUNDLE)


def test_absent_empty_and_own_folders_may_be_written(tmp_path):
    assert check_output_folder(tmp_path / "new", BUNDLE) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    with atomic_path(tmp_path / "empty", BUNDLE) as tmp:
        tmp.mkdir()
        (tmp / "model.txt").write_text("x")
    assert (tmp_path / "empty" / "model.txt").is_file()
    assert check_output_folder(tmp_path / "empty", BUNDLE) == tmp_path / "empty"


def test_files_and_links_are_not_output_folders(tmp_path):
    (tmp_path / "file").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match="is a file"):
        check_output_folder(tmp_path / "file", BUNDLE)
    with pytest.raises(ConfigError, match="is a link"):
        check_output_folder(tmp_path / "link", BUNDLE)


def test_only_pawnets_own_files_are_replaced(tmp_path):
    def own(head: bytes) -> bool:
        return head.startswith(b"path,label,")

    (tmp_path / "thesis.csv").write_text("chapter,page\n")
    (tmp_path / "old.csv").write_text("path,label,cat,dog\n")
    _users_folder(tmp_path / "folder")
    with pytest.raises(ConfigError, match=r"thesis\.csv already exists and was not "
                                          r"written by pawnet as predictions.*Try:"):
        check_output_file(tmp_path / "thesis.csv", "predictions", own)
    with pytest.raises(ConfigError, match=r"is a folder.*Try: --out"):
        check_output_file(tmp_path / "folder", "predictions", own)
    assert check_output_file(tmp_path / "old.csv", "predictions", own) == tmp_path / "old.csv"
    assert check_output_file(tmp_path / "new.csv", "predictions", own) == tmp_path / "new.csv"


def test_a_cache_folder_pawnet_makes_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("PAWNET_CACHE_DIR", str(tmp_path / "cache"))
    assert stat.S_IMODE(cache_dir().stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o757])
def test_a_cache_folder_others_can_write_is_refused(tmp_path, monkeypatch, mode):
    # before: any folder was used, so another user could plant features or models in it
    shared = tmp_path / "pawnet-cache-1234"
    shared.mkdir()
    shared.chmod(mode)
    monkeypatch.setenv("PAWNET_CACHE_DIR", str(shared))
    with pytest.raises(ConfigError, match=r"can be written by other users.*Try: chmod go-w"):
        cache_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder away needs root")
def test_a_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    planted = tmp_path / "pawnet-cache-1234"
    planted.mkdir(mode=0o755)
    os.chown(planted, 65534, 65534)  # nobody
    monkeypatch.setenv("PAWNET_CACHE_DIR", str(planted))
    with pytest.raises(ConfigError, match="belongs to another user"):
        cache_dir()


def test_reading_a_pipe_does_not_wait(tmp_path):
    os.mkfifo(tmp_path / "history.csv")
    with pytest.raises(OSError, match="not a regular file"):
        read_text_file(tmp_path / "history.csv")
