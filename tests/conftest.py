"""Shared fixtures: small folders of real photos from ../shared/data in every layout, odd
files generated from those photos at test time, one tiny trained run reused by tests that
only need *a* model, the session's shared cache, and the test tiers (markers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import copy_photos, make_odd_files, real_photos

import pawnet

# --- tiers ---------------------------------------------------------------------------------
# Unit tests are unmarked; `integration` marks a test that trains a model, starts a server or
# a process, or runs a full-size pretrained network over photos (the built-in model, Lite0
# features, its conversion or export): seconds each. `make test-fast` leaves them out; `make
# test` runs every tier but `slow`. Mark a new test in its module (`@pytest.mark.integration`,
# or `pytestmark` for a whole module); the hook below also marks, by what they do:

# tests that use a fixture that trains a model or serves one
INTEGRATION_FIXTURES = {
    "trained_run",  # below: a real training run
    "transfer_run",  # below: a real transfer-learning run
    "pets_run",  # trust/test_ood.py: a transfer model trained on real photos
    "odd_names",  # test_hostile.py: a run trained on oddly named classes
    "server",  # serve/test_browser.py: `pawnet serve` in a process of its own
    "live",  # serve/test_app.py: the real server on a port
    "weights_server",  # models/test_keras_apps.py: Keras weights served to train on
}
# modules whose every test starts a process
INTEGRATION_MODULES = {
    "tests/serve/test_browser.py",  # `pawnet serve`, and a browser
}


@pytest.hookimpl(tryfirst=True)  # before `-m` picks the tiers
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.nodeid.split("::")[0]
        if INTEGRATION_FIXTURES.intersection(item.fixturenames) or module in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)


# --- the cache -------------------------------------------------------------------------------
# Content-addressed parts, shared by the whole session: each is keyed by what made it, so a
# test cannot get another's by mistake, and each is made once per session.
SHARED_CACHE = (
    "runtimes",  # converted models, by the model's fingerprint
    "pretrained",  # EfficientNet-Lite Keras weights, by the torch checkpoint's SHA-256
    "features",  # backbone features, by photo content and backbone id
)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """The session's folder of the cache parts in SHARED_CACHE."""
    root = tmp_path_factory.mktemp("shared-cache")
    for part in SHARED_CACHE:
        (root / part).mkdir(mode=0o700)
    return root


def cache_sharing(folder: Path, shared: Path, parts=SHARED_CACHE) -> Path:
    """`folder` as a pawnet cache of its own, but for links to the session's shared `parts`."""
    folder.mkdir(mode=0o700, exist_ok=True)
    for part in parts:
        (folder / part).symlink_to(shared / part, target_is_directory=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory, shared_cache):
    """The cache of fixtures wider than one test (module-scoped trained runs): never the
    user's own."""
    with pytest.MonkeyPatch.context() as mp:
        cache = cache_sharing(tmp_path_factory.mktemp("session-cache"), shared_cache)
        mp.setenv("PAWNET_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, shared_cache) -> Path:
    """Every test gets a pawnet cache of its own for what is keyed by place or test (the scan
    cache, keyed by folder; demo downloads), sharing the content-addressed parts with the
    session: each model is converted, each backbone's weights built and each photo's
    features extracted once per session."""
    cache = cache_sharing(tmp_path_factory.mktemp("cache"), shared_cache)
    monkeypatch.setenv("PAWNET_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def fresh_cache(tmp_path_factory, monkeypatch, _isolated_cache) -> Path:
    """An empty pawnet cache sharing nothing, for tests of the caching itself (what is made
    once, what a cold or damaged cache does)."""
    cache = tmp_path_factory.mktemp("fresh-cache")
    monkeypatch.setenv("PAWNET_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def own_features(tmp_path_factory, monkeypatch, shared_cache, _isolated_cache) -> Path:
    """A pawnet cache with no features in it yet, sharing the other content-addressed parts
    (converted models, weights), for tests that count feature extractions."""
    cache = cache_sharing(tmp_path_factory.mktemp("own-features"), shared_cache,
                          [part for part in SHARED_CACHE if part != "features"])
    monkeypatch.setenv("PAWNET_CACHE_DIR", str(cache))
    return cache


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
def trained_run(tmp_path_factory, shared_cache) -> Path:
    """A tiny real training run (1 epoch, 32 px) on real photos, shared by read-only tests."""
    base = tmp_path_factory.mktemp("trained")
    photos = copy_photos(base / "photos", 16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAWNET_CACHE_DIR", str(cache_sharing(base / "cache", shared_cache)))
        return pawnet.train(photos, model="pawnet-cnn", epochs=1, image_size=32, batch_size=8,
                            val_fraction=0.25, test_fraction=0.25, out=str(base / "run"))


def _full_size_run(base: Path, shared_cache: Path, model: str) -> Path:
    photos = copy_photos(base / "photos", 30)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAWNET_CACHE_DIR", str(cache_sharing(base / "cache", shared_cache)))
        return pawnet.train(photos, model=model, test_fraction=0.0, out=str(base / "run"))


@pytest.fixture(scope="session")
def lite0_run(tmp_path_factory, shared_cache) -> Path:
    """The default model (EfficientNet-Lite0 at its own 224 px) trained on 30 real photos a
    class, shared by read-only tests."""
    return _full_size_run(tmp_path_factory.mktemp("lite0"), shared_cache, "efficientnet-lite0")


@pytest.fixture(scope="session")
def joined_run(tmp_path_factory, shared_cache) -> Path:
    """The `best` preset's joined backbones (Lite1 and Lite2 at 260 px) trained on 30 real
    photos a class, shared by read-only tests."""
    return _full_size_run(tmp_path_factory.mktemp("joined"), shared_cache,
                          "efficientnet-lite1+lite2")


@pytest.fixture(scope="session")
def transfer_run(tmp_path_factory, shared_cache) -> Path:
    """A tiny real transfer-learning run (EfficientNet-Lite0 at 64 px, 5 epochs of the head)
    on real photos, shared by read-only tests (copy it to change it)."""
    base = tmp_path_factory.mktemp("transfer")
    photos = copy_photos(base / "photos", 10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAWNET_CACHE_DIR", str(cache_sharing(base / "cache", shared_cache)))
        return pawnet.train(photos, model="efficientnet-lite0", epochs=5, image_size=64,
                            batch_size=8, out=str(base / "run"))
