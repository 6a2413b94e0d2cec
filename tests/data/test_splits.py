import dataclasses
import functools

import pytest
from helpers import TONGPYTHON, copy_photos

from pawnet.data.scan import Photo, scan
from pawnet.data.splits import assign_splits, fingerprint, read_manifest, write_manifest
from pawnet.errors import DataError


@functools.cache
def _unsplit_photos() -> tuple[Photo, ...]:
    return tuple(dataclasses.replace(p, split=None) for p in scan(TONGPYTHON).photos)


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
    twin = [Photo("other/" + p.path, p.label, None, p.sha256) for p in photos[:200]]
    assigned = assign_splits([*photos[:200], *twin], 5, 0.3, 0.3)
    by_hash = {}
    for p in assigned:
        by_hash.setdefault(p.sha256, set()).add(p.split)
    assert all(len(s) == 1 for s in by_hash.values())


def test_manifest_round_trip_with_awkward_names(tmp_path):
    photos = [Photo("/x/cat.4142(1).jpg", "cat", "train", "ab"),
              Photo("/x/a,b \"c\".jpg", "dog", "test", "cd")]
    write_manifest(tmp_path / "m.csv", photos)
    assert read_manifest(tmp_path / "m.csv") == photos


def test_manifest_missing_or_damaged_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("path,label\n/x.jpg,cat\n")
    with pytest.raises(DataError, match="damaged"):
        read_manifest(tmp_path / "bad.csv")


def test_fingerprint_names_content_label_and_split():
    photos = [Photo("/a.jpg", "cat", "train", "aa"), Photo("/b.jpg", "dog", "val", "bb")]
    same = fingerprint(reversed(photos))  # order does not matter, names do not matter
    assert fingerprint(photos) == same == fingerprint(
        [dataclasses.replace(p, path="/moved" + p.path) for p in photos])
    assert fingerprint([dataclasses.replace(photos[0], split="test"), photos[1]]) != same
    assert fingerprint([dataclasses.replace(photos[0], label="dog"), photos[1]]) != same


def test_manifest_records_where_each_label_came_from(tmp_path):
    photos = [Photo("/x/cat/1.jpg", "dog", "train", "ab", "labels.csv"),
              Photo("/x/cat/2.jpg", "cat", "val", "cd")]
    write_manifest(tmp_path / "m.csv", photos)
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "path,label,split,sha256,label_source", "/x/cat/1.jpg,dog,train,ab,labels.csv",
        "/x/cat/2.jpg,cat,val,cd,folder"]
    assert read_manifest(tmp_path / "m.csv") == photos
    # where a label came from is not what a run used: the fingerprint does not see it
    assert fingerprint(photos) == fingerprint(
        [dataclasses.replace(p, label_source="folder") for p in photos])


def test_a_manifest_written_before_labels_files_still_reads(tmp_path):
    (tmp_path / "old.csv").write_text("path,label,split,sha256\n/x/a.jpg,cat,train,ab\n"
                                      "\"/x/b,c.jpg\",dog,test,cd\n")
    assert read_manifest(tmp_path / "old.csv") == [Photo("/x/a.jpg", "cat", "train", "ab"),
                                                   Photo("/x/b,c.jpg", "dog", "test", "cd")]
    assert {p.label_source for p in read_manifest(tmp_path / "old.csv")} == {"folder"}
    (tmp_path / "mixed.csv").write_text("path,label,split,sha256\n/x/a.jpg,cat,train,ab,folder\n")
    with pytest.raises(DataError, match="line 2 has 5 fields, not 4"):
        read_manifest(tmp_path / "mixed.csv")
    (tmp_path / "short.csv").write_text("path,label,split,sha256,label_source\n/x/a.jpg,cat,"
                                        "train,ab\n")
    with pytest.raises(DataError, match="line 2 has 4 fields, not 5"):
        read_manifest(tmp_path / "short.csv")
