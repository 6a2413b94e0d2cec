import dataclasses
import hashlib
import re
import shutil
from pathlib import Path

import pytest
from conftest import TONGPYTHON, copy_photos, make_odd_files

from pawnet import data
from pawnet.data import assign_splits, read_manifest, scan, write_manifest
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
    real = data._check_file
    monkeypatch.setattr(data, "_check_file", lambda p, m: calls.append(p) or real(p, m))
    scan(class_folders)
    assert calls == []
    touched = next((class_folders / "dog").iterdir())
    touched.write_bytes(touched.read_bytes() + b"\0")
    scan(class_folders)
    assert calls == [touched]


def test_damaged_scan_cache_is_ignored(class_folders):
    scan(class_folders)
    for cache_file in (Path(data.cache_dir()) / "scan").glob("*.json"):
        cache_file.write_text("{not json")
    assert scan(class_folders).counts() == {"cat": 12, "dog": 12}


def _unsplit_photos() -> list[data.Photo]:
    return [dataclasses.replace(p, split=None) for p in scan(TONGPYTHON).photos]


def test_split_is_deterministic_stratified_and_seeded():
    photos = _unsplit_photos()
    a = assign_splits(photos, 7, 0.2, 0.1)
    assert a == assign_splits(photos, 7, 0.2, 0.1)
    assert a != assign_splits(photos, 8, 0.2, 0.1)
    for label in ("cat", "dog"):
        of_class = [p for p in a if p.label == label]
        share = {s: sum(p.split == s for p in of_class) / len(of_class)
                 for s in ("train", "val", "test")}
        assert share["val"] == pytest.approx(0.2, abs=0.04)
        assert share["test"] == pytest.approx(0.1, abs=0.03)


def test_adding_photos_never_moves_old_ones(class_folders):
    before = {p.path: p.split for p in assign_splits(scan(class_folders).photos, 3, 0.3, 0.2)}
    copy_photos(class_folders, 8, offset=12)
    after = {p.path: p.split for p in assign_splits(scan(class_folders).photos, 3, 0.3, 0.2)}
    assert len(after) == len(before) + 16
    assert all(after[path] == split for path, split in before.items())


def test_copies_always_share_a_split():
    photos = _unsplit_photos()
    twin = [data.Photo("other/" + p.path, p.label, None, p.sha256) for p in photos[:200]]
    assigned = assign_splits(photos[:200] + twin, 5, 0.3, 0.3)
    by_hash = {}
    for p in assigned:
        by_hash.setdefault(p.sha256, set()).add(p.split)
    assert all(len(s) == 1 for s in by_hash.values())


def test_manifest_round_trip_with_awkward_names(tmp_path):
    photos = [data.Photo("/x/cat.4142(1).jpg", "cat", "train", "ab"),
              data.Photo("/x/a,b \"c\".jpg", "dog", "test", "cd")]
    write_manifest(tmp_path / "m.csv", photos)
    assert read_manifest(tmp_path / "m.csv") == photos


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable photos"):
        scan(tmp_path / "empty")
