"""Reading photos: the one place that turns a file or bytes into the pixels a model sees.

Training, evaluation, prediction and the server all call `load_pixels`, so a photo gets
exactly the same input array wherever it is read. Every odd-but-valid image (grayscale,
CMYK, palette, alpha, 16-bit, PNG, GIF, BMP, WebP, rotated phone photos) becomes 8-bit RGB;
anything that cannot be read raises `ImageError` with a reason a person understands.
"""

from __future__ import annotations

import io
import itertools
import os
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
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp"})
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (~ 9459 x 9459).
# Resize filters by the name a bundle records; Pillow's filters antialias when shrinking.
RESIZE_METHODS = {"bilinear": Image.Resampling.BILINEAR}
RESIZE_METHOD = "bilinear"  # what training uses

Source = str | Path | bytes

@dataclass(frozen=True)
class ImageInfo:
    """What a readable photo is: format, mode and size before conversion."""

    format: str
    mode: str
    width: int
    height: int


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
            img = Image.open(stream)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too many pixels, possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (Pillow cannot identify the file)") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"truncated or corrupt image ({exc})") from None
    if img.format not in SUPPORTED_FORMATS:
        fmt = img.format
        img.close()
        raise ImageError(
            f"unsupported format {fmt}; allowed: {', '.join(sorted(SUPPORTED_FORMATS))}. "
            "Try: convert it to JPEG or PNG"
        )
    if img.width * img.height > max_pixels:
        w, h = img.size
        img.close()
        raise ImageError(
            f"too many pixels ({w}x{h} > {max_pixels:,}), possible decompression bomb"
        )
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode Pillow decodes to 8-bit RGB, compositing transparency onto white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode != "F" and arr.max(initial=0) > 255:
            arr = arr / 257.0  # 16-bit range down to 8-bit
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_pixels(
    source: Source, image_size: int, max_pixels: int = MAX_PIXELS,
    resize_method: str = RESIZE_METHOD,
) -> np.ndarray:
    """Decode a photo to a `(image_size, image_size, 3)` uint8 RGB array.

    JPEGs are decoded at reduced size when the target is at most half the source (libjpeg's
    DCT scaling via Pillow's draft mode), then every image is resized, stretching to a
    square. EXIF orientation is applied first.

    Args:
        source: a path, or the file's bytes.
        image_size: side of the square output in pixels.
        max_pixels: images with more pixels are refused as possible decompression bombs.
            Defaults to Pillow's threshold, 89,478,485.
        resize_method: a key of `RESIZE_METHODS`. Defaults to "bilinear".

    Returns:
        A uint8 array of shape `(image_size, image_size, 3)`, values 0-255.

    Raises:
        ImageError: the file is empty, not an image, unsupported, too large, truncated or
            corrupt.
    """
    img = _open(source, max_pixels)
    try:
        with img:
            if img.format in ("JPEG", "MPO"):
                img.draft(img.mode, (image_size, image_size))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no copy (docs/decisions.md)
            img = _to_rgb(img)
            img = img.resize((image_size, image_size), RESIZE_METHODS[resize_method])
            return np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"truncated or corrupt image ({exc})") from None


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
