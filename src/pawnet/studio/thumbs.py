"""Thumbnails and previews for the studio: made on demand from the photo, a few at a time
within a decode budget, and kept in the per-user cache by content, so scrolling through
every photo of a folder holds at most a few decoded photos in memory at once."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from pawnet.data.images import DecodeBudget, load_preview
from pawnet.storage import atomic_write_bytes, cache_dir

THUMB_SIDE = 192  # longer side of a thumbnail in the grid, in pixels
PREVIEW_SIDE = 1024  # longer side of the photo in the detail view
DECODES_AT_ONCE = 2
DECODE_BYTES = 128 * 1024 * 1024


def jpeg(pixels: np.ndarray, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class Thumbnails:
    """JPEG thumbnails by photo content (SHA-256), cached on disk; previews made each time.

    Raises (from `thumbnail` and `preview`):
        ImageError: the photo cannot be read (changed since the scan, or damaged).
    """

    def __init__(self, max_pixels: int):
        self.folder = cache_dir() / "thumbs"
        self.max_pixels = max_pixels
        self.budget = DecodeBudget(DECODES_AT_ONCE, DECODE_BYTES)

    def _cached(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}-{THUMB_SIDE}.jpg"

    def thumbnail(self, path: str, sha256: str) -> bytes:
        cached = self._cached(sha256)
        try:
            return cached.read_bytes()
        except OSError:
            pass
        data = jpeg(load_preview(path, THUMB_SIDE, self.max_pixels, budget=self.budget), 80)
        with contextlib.suppress(OSError):  # a cache that cannot be written: made again
            atomic_write_bytes(cached, data)
        return data

    def preview(self, path: str) -> bytes:
        return jpeg(load_preview(path, PREVIEW_SIDE, self.max_pixels, budget=self.budget))
