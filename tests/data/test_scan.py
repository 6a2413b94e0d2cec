import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import TONGPYTHON, copy_photos, make_odd_files, real_photos

from pawnet.data import checks
from pawnet.data import scan as scan_module
from pawnet.data.labels import EXCLUDE, LabelsFile, read_labels, relative_path
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
    real = checks._check_file
    monkeypatch.setattr(checks, "_check_file", lambda p, m: calls.append(p) or real(p, m))
    scan(class_folders)
    assert calls == []
    touched = next((class_folders / "dog").iterdir())
    touched.write_bytes(touched.read_bytes() + b"\0")
    scan(class_folders)
    assert calls == [touched]


def test_damaged_scan_cache_is_ignored(class_folders):
    scan(class_folders)
    for cache_file in (Path(checks.cache_dir()) / "scan").glob("*.json"):
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
    (cache_file,) = (Path(checks.cache_dir()) / "scan").glob("*.json")
    stored = json.loads(cache_file.read_text())
    cache_file.write_text(json.dumps({**stored, "entries": entries}))
    assert scan(class_folders).photos == want.photos
    first = next(iter(stored["entries"]))
    broken = {k: {kk: vv for kk, vv in v.items() if kk != "sha256"} if k == first else v
              for k, v in stored["entries"].items()}
    cache_file.write_text(json.dumps({**stored, "entries": broken}))
    assert scan(class_folders).photos == want.photos  # the entry without sha256 is redone


# -- a labels file --------------------------------------------------------------------------


def _decide(root: Path, decisions: dict[Path | str, str]) -> dict:
    """The decisions of a labels file written by the studio over `root`, as read back."""
    labels = LabelsFile(root.parent / "labels.csv")
    for photo, label in decisions.items():
        labels.decide(photo if isinstance(photo, str) else relative_path(photo, root), label)
    return read_labels(labels.file)


def _photo(found, path: Path):
    return next(p for p in found.photos if Path(p.path) == path.resolve())


def test_labels_relabel_and_exclude_photos_without_touching_them(class_folders, monkeypatch):
    cats = sorted((class_folders / "cat").iterdir())
    dogs = sorted((class_folders / "dog").iterdir())
    broken = class_folders / "dog" / "broken.jpg"
    broken.write_bytes(dogs[0].read_bytes()[:300])
    before = _tree_digest(class_folders)
    decisions = _decide(class_folders, {cats[0]: "dog", cats[1]: "cat", dogs[1]: EXCLUDE,
                                        broken: EXCLUDE})
    checked = []
    real = checks._check_file
    monkeypatch.setattr(checks, "_check_file", lambda p, m: checked.append(p) or real(p, m))
    found = scan(class_folders, labels=decisions, labels_name="labels.csv")
    assert found.counts() == {"cat": 11, "dog": 12}  # one cat became a dog, a dog left out
    assert (_photo(found, cats[0]).label, _photo(found, cats[0]).label_source) == (
        "dog", "labels.csv")
    assert _photo(found, cats[1]).label_source == "folder"  # decided as its folder says
    assert _photo(found, cats[2]).label_source == "folder"
    assert found.excluded == sorted(str(p.resolve()) for p in (dogs[1], broken))
    assert found.skipped == [] and found.unknown_labels == []  # broken.jpg is not even read
    assert checked and not {dogs[1].resolve(), broken.resolve()} & set(checked)
    assert "; 1 relabelled and 2 excluded by labels.csv." in found.summary()
    assert found.to_json()["labels"] == {"file": "labels.csv", "relabelled": 1,
                                         "excluded": found.excluded, "unknown": []}
    assert _tree_digest(class_folders) == before
    plain = scan(class_folders)
    assert "labels" not in plain.to_json() and "relabelled" not in plain.summary()
    assert {p.label_source for p in plain.photos} == {"folder"}


def test_labels_give_a_class_to_a_photo_the_layout_could_not(class_folders):
    loose = class_folders / "loose.jpg"
    shutil.copy(real_photos("cat", 1, "test")[0], loose)
    assert [Path(s.path).name for s in scan(class_folders).skipped] == ["loose.jpg"]
    found = scan(class_folders, labels=_decide(class_folders, {loose: "cat"}),
                 labels_name="labels.csv")
    assert found.skipped == [] and found.counts() == {"cat": 13, "dog": 12}
    assert (_photo(found, loose).label, _photo(found, loose).label_source) == ("cat",
                                                                              "labels.csv")


def test_labels_add_photos_from_an_inbox_next_to_the_folder(split_folders):
    inbox = split_folders.parent / "inbox"
    inbox.mkdir()
    new = [shutil.copy(src, inbox / f"new{i}.jpg")  # photos not in the folder
           for i, src in enumerate(real_photos("dog", 6, "test")[4:])]
    decisions = _decide(split_folders, {Path(new[0]): "dog", Path(new[1]): EXCLUDE})
    assert "../inbox/new0.jpg" in decisions
    found = scan(split_folders, labels=decisions, labels_name="labels.csv")
    added = _photo(found, Path(new[0]))
    assert (added.label, added.split, added.label_source) == ("dog", None, "labels.csv")
    assert not [p for p in found.photos if p.path == str(Path(new[1]).resolve())]
    assert found.counts() == {"cat": 18, "dog": 19}
    assigned = assign_splits(found.photos, seed=1, val_fraction=0.2, test_fraction=0.1)
    assert [p.split for p in assigned if p.path == added.path] == ["train"]
    assert sum(p.split == "train" for p in assigned) == 21  # given splits stay as given


def test_labels_for_no_photo_are_listed_as_written(class_folders):
    decisions = _decide(class_folders, {"cat/gone.jpg": "dog", "../elsewhere/x.jpg": "cat",
                                        "cat": "dog", "dog/also-gone.jpg": EXCLUDE})
    found = scan(class_folders, labels=decisions, labels_name="mine.csv")
    assert found.unknown_labels == ["cat/gone.jpg", "../elsewhere/x.jpg", "cat",
                                    "dog/also-gone.jpg"]
    assert found.counts() == {"cat": 12, "dog": 12} and found.excluded == []
    assert "0 relabelled and 0 excluded by mine.csv" in found.summary()
    assert found.to_json()["labels"]["unknown"] == found.unknown_labels


def test_a_class_folder_named_exclude_is_only_a_class(class_folders):
    (class_folders / "dog").rename(class_folders / EXCLUDE)
    found = scan(class_folders, labels={}, labels_name="labels.csv")
    assert found.classes == ["cat", EXCLUDE] and found.excluded == []


def test_a_relabelled_copy_of_a_photo_relabels_every_copy(class_folders):
    cat = sorted((class_folders / "cat").iterdir())[0]
    copy = class_folders / "cat" / "copy-of-a-cat.jpg"
    copy.write_bytes(cat.read_bytes())
    found = scan(class_folders, labels=_decide(class_folders, {cat: "dog"}),
                 labels_name="labels.csv")
    kept = [p for p in found.photos if Path(p.path) in (cat.resolve(), copy.resolve())]
    assert [p.label for p in kept] == ["dog"]  # one copy, in the class decided
    assert not any(s.path in (str(cat), str(copy)) for s in found.skipped)
