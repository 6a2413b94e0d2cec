"""Shared fixtures: small folders of real photos from ../shared/data in every layout, odd
files generated from those photos at test time, and one tiny trained run reused by tests
that only need *a* model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import copy_photos, make_odd_files, real_photos

import pawnet


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
