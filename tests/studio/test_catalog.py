"""The studio's catalog: keys per class, the page's filters and orders, and issues attached
to the photos they are about, on real photos with answers and issues as the jobs give them."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import copy_photos

from pawnet.data.labels import LabelsFile
from pawnet.data.scan import scan
from pawnet.data.splits import assign_splits
from pawnet.studio.catalog import Catalog, class_keys


def test_keys_are_digits_and_unambiguous_first_letters():
    assert class_keys(["cat", "dog"]) == {"1": "cat", "2": "dog", "c": "cat", "d": "dog"}
    keys = class_keys(["cat", "cow", "xenops", "unicorn", "dog"])
    assert keys["1"] == "cat" and keys["d"] == "dog"
    assert "c" not in keys  # cat and cow both start with it
    assert "x" not in keys and "u" not in keys  # exclude and undo
    assert len([k for k in class_keys([f"c{i}" for i in range(12)]) if k.isdigit()]) == 9


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    folder = copy_photos(tmp_path / "photos", 6)
    found = scan(folder)
    photos = assign_splits(found.photos, 0, 0.34, 0.0)
    catalog = Catalog(Path(found.root), photos, found.classes,
                      LabelsFile(tmp_path / "labels.csv"), Path(found.root))
    for e in catalog.entries:
        right = e.folder_label
        wrong = "dog" if right == "cat" else "cat"
        top = wrong if e.id % 4 == 0 else right
        e.answer = {"label": top, "reason": None,
                    "probabilities": {top: 0.9, ({"cat", "dog"} - {top}).pop(): 0.1}}
    catalog.entries[1].answer = {"label": "unsure", "reason": "too small (20x20)",
                                 "probabilities": {"cat": 0.6, "dog": 0.4}}
    catalog.entries[2].answer = {"label": "neither", "reason": "unlike the training photos",
                                 "probabilities": {"cat": 0.5, "dog": 0.5}}
    return catalog


def _ids(catalog: Catalog, **want: str) -> list[int]:
    return [e.id for e in catalog.query(want)]


def test_filters(catalog):
    entries = catalog.entries
    assert _ids(catalog, label="cat") == [e.id for e in entries if e.folder_label == "cat"]
    assert _ids(catalog, answer="unsure") == _ids(catalog, answer="unsure:too small") == [1]
    assert _ids(catalog, answer="unsure:no class likely enough") == []
    assert _ids(catalog, answer="neither") == [2]
    wrong = [e.id for e in entries if e.id % 4 == 0 and e.split in ("val", "test")]
    assert _ids(catalog, answer="wrong") == wrong
    assert _ids(catalog, q=Path(entries[5].path).name.upper()) == [5]
    assert _ids(catalog, split="val") == [e.id for e in entries if e.split == "val"]
    catalog.labels.decide(entries[0].key, "exclude")
    assert _ids(catalog, label="exclude") == _ids(catalog, decided="yes") == [0]
    assert entries[0].path not in {p.path for p in catalog.photos()}
    assert len(catalog.photos()) == len(entries) - 1


def test_issues_are_attached_and_ordered(catalog):
    a, b, c = catalog.entries[3], catalog.entries[7], catalog.entries[9]
    catalog.set_issues({
        "label_issues": [{"path": a.path, "suggested": "dog", "label_probability": 0.05}],
        "outliers": [{"path": b.path, "score": 0.5}],
        "near_duplicates": [{"a": a.path, "b": c.path, "similarity": 0.97,
                             "straddles_splits": True}],
    })
    assert _ids(catalog, issue="label") == [a.id]
    assert _ids(catalog, issue="duplicate") == sorted([a.id, c.id])
    assert [e.id for e in catalog.query({"issue": "any"}, "issue")] == [a.id, c.id, b.id]
    detail = catalog.item(c, detail=True)
    assert detail["issue_details"][0]["with"] == a.id
    assert catalog.counts()["issues"] == {"label": 1, "duplicate": 2, "outlier": 1}
    assert "path" not in detail and not detail["name"].startswith("/")
