import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import TONGPYTHON, copy_photos, make_odd_files, real_photos

from pawnet.data import scan as scan_module
from pawnet.data.scan import scan
from pawnet.data.splits import assign_splits
from pawnet.errors import DataError


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_class_folders_layout(class_folders):
    found = scan(class_folders)
    assert found.layout == "class-folders"
    assert found.classes == ["cat", "dog"]
    assert found.counts() == {"cat": 12, "dog": 12}
    assert all(p.split is None for p in found.photos)


def test_petimages_capitalised_class_folders(tmp_path):
    root = copy_photos(tmp_path / "PetImages", 3, classes=("cat", "dog"))
    (root / "cat").rename(root / "Cat")
    (root / "dog").rename(root / "Dog")
    (root / "Cat" / "Thumbs.db").write_bytes(b"\x00" * 100)
    found = scan(root)
    assert found.classes == ["Cat", "Dog"]
    assert [s.path.endswith("Thumbs.db") for s in found.skipped] == [True]


def test_split_folders_layout_keeps_given_splits(split_folders):
    found = scan(split_folders)
    assert found.layout.startswith("split-folders")
    assert found.splits() == ["train", "val", "test"]
    assert found.counts("val") == {"cat": 4, "dog": 4}
    assigned = assign_splits(found.photos, seed=1, val_fraction=0.5, test_fraction=0.5)
    assert [p.split for p in assigned] == [p.split for p in found.photos]


def test_kaggle_flat_layout_labels_from_file_names(kaggle_flat):
    (kaggle_flat / "1.jpg").write_bytes((kaggle_flat / "cat.0.jpg").read_bytes()[:10])
    found = scan(kaggle_flat)
    assert found.layout == "file-names"
    assert found.counts() == {"cat": 10, "dog": 10}
    assert any(s.path.endswith("1.jpg") for s in found.skipped)


def test_kaggle_files_inside_split_folder(tmp_path, kaggle_flat):
    shutil.move(kaggle_flat, tmp_path / "k" / "train")
    found = scan(tmp_path / "k")
    assert found.layout == "split-folders (file-names)"
    assert found.counts("train") == {"cat": 10, "dog": 10}


def test_bad_files_are_listed_with_reasons_and_never_touched(class_folders):
    expected = make_odd_files(class_folders / "cat")
    before = _tree_digest(class_folders)
    found = scan(class_folders)
    reasons = {Path(s.path).name: s.reason for s in found.skipped}
    for name, reason in expected.items():
        if reason is None:
            assert name not in reasons
        else:
            assert re.match(reason, reasons[name]), (name, reasons.get(name))
    usable = [n for n, r in expected.items() if r is None]
    assert found.counts()["cat"] == 12 + len(usable)
    assert _tree_digest(class_folders) == before  # nothing modified, moved or deleted


def test_real_dataset_with_non_images_and_duplicates():
    found = scan(TONGPYTHON)
    assert sorted(Path(s.path).name for s in found.skipped) == ["_DS_Store", "_DS_Store"]
    assert len(found.duplicates) == 23
    assert found.counts() == {"cat": 1000, "dog": 1000}
    assert all(any("(1)" in p for p in group) for group in found.duplicates)


def test_same_photo_in_two_classes_is_skipped(class_folders):
    shutil.copy(next((class_folders / "cat").iterdir()), class_folders / "dog" / "copy.jpg")
    found = scan(class_folders)
    assert sum("several classes" in s.reason for s in found.skipped) == 2
    assert found.counts() == {"cat": 11, "dog": 12}


def test_duplicate_across_given_splits_is_used_once_in_held_out_split(split_folders):
    src = next((split_folders / "test" / "cat").iterdir())
    shutil.copy(src, split_folders / "train" / "cat" / "leak.jpg")
    found = scan(split_folders)
    [kept] = [p for p in found.photos if Path(p.path).name == src.name]
    assert kept.split == "test"
    assert not any(Path(p.path).name == "leak.jpg" for p in found.photos)


def test_scan_results_are_cached_by_path_size_and_mtime(class_folders, monkeypatch):
    scan(class_folders)
    calls = []
    real = scan_module._check_file
    monkeypatch.setattr(scan_module, "_check_file", lambda p, m: calls.append(p) or real(p, m))
    scan(class_folders)
    assert calls == []
    touched = next((class_folders / "dog").iterdir())
    touched.write_bytes(touched.read_bytes() + b"\0")
    scan(class_folders)
    assert calls == [touched]


def test_damaged_scan_cache_is_ignored(class_folders):
    scan(class_folders)
    for cache_file in (Path(scan_module.cache_dir()) / "scan").glob("*.json"):
        cache_file.write_text("{not json")
    assert scan(class_folders).counts() == {"cat": 12, "dog": 12}


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable photos"):
        scan(tmp_path / "empty")


def test_report_names_every_bad_file_and_duplicate(class_folders, odd_files):
    folder, expected = odd_files
    folder.rename(class_folders / "dog" / "odd")
    shutil.copy(next((class_folders / "cat").iterdir()), class_folders / "cat" / "again.jpg")
    report = scan(class_folders).report()
    for name, reason in expected.items():
        if reason is not None:
            assert f"odd/{name}: " in report, name
    assert "zero.jpg: empty file" in report
    assert "Converted to RGB when read:" in report and "L JPEG" in report
    assert "1 groups of identical files" in report and "again.jpg" in report


def _reasons(found) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in found.skipped}


def test_links_to_nothing_pipes_and_unreadable_files_are_skipped_with_a_reason(
        class_folders, monkeypatch):
    cat = class_folders / "cat"
    (cat / "dangling.jpg").symlink_to(cat / "no-such-file.jpg")
    os.mkfifo(cat / "pipe.jpg")  # opening it would block the scan forever
    locked = cat / "locked.jpg"
    shutil.copy(next(p for p in sorted(cat.iterdir()) if p.suffix == ".jpg"), locked)
    real_open = open

    def open_as_non_root(path, *args, **kwargs):  # CI runs as root, who may read anything
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(scan_module, "open", open_as_non_root, raising=False)
    monkeypatch.setattr("pawnet.data.images.Image.open", _refusing_locked(locked),
                        raising=True)
    found = scan(class_folders)
    reasons = _reasons(found)
    assert "link to nothing" in reasons["dangling.jpg"]
    assert "not a regular file" in reasons["pipe.jpg"]
    assert reasons["locked.jpg"] == "cannot read file (Permission denied)"
    assert found.counts() == {"cat": 12, "dog": 12}


def _refusing_locked(locked: Path):
    from PIL import Image

    real = Image.open

    def image_open(fp, *args, **kwargs):
        if isinstance(fp, str | Path) and Path(fp) == locked:
            raise PermissionError(13, "Permission denied", str(fp))
        return real(fp, *args, **kwargs)

    return image_open


def test_a_file_that_vanishes_during_the_scan_is_skipped(class_folders, monkeypatch):
    gone = sorted((class_folders / "dog").iterdir())[0]
    real = scan_module.find_files

    def listed_then_deleted(root):
        found = real(root)
        gone.unlink()
        return found

    monkeypatch.setattr(scan_module, "find_files", listed_then_deleted)
    found = scan(class_folders)
    assert "vanished during the scan" in _reasons(found)[gone.name]
    assert found.counts() == {"cat": 12, "dog": 11}


def test_a_very_deep_tree_and_a_huge_non_image_are_scanned_without_harm(class_folders):
    import tracemalloc

    levels = [class_folders / "dog"]
    for _ in range(1100):  # one level at a time: mkdir(parents=True) itself recurses
        levels.append(levels[-1] / "d")
        levels[-1].mkdir()
    shutil.copy(real_photos("dog", 1, "test")[0], levels[-1] / "bottom.jpg")
    with open(class_folders / "cat" / "huge.jpg", "wb") as f:
        f.truncate(400 * 2**20)  # 400 MB of zeros, sparse on disk
    tracemalloc.start()
    try:
        found = scan(class_folders)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        (levels[-1] / "bottom.jpg").unlink()
        for level in reversed(levels[1:]):  # shutil.rmtree, pytest's too, would recurse
            level.rmdir()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB allocated"
    assert "not an image" in _reasons(found)["huge.jpg"]
    assert any(p.path.endswith("bottom.jpg") and p.label == "dog" for p in found.photos)


@pytest.mark.parametrize("entries", [[], {"x": []}, "damaged", None, 7])
def test_a_malformed_scan_cache_is_rebuilt_not_trusted(class_folders, entries):
    want = scan(class_folders)
    (cache_file,) = (Path(scan_module.cache_dir()) / "scan").glob("*.json")
    stored = json.loads(cache_file.read_text())
    cache_file.write_text(json.dumps({**stored, "entries": entries}))
    assert scan(class_folders).photos == want.photos
    first = next(iter(stored["entries"]))
    broken = {k: {kk: vv for kk, vv in v.items() if kk != "sha256"} if k == first else v
              for k, v in stored["entries"].items()}
    cache_file.write_text(json.dumps({**stored, "entries": broken}))
    assert scan(class_folders).photos == want.photos  # the entry without sha256 is redone
