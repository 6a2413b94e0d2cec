"""Reading photos: the one place that turns a file or bytes into the pixels a model sees.

Training, evaluation, prediction and the server all call `load_pixels`, so a photo gets
exactly the same input array wherever it is read. Every odd-but-valid image (grayscale,
CMYK, palette, alpha, 16-bit, PNG, GIF, BMP, WebP, rotated phone photos) becomes 8-bit RGB;
anything that cannot be read raises `ImageError` with a reason a person understands.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pawnet.errors import ImageError

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
_OPEN_FORMATS = sorted(SUPPORTED_FORMATS - {"MPO"})  # the JPEG plugin opens MPO files
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp"})
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (~ 9459 x 9459).
# A decode may take at most this many bytes per allowed pixel: an 8-bit RGB image at the
# pixel limit passes, an RGBA or 32-bit one that size does not.
BYTES_PER_PIXEL = 3
# Bytes per pixel as decoded, for modes that are not one byte per band; palette images
# count as what they are converted to.
_MODE_BYTES = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4, "1": 1,
               "P": 3, "PA": 4}
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

# Resize filters by the name a bundle records; Pillow's filters antialias when shrinking.
RESIZE_METHODS = {"bilinear": Image.Resampling.BILINEAR}
RESIZE_METHOD = "bilinear"  # what training uses
PREVIEW_SIZE = 1024  # longer side of a photo shown to a person (heat-map overlays)
DECODE_BYTES = 256 * 1024 * 1024  # decoded bytes held at once by one DecodeBudget


class DecodeBudget:
    """At most `slots` decodes at once, together holding at most `budget` decoded bytes (a
    decode larger than the budget runs alone), so many threads, a server's, cannot hold
    many full-size images at once. Whoever decodes on many threads owns one and passes it
    to each decode: a `Predictor` (and so the server), a tf.data pipeline, a feature
    extraction."""

    def __init__(self, slots: int, budget: int):
        self._ready = threading.Condition()
        self._slots, self._budget = slots, budget
        self._running = self._bytes = 0

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        with self._ready:
            self._ready.wait_for(lambda: self._running < self._slots and (
                self._running == 0 or self._bytes + nbytes <= self._budget))
            self._running += 1
            self._bytes += nbytes
        try:
            yield
        finally:
            with self._ready:
                self._running -= 1
                self._bytes -= nbytes
                self._ready.notify_all()

    @classmethod
    def for_this_machine(cls) -> DecodeBudget:
        """One decode per CPU, 256 MiB decoded at once."""
        return cls(os.cpu_count() or 2, DECODE_BYTES)

Source = str | Path | bytes

@dataclass(frozen=True)
class ImageInfo:
    """What a readable photo is: format, mode and size before conversion."""

    format: str
    mode: str
    width: int
    height: int


def _unsupported(fmt: str | None) -> ImageError:
    return ImageError(f"unsupported format {fmt}; allowed: {', '.join(sorted(SUPPORTED_FORMATS))}"
                      ". Try: convert it to JPEG or PNG")


def _unidentified(stream: io.BytesIO | Path) -> ImageError:
    """Name the format of a file Pillow was not allowed to open, from its magic bytes only
    (each plugin's `accept` test; nothing is parsed)."""
    if isinstance(stream, io.BytesIO):
        head = stream.getvalue()[:32]
    else:
        with stream.open("rb") as f:
            head = f.read(32)
    Image.init()
    for fmt, (_factory, accept) in Image.OPEN.items():
        try:
            if fmt not in SUPPORTED_FORMATS and accept is not None and accept(head):
                return _unsupported(fmt)
        except Exception:  # a plugin's test can fail on a short head
            continue
    return ImageError("not an image (Pillow cannot identify the file)")


def _open(source: Source, max_pixels: int) -> Image.Image:
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty file (0 bytes)")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if stream.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream, formats=_OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too many pixels, possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise _unidentified(stream) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"truncated or corrupt image ({exc})") from None
    if img.format not in SUPPORTED_FORMATS:
        fmt = img.format
        img.close()
        raise _unsupported(fmt)
    if img.width * img.height > max_pixels:
        w, h = img.size
        img.close()
        raise ImageError(
            f"too many pixels ({w}x{h} > {max_pixels:,}), possible decompression bomb"
        )
    return img


def _transparent(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info)


def _checked_bytes(img: Image.Image, max_pixels: int) -> int:
    """The bytes an image decodes to (call after `draft`); refused when over the budget."""
    per_pixel = 4 if img.mode == "P" and _transparent(img) else _MODE_BYTES.get(
        img.mode, len(img.getbands()))
    size = img.width * img.height * per_pixel
    if size > max_pixels * BYTES_PER_PIXEL:
        raise ImageError(
            f"too large to decode ({img.width}x{img.height} {img.mode} is {size / 1e6:,.0f} MB "
            f"> {max_pixels * BYTES_PER_PIXEL / 1e6:,.0f} MB), possible decompression bomb. "
            "Try: save it smaller or as 8-bit, or raise --max-pixels"
        )
    return size


def _wide_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit gray to 8-bit, a band of rows at a time (no full-size copy)."""
    _low, high = img.getextrema()
    scale = img.mode != "F" and high > 255  # 16-bit range, not 8-bit values in 16 bits
    out = np.empty((img.height, img.width), dtype=np.uint8)
    for top in range(0, img.height, 256):
        rows = np.asarray(img.crop((0, top, img.width, min(top + 256, img.height))),
                          dtype=np.float32)
        if scale:
            rows /= 257.0
        out[top : top + 256] = np.clip(np.rint(rows, out=rows), 0, 255, out=rows)
    return Image.fromarray(out, mode="L")


def _on_white(img: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """Composite a transparent image onto white, in premultiplied colour, a band of rows at
    a time, and resize it to `size` (width, height); a large image is box-reduced towards
    twice the target on the way, so no full-size copy is made."""
    factor = max(1, min(img.width // (2 * size[0]), img.height // (2 * size[1])))
    step = factor * max(1, 256 // factor)
    reduced = Image.new("RGBa", (-(-img.width // factor), -(-img.height // factor)))
    for top in range(0, img.height, step):
        band = img.crop((0, top, img.width, min(top + step, img.height)))
        band = band.convert("RGBA").convert("RGBa")
        reduced.paste(band.reduce(factor) if factor > 1 else band, (0, top // factor))
    premultiplied = np.asarray(reduced).astype(np.int16)
    rgb = premultiplied[..., :3] + 255 - premultiplied[..., 3:]  # C + (1 - alpha) * white
    on_white = Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    extent = (0, 0, img.width / factor, img.height / factor)  # the last box may be partial
    return on_white.resize(size, resample, box=extent)


def _to_8bit(img: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """Convert any mode Pillow decodes to 8-bit RGB or gray, compositing transparency onto
    white (transparent images come back resized already). Gray stays gray: it is resized
    before it becomes RGB, with the same result. Wide and transparent modes are converted
    a band at a time, so their working copies stay small however large the image is.
    """
    if img.mode in _WIDE_MODES:
        img = _wide_to_8bit(img)
    if _transparent(img):
        return _on_white(img, size, resample)
    return img if img.mode in ("RGB", "L") else img.convert("RGB")


def load_pixels(
    source: Source, image_size: int, max_pixels: int = MAX_PIXELS,
    resize_method: str = RESIZE_METHOD, *, budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Decode a photo to a `(image_size, image_size, 3)` uint8 RGB array.

    JPEGs are decoded at reduced size when the target is at most half the source (libjpeg's
    DCT scaling via Pillow's draft mode), then every image is resized, stretching to a
    square. EXIF orientation is applied first.

    Args:
        source: a path, or the file's bytes.
        image_size: side of the square output in pixels.
        max_pixels: images with more pixels, or that would decode to more than
            `BYTES_PER_PIXEL` bytes per allowed pixel (RGBA, 32-bit), are refused as
            possible decompression bombs. Defaults to Pillow's threshold, 89,478,485.
        resize_method: a key of `RESIZE_METHODS`. Defaults to "bilinear".
        budget: shared by the threads that decode at once; None for a lone decode.

    Returns:
        A uint8 array of shape `(image_size, image_size, 3)`, values 0-255.

    Raises:
        ImageError: the file is empty, not an image, unsupported, too large, truncated or
            corrupt.
    """
    return load_photo(source, image_size, max_pixels, resize_method, budget=budget)[0]


def load_photo(
    source: Source, image_size: int, max_pixels: int = MAX_PIXELS,
    resize_method: str = RESIZE_METHOD, *, budget: DecodeBudget | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """`load_pixels`, and the photo's own (width, height) as a person sees it (EXIF
    rotation applied), before any resizing: what says whether it is too small to judge."""
    return _decode(source, max_pixels, lambda _: (image_size, image_size),
                   RESIZE_METHODS[resize_method], budget, with_size=True)


def _decode(source: Source, max_pixels: int,
            target: Callable[[tuple[int, int]], tuple[int, int]], resample: int,
            budget: DecodeBudget | None = None, with_size: bool = False):
    """Decode a photo to 8-bit RGB of size `target(its size)`: asked once before decoding
    (JPEG draft scaling) and again after EXIF rotation; checked and budgeted. With
    `with_size`, also its (width, height) before scaling, EXIF rotation applied."""
    img = _open(source, max_pixels)
    try:
        with img:
            original = img.size
            if img.format in ("JPEG", "MPO"):
                img.draft(img.mode, target(img.size))
            nbytes = _checked_bytes(img, max_pixels)
            with budget.hold(nbytes) if budget else contextlib.nullcontext():
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # no copy (docs/decisions.md)
                if (img.width > img.height) != (original[0] > original[1]):
                    original = original[::-1]  # turned a quarter by its EXIF orientation
                size = target(img.size)
                img = _to_8bit(img, size, resample)
                img = img.resize(size, resample)  # a copy if done already
                pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
                return (pixels, original) if with_size else pixels
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"truncated or corrupt image ({exc})") from None


def load_preview(source: Source, longest: int = PREVIEW_SIZE,
                 max_pixels: int = MAX_PIXELS, *, budget: DecodeBudget | None = None
                 ) -> np.ndarray:
    """Decode a photo as a person looks at it: EXIF-rotated 8-bit RGB, its aspect kept,
    shrunk so its longer side is at most `longest` (never enlarged). JPEGs are decoded at
    reduced size, and the decode is checked and budgeted as in `load_pixels`.

    Returns:
        A uint8 array of shape `(height, width, 3)`.

    Raises:
        ImageError: as `load_pixels`.
    """
    def shrunk(size: tuple[int, int]) -> tuple[int, int]:
        scale = min(1.0, longest / max(size))
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))

    return _decode(source, max_pixels, shrunk, RESIZE_METHODS[RESIZE_METHOD], budget)


def inspect_image(source: Source, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Check that a photo decodes completely and say what it is.

    The whole image is decoded (at reduced size for JPEGs), so truncated and corrupt files
    are caught here rather than in the middle of training.

    Raises:
        ImageError: as for `load_pixels`.
    """
    img = _open(source, max_pixels)
    info = ImageInfo(img.format or "?", img.mode, img.width, img.height)
    img.close()
    load_pixels(source, 32, max_pixels)
    return info


def decode_ahead(
    items: Sequence, work: Callable, batch_size: int, ahead: int = 3
) -> Iterator[tuple[int, list]]:
    """Yield `(start, [work(item) for item in batch])` a batch at a time, in order, while
    a thread pool (one thread per CPU) already works on the next `ahead - 1` batches.

    For inference loops (predict, feature extraction): decoding overlaps the model, and
    only `ahead` batches wait in memory however many items there are (faster than tf.data
    here, see docs/decisions.md).
    """
    starts = iter(range(0, len(items), batch_size))
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:

        def submit(start: int) -> None:
            chunk = items[start : start + batch_size]
            pending.append((start, [pool.submit(work, item) for item in chunk]))

        for start in itertools.islice(starts, ahead):
            submit(start)
        while pending:
            start, futures = pending.popleft()
            following = next(starts, None)
            if following is not None:
                submit(following)
            yield start, [f.result() for f in futures]
