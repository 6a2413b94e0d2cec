"""What the studio knows about each photo of the folder: its id, split, the label a person
gave it, the model's answer and the data issues found, and the queries the page makes.

A photo is named by its id (its position in the scan, sorted by path) and never by a path
from the client, so nothing outside the folder can be read through the page.
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pawnet.data.labels import EXCLUDE, LabelsFile, relative_path
from pawnet.data.scan import Photo
from pawnet.trust.verdict import reason_kind

NO_CLASS = ""  # a photo whose folder gives it no class: one of the inbox
ISSUE_KINDS = ("label", "duplicate", "outlier")
RESERVED_KEYS = {"x", "u", "e", "r"}  # exclude, undo, explain, retrain


@dataclass(slots=True)
class Entry:
    """One photo. `answer` is the model's (a `Prediction.to_dict()`), `issues` what the
    data issues found about it, `queue` its place in the inbox queue."""

    id: int
    path: str
    name: str  # relative to the folder, for people
    key: str  # relative to the labels file's root: how the labels file names it
    folder_label: str
    split: str | None
    sha256: str
    answer: dict[str, Any] | None = None
    issues: list[dict[str, Any]] = field(default_factory=list)
    queue: int | None = None
    why: dict[str, float] | None = None
    copies: list[str] = field(default_factory=list)  # the keys of its exact copies

    @property
    def keys(self) -> list[str]:
        """What a decision about it is written for: it and its exact copies, so that
        training, which keeps one copy, finds the decision whichever it keeps."""
        return [self.key, *self.copies]


def _relative(folder: Path):
    """A function giving a photo's path relative to `folder`, `/`-separated: a slice of
    the string for the scan's paths (all under the resolved folder), `relative_path` for
    any other (25,000 `Path.resolve` calls took seconds)."""
    prefix = str(folder.resolve()) + os.sep

    def relative(path: str) -> str:
        if path.startswith(prefix):
            return path[len(prefix):].replace(os.sep, "/")
        return relative_path(path, folder)
    return relative


def class_keys(classes: list[str]) -> dict[str, str]:
    """The keys that label a photo with each class: its digit (1-9), and its first letter
    when no other class starts with it and it is not a command key."""
    keys = {str(i + 1): c for i, c in enumerate(classes[:9])}
    firsts = [c[:1].lower() for c in classes]
    for c, first in zip(classes, firsts, strict=True):
        if first.isalpha() and firsts.count(first) == 1 and first not in RESERVED_KEYS:
            keys[first] = c
    return keys


class Catalog:
    """The folder's photos, the person's decisions (a `LabelsFile`) and what jobs found."""

    def __init__(self, folder: Path, photos: list[Photo], classes: list[str],
                 labels: LabelsFile, labels_root: Path, duplicates: Iterable[list[str]] = ()):
        self.folder, self.classes, self.labels = folder, classes, labels
        self.lock = threading.Lock()
        to_folder = _relative(folder)
        from_root = relative_path(folder, labels_root)
        self.entries = []
        for i, p in enumerate(photos):
            name = to_folder(p.path)
            key = name if from_root == "." else posixpath.normpath(f"{from_root}/{name}")
            self.entries.append(Entry(i, p.path, name, key, p.label, p.split, p.sha256))
        self.by_path = {e.path: e for e in self.entries}
        self.by_key = {e.key: e for e in self.entries}
        for group in duplicates:
            kept = next((self.by_path[p] for p in group if p in self.by_path), None)
            if kept is not None:
                kept.copies = [relative_path(p, labels_root) for p in group if p != kept.path]

    @property
    def inbox(self) -> bool:
        """Whether some photos have no class yet: they are queued for labelling."""
        return any(e.folder_label == NO_CLASS for e in self.entries)

    def decision(self, entry: Entry) -> str | None:
        found = self.labels.get(entry.key)
        return None if found is None else found.label

    def label(self, entry: Entry) -> str:
        """The label the photo trains with: the person's, else its folder's ("" none)."""
        decided = self.decision(entry)
        return entry.folder_label if decided is None else decided

    def photos(self) -> list[Photo]:
        """The photos as labelled now (excluded and unlabelled ones left out)."""
        labelled = ((e, self.label(e)) for e in self.entries)
        return [Photo(e.path, label, e.split, e.sha256) for e, label in labelled
                if label not in (NO_CLASS, EXCLUDE)]

    def set_issues(self, found: dict[str, Any]) -> None:
        """Attach what `issues_of` found to the photos it is about."""
        for e in self.entries:
            e.issues = []
        for item in found.get("label_issues", []):
            self._note(item["path"], {"kind": "label", "suggested": item["suggested"],
                                      "score": 1 - item["label_probability"]})
        for item in found.get("outliers", []):
            self._note(item["path"], {"kind": "outlier", "score": item["score"]})
        for pair in found.get("near_duplicates", []):
            for one, other in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
                partner = self.by_path.get(other)
                self._note(one, {"kind": "duplicate", "score": pair["similarity"],
                                 "with": None if partner is None else partner.id,
                                 "across_splits": pair["straddles_splits"]})

    def _note(self, path: str, issue: dict[str, Any]) -> None:
        entry = self.by_path.get(path)
        if entry is not None:
            entry.issues.append(issue)

    def _checks(self, want: dict[str, str]) -> list[Callable[[Entry], bool]]:
        """One test per filter the page set (a query runs them over every photo)."""
        label, decisions = self.label, self.labels.decisions
        makers: dict[str, Callable[[str], Callable[[Entry], bool]]] = {
            "label": lambda v: lambda e: label(e) == (NO_CLASS if v == "none" else v),
            "split": lambda v: lambda e: (e.split or "none") == v,
            "issue": lambda v: lambda e: any(v in ("any", i["kind"]) for i in e.issues),
            "answer": lambda v: lambda e: _answer_is(e, label(e), v),
            "decided": lambda v: lambda e: (e.key in decisions) == (v == "yes"),
            "q": lambda v: lambda e: v.lower() in e.name.lower(),
        }
        return [makers[k](v) for k, v in want.items() if v and k in makers]

    def query(self, want: dict[str, str], order: str = "name") -> list[Entry]:
        """The photos that pass the page's filters (each optional), in `order`."""
        checks = self._checks(want)
        with self.lock:
            found = [e for e in self.entries if all(check(e) for check in checks)]
        if order == "queue":
            found.sort(key=lambda e: (e.queue is None, e.queue or 0))
        elif order == "issue":
            found.sort(key=lambda e: -max((i["score"] for i in e.issues), default=0.0))
        elif order == "confidence":
            found.sort(key=lambda e: _confidence(e))
        return found

    def item(self, e: Entry, detail: bool = False) -> dict[str, Any]:
        """A photo as the page shows it (no path: its name relative to the folder)."""
        answer = e.answer
        out: dict[str, Any] = {
            "id": e.id, "name": e.name, "label": self.label(e), "folder_label": e.folder_label,
            "decision": self.decision(e), "split": e.split,
            "issues": [i["kind"] for i in e.issues],
            "answer": None if answer is None else {
                "label": answer.get("label"), "reason": answer.get("reason"),
                "error": answer.get("error"), "confidence": _confidence(e)},
            "queue": e.queue,
        }
        if detail:
            out["issue_details"] = e.issues
            out["why"] = e.why
            if answer is not None:
                out["answer"]["probabilities"] = answer.get("probabilities")
                out["answer"]["ood_score"] = answer.get("ood_score")
        return out

    def counts(self) -> dict[str, Any]:
        """Photos by label now, decisions, and issues found: the page's header."""
        issues: Counter[str] = Counter()
        with self.lock:
            decisions = self.labels.decisions
            by_label = Counter(e.folder_label for e in self.entries if e.key not in decisions)
            by_label.update(d.label for d in decisions.values() if d.path in self.by_key)
            for e in self.entries:
                if e.issues:
                    issues.update({i["kind"] for i in e.issues})
        return {"photos": len(self.entries),
                "by_label": {c: by_label[c] for c in [*self.classes, EXCLUDE, NO_CLASS]},
                "decided": sum(d.path in self.by_key for d in decisions.values()),
                "issues": {k: issues[k] for k in ISSUE_KINDS}}


def _confidence(e: Entry) -> float:
    probabilities = (e.answer or {}).get("probabilities") or {}
    return max(probabilities.values(), default=1.0)


def _answer_is(e: Entry, label: str, want: str) -> bool:
    """`wrong`: the model's top class is not the label, on validation or test photos;
    `unsure` / `neither`: the model's verdict, `unsure:too small` with that reason;
    `right`: the label it was given; `error`: the photo could not be read."""
    answer = e.answer
    if answer is None or answer.get("error"):
        return want == "error" and answer is not None
    probabilities = answer.get("probabilities") or {}
    top = max(probabilities, key=probabilities.get) if probabilities else None
    if want == "wrong":
        return e.split in ("val", "test") and label not in (NO_CLASS, EXCLUDE) and top != label
    if want == "right":
        return top == label
    verdict, _, kind = want.partition(":")
    return answer.get("label") == verdict and (not kind or
                                                reason_kind(answer.get("reason")) == kind)
