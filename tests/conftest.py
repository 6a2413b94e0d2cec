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
# single tests that train a model, start a process or run the built-in model, in modules that
# mix tiers and are not marked in their own file yet (move each to a mark in its module, then
# drop it here)
INTEGRATION_TESTS = {
    "tests/inference/test_examples.py::test_train_from_scratch",
    "tests/inference/test_examples.py::test_transfer_and_predict",
    "tests/inference/test_export.py::test_builtin_model_exports_when_given_photos_to_check_on",
    "tests/models/test_builtin.py::test_builtin_works_by_name_without_training",
    "tests/models/test_builtin.py::test_evaluate_builtin_on_a_folder",
    "tests/models/test_builtin.py::test_non_photos_are_neither",
    "tests/reporting/test_gradcam.py::test_a_transfer_models_heat_map_falls_on_the_pet",
    "tests/reporting/test_gradcam.py::test_the_builtin_models_heat_map_falls_on_the_pet",
    "tests/reporting/test_plots.py::test_importing_and_drawing_keep_the_users_backend",
    "tests/test_hostile.py::test_a_class_with_one_photo_trains_with_a_warning",
    "tests/test_hostile.py::test_train_never_writes_into_an_existing_folder",
    "tests/test_hostile.py::test_training_on_hostile_photos_uses_the_good_ones",
    "tests/training/test_distribute.py::test_a_killed_worker_stops_the_other_with_a_clear_error",
    "tests/training/test_distribute.py::test_a_transfer_model_from_two_workers_predicts_like",
    "tests/training/test_distribute.py::test_a_worker_listens_on_loopback_only_or_warns_that",
    "tests/training/test_distribute.py::test_a_worker_whose_peers_never_start_gives_up_after",
    "tests/training/test_distribute.py::test_mirrored_strategy_on_two_logical_cpus_trains_like",
    "tests/training/test_distribute.py::test_two_workers_train_like_one_process",
    "tests/training/test_distribute.py::test_workers_with_different_photos_stop_before_training",
    "tests/training/test_training.py::test_a_policy_that_leaves_many_photos_unanswered",
    "tests/training/test_training.py::test_bad_files_are_skipped_and_the_run_completes",
    "tests/training/test_training.py::test_disk_cache_is_used_then_removed",
    "tests/training/test_training.py::test_mixed_precision_trains_and_saves_a_float32_bundle",
    "tests/training/test_training.py::test_resume_after_a_kill_continues_from_the_last_finished",
    "tests/training/test_training.py::test_same_seed_repeats_the_run",
    "tests/training/test_training.py::test_three_classes",
    "tests/trust/test_ood.py::test_a_model_trained_on_small_photos_answers_small_photos",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` picks the tiers
def pytest_collection_modifyitems(config, items):
    for test in INTEGRATION_TESTS:  # a renamed test would silently go back to the unit tier
        module, name = test.split("::")
        if f"def {name}" not in (config.rootpath / module).read_text():
            raise pytest.UsageError(f"conftest.py INTEGRATION_TESTS names no test: {test}")
    for item in items:
        module = item.nodeid.split("::")[0]
        if (INTEGRATION_FIXTURES.intersection(item.fixturenames)
                or module in INTEGRATION_MODULES
                or any(item.nodeid.startswith(test) for test in INTEGRATION_TESTS)):
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
