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
from pawnet.errors import DataError
from pawnet.storage import atomic_write_text


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


MANIFEST_FIELDS = ("path", "label", "split", "sha256")


def write_manifest(path: str | Path, photos: list[Photo]) -> None:
    """Write the split as CSV with columns path, label, split, sha256."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    writer.writerows((p.path, p.label, p.split, p.sha256) for p in photos)
    atomic_write_text(path, buffer.getvalue())


def read_manifest(path: str | Path) -> list[Photo]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [Photo(r["path"], r["label"], r["split"], r["sha256"]) for r in rows]
    except FileNotFoundError:
        raise DataError(f"split manifest not found: {path}") from None
    except (KeyError, csv.Error) as exc:
        raise DataError(f"split manifest {path} is damaged ({exc})") from None


def fingerprint(photos: Iterable[Photo]) -> str:
    """One hash naming exactly which photos a run used: content, label and split."""
    h = hashlib.sha256()
    for p in sorted(photos, key=lambda p: (p.sha256, p.label)):
        h.update(f"{p.sha256} {p.label} {p.split}\n".encode())
    return h.hexdigest()
