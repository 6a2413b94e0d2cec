"""Shared fixtures: small folders of real photos from ../shared/data in every layout, odd
files generated from those photos at test time, and one tiny trained run reused by tests
that only need *a* model."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pawnet  # sets TensorFlow's environment, so it goes before any test imports TensorFlow

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PAWNET_SHARED_DATA", REPO.parent / "shared" / "data"))
CVTRICKS = SHARED_DATA / "cvtricks"
CDFILTERED = SHARED_DATA / "cdfiltered"
TONGPYTHON = SHARED_DATA / "tongpython"

if not CVTRICKS.is_dir():
    raise RuntimeError(f"the shared photos are missing: {SHARED_DATA} (expected ../shared/data)")


def invoke(*args):
    """Run the `pawnet` command in this process; returns click's Result."""
    from typer.testing import CliRunner

    from pawnet.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def real_photos(label: str, n: int, split: str = "train", dataset: Path = CVTRICKS) -> list[Path]:
    """The first `n` real photos of a class, in a stable order."""
    return sorted((dataset / split / label).glob("*.jpg"))[:n]


@pytest.fixture(scope="session")
def _shared_runtimes(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runtimes")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, _shared_runtimes):
    """Every test gets a pawnet cache of its own (scan cache, weights cache, downloads),
    except for converted models, which are keyed by their model's fingerprint and shared
    so that each model is converted once per session."""
    cache = tmp_path_factory.mktemp("cache")
    (cache / "runtimes").symlink_to(_shared_runtimes, target_is_directory=True)
    monkeypatch.setenv("PAWNET_CACHE_DIR", str(cache))


def copy_photos(dest: Path, per_class: int = 12, classes=("cat", "dog"), split="train",
                offset: int = 0) -> Path:
    for label in classes:
        (dest / label).mkdir(parents=True, exist_ok=True)
        for src in real_photos(label, offset + per_class, split)[offset:]:
            shutil.copy(src, dest / label / src.name)
    return dest


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """PHOTOS/cat/*.jpg, PHOTOS/dog/*.jpg with 12 real photos each."""
    return copy_photos(tmp_path / "photos")


@pytest.fixture
def split_folders(tmp_path) -> Path:
    """PHOTOS/{train,validation,test}/{cat,dog}/ with real photos, no overlap."""
    root = tmp_path / "photos"
    copy_photos(root / "train", 10)
    copy_photos(root / "validation", 4, offset=10)
    copy_photos(root / "test", 4, split="test")
    return root


@pytest.fixture
def kaggle_flat(tmp_path) -> Path:
    """One flat folder of Kaggle-named files: cat.0.jpg, dog.0.jpg, ..."""
    root = tmp_path / "kaggle"
    root.mkdir()
    for label in ("cat", "dog"):
        for src in real_photos(label, 10):
            shutil.copy(src, root / src.name)
    return root


def _jpeg_bytes() -> bytes:
    return real_photos("cat", 1)[0].read_bytes()


def make_odd_files(folder: Path) -> dict[str, str | None]:
    """Write one file of every odd kind into `folder`, made from a real photo.

    Returns {file name: expected skip reason prefix, or None when it must be usable}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(io.BytesIO(_jpeg_bytes())).convert("RGB")
    data = _jpeg_bytes()
    expected: dict[str, str | None] = {}

    def save(name, img, reason=None, **kw):
        img.save(folder / name, **kw)
        expected[name] = reason

    (folder / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "empty file"
    (folder / "notes.txt").write_text("not a photo\n")
    expected["notes.txt"] = "not an image"
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expected["truncated.jpg"] = "truncated or corrupt"
    junk = np.random.default_rng(0).integers(0, 256, len(data) - 400, dtype=np.uint8)
    (folder / "corrupt.jpg").write_bytes(data[:400] + junk.tobytes())
    expected["corrupt.jpg"] = "truncated or corrupt|not an image"
    save("unsupported.tiff", photo, "unsupported format TIFF")
    save("grayscale.jpg", photo.convert("L"))
    save("cmyk.jpg", photo.convert("CMYK"))
    save("palette.png", photo.convert("P"))
    alpha = photo.convert("RGBA")
    alpha.putalpha(128)
    save("alpha.png", alpha)
    save("sixteen_bit.png", Image.fromarray(
        (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)))
    frames = [photo.convert("P"), photo.rotate(90).convert("P")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    expected["animated.gif"] = None
    save("bitmap.bmp", photo)
    save("web.webp", photo)
    Image.new("1", (9500, 9500)).save(folder / "bomb.png")  # 90.25 M pixels, a few KB
    expected["bomb.png"] = "too many pixels"
    return expected


@pytest.fixture
def odd_files(tmp_path) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path / "odd"
    return folder, make_odd_files(folder)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny real training run (1 epoch, 32 px) on real photos, shared by read-only tests."""
    base = tmp_path_factory.mktemp("trained")
    photos = copy_photos(base / "photos", 16)
    os.environ.setdefault("PAWNET_CACHE_DIR", str(base / "cache"))
    return pawnet.train(photos, model="pawnet-cnn", epochs=1, image_size=32, batch_size=8,
                        val_fraction=0.25, test_fraction=0.25, out=str(base / "run"))
