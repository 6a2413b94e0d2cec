"""Splitting photos reproducibly, and the record of a split: the manifest and the fingerprint.

A photo's split depends only on its content hash and the seed, so no photo can leak between
splits, whatever the folder order or the other photos.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from pawnet.data.scan import Photo
from pawnet.errors import DataError, one_line
from pawnet.storage import atomic_write_text, read_text_file


def _unit_interval(sha256: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{sha256}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(
    photos: list[Photo], seed: int, val_fraction: float, test_fraction: float
) -> list[Photo]:
    """Give every photo a split: folders given by the user stay as given, the rest by hash.

    A photo's split depends only on its content hash and the seed, so a split never changes
    between runs, adding photos never moves the old ones, and copies of a photo (same hash)
    always land together. Within every class the expected shares are exactly the fractions
    (a stratified split); missing val or test splits are carved out of train.
    """
    given = {p.split for p in photos}
    want_val = "val" not in given
    want_test = "test" not in given
    out = []
    for photo in photos:
        split = photo.split or "train"
        if split == "train":
            u = _unit_interval(photo.sha256, seed)
            test_cut = test_fraction if want_test else 0.0
            val_cut = test_cut + (val_fraction if want_val else 0.0)
            if u < test_cut:
                split = "test"
            elif u < val_cut:
                split = "val"
        out.append(replace(photo, split=split))
    return out


MANIFEST_FIELDS = ("path", "label", "split", "sha256", "label_source")
_OLD_MANIFEST_FIELDS = MANIFEST_FIELDS[:4]  # before labels files: every label the folder's


def write_manifest(path: str | Path, photos: list[Photo]) -> None:
    """Write the split as CSV with columns path, label, split, sha256, label_source."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    writer.writerows((p.path, p.label, p.split, p.sha256, p.label_source) for p in photos)
    atomic_write_text(path, buffer.getvalue())


def read_manifest(path: str | Path) -> list[Photo]:
    """The photos a run's `manifest.csv` lists.

    Raises:
        DataError: it is missing, unreadable, or a row does not have its fields (four in a
            manifest written before labels files, which reads as labelled by folder).
    """
    try:
        rows = list(csv.reader(io.StringIO(read_text_file(path), newline="")))
    except FileNotFoundError:
        raise DataError(f"split manifest not found: {one_line(path)}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"split manifest {one_line(path)} cannot be read ({one_line(exc)})"
                        ) from None
    if not rows or tuple(rows[0]) not in (MANIFEST_FIELDS, _OLD_MANIFEST_FIELDS):
        raise DataError(f"split manifest {one_line(path)} is damaged: its header is not "
                        f"{','.join(MANIFEST_FIELDS)}")
    fields = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != fields:
            raise DataError(f"split manifest {one_line(path)} is damaged: line {number} has "
                            f"{len(row)} fields, not {fields}")
    return [Photo(*row) for row in rows[1:]]


def fingerprint(photos: Iterable[Photo]) -> str:
    """One hash naming exactly which photos a run used: content, label and split."""
    h = hashlib.sha256()
    for p in sorted(photos, key=lambda p: (p.sha256, p.label)):
        h.update(f"{p.sha256} {p.label} {p.split}\n".encode())
    return h.hexdigest()
