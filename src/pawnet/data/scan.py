"""Finding photos in any layout, skipping and reporting bad files, and splitting them.

Three layouts are read, each by a small labeler:

```
class-folders           split-folders                     file-names (Kaggle)
PHOTOS/                 PHOTOS/                           PHOTOS/
  cat/ a.jpg ...          train/ cat/ ... dog/ ...          cat.1.jpg
  dog/ b.jpg ...          val|valid|validation/ ...         dog.7.jpg
                          test/ ...                         ...
```

A split folder may itself hold Kaggle-style flat files. Every file is checked before use
(in parallel, cached by path, size and mtime); bad files are listed with a reason and never
touched. Exact duplicates (same bytes) are found by SHA-256: one copy is used, the others
are reported, so a photo can never sit in two splits.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pawnet.data.checks import Labelled, ScanCache, check_all
from pawnet.data.images import MAX_PIXELS
from pawnet.data.labels import Decision, apply_labels
from pawnet.errors import DataError, one_line

SPLITS = ("train", "val", "test")
SPLIT_FOLDER_NAMES = {  # folder name (any case) -> split
    "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
_IGNORED_DIRS = {"__MACOSX"}
_FLAT_LABEL = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)\.")


@dataclass(frozen=True)
class Photo:
    """One usable photo: where it is, its class, its split, its content hash, and where its
    class came from (the layout, "folder", or the name of a labels file)."""

    path: str
    label: str
    split: str | None
    sha256: str
    label_source: str = "folder"


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def count_classes(photos: Iterable[Photo], classes: list[str], split: str | None = None
                  ) -> dict[str, int]:
    """Photos per class (in class order), optionally of one split only."""
    counter = Counter(p.label for p in photos if split is None or p.split == split)
    return {c: counter.get(c, 0) for c in classes}


@dataclass
class PhotoSet:
    """What was found under one folder: usable photos, skipped files and duplicates."""

    root: str
    layout: str
    classes: list[str]
    photos: list[Photo]
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)  # "CMYK JPEG" -> count
    labels: str | None = None  # the name of the labels file applied, if any
    excluded: list[str] = field(default_factory=list)  # left out by the labels file
    unknown_labels: list[str] = field(default_factory=list)  # its paths that are no file

    def counts(self, split: str | None = None) -> dict[str, int]:
        """Usable photos per class (in class order), optionally for one split only."""
        return count_classes(self.photos, self.classes, split)

    def splits(self) -> list[str]:
        """The split folders that were given, in train/val/test order."""
        found = {p.split for p in self.photos}
        return [s for s in SPLITS if s in found]

    def summary(self) -> str:
        counts = ", ".join(f"{one_line(c)}: {n}" for c, n in self.counts().items())
        text = (f"Found {len(self.photos)} usable photos of {len(self.classes)} classes "
                f"({counts}) in {one_line(self.root)} [layout: {self.layout}]")
        if self.splits():
            text += "; given splits " + ", ".join(
                f"{s}: {sum(self.counts(s).values())}" for s in self.splits())
        if self.skipped:
            text += f"; skipped {len(self.skipped)} bad files"
        if self.duplicates:
            extra = sum(len(g) - 1 for g in self.duplicates)
            text += f"; {extra} exact duplicates not used twice"
        if self.labels:
            text += (f"; {self.relabelled()} relabelled and {len(self.excluded)} excluded by "
                     f"{one_line(self.labels)}")
        return text + "."

    def relabelled(self) -> int:
        """Photos whose class comes from the labels file, not from the layout."""
        return sum(p.label_source != "folder" for p in self.photos)

    def report(self) -> str:
        """What `pawnet data check` prints: counts per split and class, conversions, every
        skipped file with its reason, every group of duplicates."""
        lines = [self.summary(), f"Layout: {self.layout}"]
        for split in self.splits() or [None]:
            counts = ", ".join(f"{one_line(c)} {n}" for c, n in self.counts(split).items())
            lines.append(f"  {split}: {counts}" if split else f"  {counts}")
        if self.converted:
            lines.append("Converted to RGB when read: "
                         + ", ".join(f"{n} {kind}" for kind, n in self.converted.items()))
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} files (left untouched):")
            lines += [f"  {one_line(s.path)}: {one_line(s.reason)}" for s in self.skipped]
        if self.duplicates:
            lines.append(f"{len(self.duplicates)} groups of identical files (one copy is used):")
            lines += ["  " + "  =  ".join(map(one_line, group)) for group in self.duplicates]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "root": self.root, "layout": self.layout, "classes": self.counts(),
            "splits": {s: self.counts(s) for s in self.splits()},
            "skipped": [asdict(s) for s in self.skipped],
            "duplicates": self.duplicates, "converted": self.converted,
            **({"labels": {"file": self.labels, "relabelled": self.relabelled(),
                           "excluded": self.excluded, "unknown": self.unknown_labels}}
               if self.labels else {}),
        }


# -- finding files and labels -------------------------------------------------------------


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS)


def _files_under(folder: Path) -> list[Path]:
    """Every file below `folder` (links to folders not followed), in `os.walk` order;
    iterative, so no depth of folders is too deep."""
    found: list[Path] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
            dirs = {e.name for e in entries if e.is_dir(follow_symlinks=False)}
        except OSError:  # unreadable or vanished folder: nothing to list, as os.walk does
            continue
        found += [Path(e.path) for e in entries if e.name not in dirs]
        stack += [Path(e.path) for e in reversed(entries) if e.name in dirs
                  and not e.name.startswith(".") and e.name not in _IGNORED_DIRS]
    return found


def _label_folder(folder: Path, split: str | None) -> tuple[str, Labelled]:
    """Label every file under `folder`: by class sub-folder, or by file name when flat.

    Returns the labeling used and (path, label or None, split) triples; label None means
    the file could not be given a class.
    """
    subdirs = _visible_dirs(folder)
    if subdirs:
        items: Labelled = []
        for class_dir in subdirs:
            items += [(p, class_dir.name, split) for p in _files_under(class_dir)]
        items += [(p, None, split) for p in sorted(folder.iterdir()) if p.is_file()]
        return "class-folders", items
    items = []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            match = _FLAT_LABEL.match(p.name)
            items.append((p, match.group(1) if match else None, split))
    return "file-names", items


def find_files(root: str | Path) -> tuple[str, Labelled]:
    """Detect the layout of `root` and list its files with their labels and given splits."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"photo folder not found: {root}. Try: check the path")
    if not root.is_dir():
        raise DataError(f"expected a folder of photos, received a file: {root}")
    split_dirs = {d: SPLIT_FOLDER_NAMES[d.name.lower()] for d in _visible_dirs(root)
                  if d.name.lower() in SPLIT_FOLDER_NAMES}
    if split_dirs:
        items = []
        inner = set()
        for folder, split in split_dirs.items():
            labeling, found = _label_folder(folder, split)
            inner.add(labeling)
            items += found
        return f"split-folders ({'/'.join(sorted(inner))})", items
    return _label_folder(root, None)


_SPLIT_RANK = {None: 0, "train": 0, "val": 1, "test": 2}


def _one_copy_each(by_hash: dict[str, list[tuple[Path, str, str | None]]], decided: set[Path]
                   ) -> tuple[list[Photo], list[list[str]], list[Skipped]]:
    """(photos, duplicate groups, skipped): one photo per content; a content found under
    two classes is skipped altogether, unless a labels file gave one of its copies a label
    (`decided`): then that label is the content's."""
    photos: list[Photo] = []
    duplicates: list[list[str]] = []
    skipped: list[Skipped] = []
    for digest, copies in by_hash.items():
        labels = sorted({label for _, label, _ in copies})
        chosen = {label for path, label, _ in copies if path in decided}
        if len(labels) > 1 and len(chosen) == 1:
            labels = sorted(chosen)
            copies = [(path, labels[0], split) for path, _, split in copies]
        if len(labels) > 1:
            skipped += [Skipped(str(p), "the same photo is in several classes "
                                f"({', '.join(labels)})") for p, _, _ in copies]
            continue
        # Keep the copy in the most held-out split, so given test sets stay as given.
        kept = max(copies, key=lambda c: (_SPLIT_RANK[c[2]], -copies.index(c)))
        photos.append(Photo(str(kept[0]), kept[1], kept[2], digest))
        if len(copies) > 1:
            duplicates.append(sorted(str(p) for p, _, _ in copies))
    return photos, duplicates, skipped


def scan(photos: str | Path, max_pixels: int = MAX_PIXELS, workers: int | None = None,
         labels: dict[str, Decision] | None = None, labels_name: str = "labels file",
         unlabelled: bool = False) -> PhotoSet:
    """Find, label and check every file under a folder of photos.

    Args:
        photos: folder of photos in any supported layout.
        max_pixels: images with more pixels are skipped as possible decompression bombs.
            Defaults to 89,478,485.
        workers: threads used to check files. Defaults to the number of CPUs.
        labels: a labels file's decisions (`read_labels`), applied before files are checked:
            photos excluded, relabelled, or added from next to the folder. Defaults to None.
        labels_name: what photos labelled by it name as their `label_source`.
        unlabelled: keep photos without a class (label ""), an inbox, instead of skipping.

    Returns:
        A `PhotoSet` with usable photos (one per distinct content), skipped files with
        reasons, and groups of exact duplicates.

    Raises:
        DataError: the folder is missing or holds no usable photo.
    """
    root = Path(photos).resolve()
    layout, items = find_files(root)
    items, excluded, unknown, relabelled = apply_labels(items, labels or {}, root)
    records = check_all(items, ScanCache(root, max_pixels), max_pixels, workers)
    skipped: list[Skipped] = []
    by_hash: dict[str, list[tuple[Path, str, str | None]]] = defaultdict(list)
    converted: Counter[str] = Counter()
    for path, label, split in items:
        record = records[path]
        if "error" in record or (label is None and not unlabelled):
            skipped.append(Skipped(str(path), record.get("error") or "no class: not inside a "
                                   "class folder and no 'class.N.jpg' style name"))
        else:
            by_hash[record["sha256"]].append((path, label or "", split))
            if record.get("kind", "RGB JPEG") != "RGB JPEG":
                converted[record["kind"]] += 1
    photos, duplicates, in_two_classes = _one_copy_each(by_hash, relabelled)
    skipped += in_two_classes
    if not photos:
        reasons = Counter(s.reason.split(" (")[0] for s in skipped).most_common(3)
        detail = "; ".join(f"{n} x {r}" for r, n in reasons) or "the folder is empty"
        raise DataError(
            f"no usable photos in {root} ({detail}). Try: PHOTOS/<class>/*.jpg, "
            "PHOTOS/train/<class>/*.jpg or Kaggle-style cat.1.jpg files"
        )
    relabelled_paths = {str(path) for path in relabelled}
    photos = sorted((replace(p, label_source=labels_name) if p.path in relabelled_paths
                     else p for p in photos), key=lambda p: p.path)
    return PhotoSet(root=str(root), layout=layout, classes=sorted({p.label for p in photos} - {""}),
                    photos=photos, skipped=sorted(skipped, key=lambda s: s.path),
                    duplicates=sorted(duplicates), converted=dict(converted),
                    labels=labels_name if labels is not None else None,
                    excluded=excluded, unknown_labels=unknown)
