import os
import stat
import subprocess
import sys

import pytest

from pawnet.errors import ConfigError
from pawnet.storage import (
    _HOST,
    atomic_path,
    atomic_write_text,
    cache_dir,
    committed,
    next_run_dir,
)


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
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "model.txt").write_text(version)
    assert (target / "model.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


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
    with atomic_path(tmp_path / "last") as tmp:
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
        with atomic_path(tmp_path / "bundle") as tmp:
            tmp.mkdir()
            (tmp / "model.keras").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "bundle" / "model.keras").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o777 & ~umask
