"""Drift monitoring in `pawnet serve`: the validation reference a training run records, the
window compared with it on real streams of photos (cats and dogs like the training photos,
everyday photos with no animal, only cats), the one warning, /metrics and /v1/drift.

The model is a Lite0 transfer run at 128 px on 200 cvtricks photos, half of them for
validation, trained here: a run trained before drift monitoring has no reference. The
streams are cvtricks test photos (none trained on) and ood_photos; the delays are printed
(`pytest -s`)."""

from __future__ import annotations

import json
import logging
import shutil
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import CVTRICKS, SHARED_DATA, copy_photos, real_photos

import pawnet
from pawnet.data.splits import read_manifest
from pawnet.inference.predictor import Prediction
from pawnet.run_folder import RunFolder
from pawnet.serve.app import create_app
from pawnet.serve.drift import ALPHA, MIN_PHOTOS, DriftMonitor, monitor_for, reference_of
from pawnet.serve.settings import ServeSettings

PETS = [p for pair in zip(real_photos("cat", 50, "test"), real_photos("dog", 50, "test"),
                          strict=True) for p in pair]  # cat, dog, cat, ...: 100 photos
CATS = sorted((CVTRICKS / "test" / "cat").glob("*.jpg"))[50:200]  # 150 others
EVERYDAY = sorted((SHARED_DATA / "ood_photos").glob("*.jpg"))  # 101, no animal
DRIFT = "pawnet.serve.drift"


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("drift")
    photos = copy_photos(base / "photos", 100)
    return pawnet.train(photos, model="efficientnet-lite0", epochs=5, image_size=128,
                        batch_size=16, val_fraction=0.5, test_fraction=0.0,
                        out=str(base / "run"), verbose=False)


@pytest.fixture(scope="module")
def predictor(drift_run):
    return pawnet.load(drift_run)


@pytest.fixture(scope="module")
def answers(predictor) -> dict[str, list[Prediction]]:
    """The model's answers to each stream, once: what the server would add to its window."""
    return {name: predictor.predict(paths)
            for name, paths in (("pets", PETS), ("cats", CATS), ("everyday", EVERYDAY))}


def _stream(monitor: DriftMonitor, predictions, caplog) -> int | None:
    """Add all `predictions`, one per request; the request (1-based) after which a drift
    warning was first logged, or None."""
    first = None
    for i, prediction in enumerate(predictions, 1):
        before = len(_warnings(caplog))
        monitor.add([prediction])
        if first is None and len(_warnings(caplog)) > before:
            first = i
    return first


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == DRIFT and r.levelno == logging.WARNING]


# --- the reference, recorded at training time --------------------------------------------


@pytest.mark.integration
def test_the_reference_is_what_the_served_model_answers_on_the_validation_photos(
        drift_run, predictor):
    reference = json.loads((drift_run / "bundle" / "provenance.json").read_text())["reference"]
    val = [p.path for p in read_manifest(RunFolder(drift_run).manifest) if p.split == "val"]
    served = predictor.predict(val)
    assert reference["n"] == len(val) == 105
    labels = [*predictor.classes, "unsure", "neither"]
    assert reference["counts"] == {label: sum(r.label == label for r in served)
                                   for label in labels}
    assert reference["min_confidence"] == predictor.min_confidence
    assert reference["ood_threshold"] == predictor.spec.ood_threshold
    assert np.allclose(reference["ood_scores"], sorted(r.ood_score for r in served), atol=1e-4)
    found, why = reference_of({"reference": reference}, labels)
    assert found.n == 105 and len(found.scores) == 105 and why == ""


# --- the window on real streams ------------------------------------------------------------


@pytest.mark.integration
def test_pets_like_the_training_photos_raise_nothing_and_everyday_photos_one_warning(
        predictor, answers, caplog):
    caplog.set_level(logging.INFO, logger="pawnet")
    monitor = monitor_for(predictor, 200)
    assert _stream(monitor, answers["pets"], caplog) is None
    before = monitor.summary()
    for label, entry in before["labels"].items():
        assert not entry["outside"], (label, entry)
        assert abs(entry["share"] - entry["validation"]) < 0.12, (label, entry)
    assert before["score"]["p"] > ALPHA and not before["alert"]["active"]
    delay = _stream(monitor, answers["everyday"], caplog)
    after = monitor.summary()
    print(f"\neveryday photos after 100 pets, window 200: warning after {delay} requests; "
          f"KS {before['score']['statistic']:.3f} (p {before['score']['p']:.2g}) -> "
          f"{after['score']['statistic']:.3f} (p {after['score']['p']:.2g}); "
          f"warning: {_warnings(caplog)}")
    assert delay is not None and delay <= 30
    assert after["score"]["outside"] and after["alert"]["active"]
    assert after["alert"]["since_photo"] == 100 + delay
    assert len(_warnings(caplog)) == 1  # once when it starts, not once per request
    for prediction in answers["pets"] * 3:  # the everyday photos leave the window
        monitor.add([prediction])
    assert not monitor.summary()["alert"]["active"]
    assert len(_warnings(caplog)) == 1
    cleared = [r.getMessage() for r in caplog.records
               if r.name == DRIFT and r.levelno == logging.INFO]
    assert len(cleared) == 1 and cleared[0].startswith("drift: cleared")


@pytest.mark.integration
def test_a_stream_of_only_cats_moves_the_shares(predictor, answers, caplog):
    caplog.set_level(logging.INFO, logger="pawnet")
    monitor = monitor_for(predictor, 200)
    _stream(monitor, answers["pets"], caplog)
    delay = _stream(monitor, answers["cats"], caplog)
    found = monitor.summary()
    print(f"\nonly cats after 100 pets, window 200: warning after {delay} requests; cat share "
          f"{found['labels']['cat']['share']:.2f} (validation "
          f"{found['labels']['cat']['validation']:.2f}, plausible "
          f"{found['labels']['cat']['plausible']}); KS {found['score']['statistic']:.3f} "
          f"(p {found['score']['p']:.2g}); warning: {_warnings(caplog)}")
    assert delay is not None and delay <= 120
    assert found["labels"]["cat"]["outside"] and found["alert"]["shares"] is not None
    assert _warnings(caplog)[0].startswith("drift: the last ")
    assert "cat " in _warnings(caplog)[0] or "dog " in _warnings(caplog)[0]  # its complement


@pytest.mark.integration
def test_no_alert_before_the_window_holds_enough_photos(predictor, answers, caplog):
    monitor = monitor_for(predictor, 200)
    assert _stream(monitor, answers["everyday"][: MIN_PHOTOS - 1], caplog) is None
    assert monitor.summary()["score"]["p"] < ALPHA  # already clear, but too few to say so
    assert _stream(monitor, answers["everyday"][MIN_PHOTOS - 1 :], caplog) == 1


@pytest.mark.integration
def test_errors_never_enter_the_window_and_the_work_per_request_is_small(predictor, answers):
    monitor = monitor_for(predictor, 200)
    monitor.add([Prediction("notes.txt", error="not an image")] * 5)
    assert monitor.summary()["window"]["photos"] == 0
    stream = answers["pets"] * 3
    started = time.perf_counter()
    for prediction in stream:
        monitor.add([prediction])
    per_request = (time.perf_counter() - started) / len(stream)
    print(f"\ndrift monitor: {per_request * 1e3:.3f} ms per request (window 200, full)")
    assert monitor.summary()["window"] == {"size": 200, "photos": 200, "min_photos": 50,
                                           "seen": 300}
    assert per_request < 0.02


@pytest.mark.integration
def test_another_minimum_confidence_turns_the_share_tests_off(drift_run, answers):
    served = pawnet.load(drift_run, min_confidence=0.9)
    monitor = monitor_for(served, 200)
    for prediction in answers["cats"]:
        monitor.add([prediction])
    found = monitor.summary()
    assert "minimum confidence" in found["shares_off"]
    assert "outside" not in found["labels"]["cat"] and found["labels"]["cat"]["share"] > 0.8
    assert found["alert"]["shares"] is None and found["score"]["p"] is not None


# --- the server ---------------------------------------------------------------------------


def _post(client, path) -> dict:
    response = client.post("/v1/predict", files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    return response.json()[0]


@pytest.mark.integration
def test_the_server_watches_what_it_answers(predictor, caplog):
    caplog.set_level(logging.INFO, logger="pawnet")
    with TestClient(create_app(predictor, ServeSettings(max_batch=4))) as client:
        empty = client.get("/v1/drift").json()
        assert empty["window"]["photos"] == 0 and empty["reference"]["photos"] == 105
        for path in PETS:
            _post(client, path)
        bad = client.post("/v1/predict", files={"file": ("notes.txt", b"not a photo")})
        assert bad.status_code == 422
        assert client.get("/v1/drift").json()["window"]["photos"] == 100  # not the error
        delay = next((i for i, path in enumerate(EVERYDAY, 1)
                      if _post(client, path) and _warnings(caplog)), None)
        drift = client.get("/v1/drift").json()
        metrics = client.get("/metrics").text
    print(f"\nserver: everyday photos after 100 pets: warning after {delay} requests")
    assert delay is not None and delay <= 30 and len(_warnings(caplog)) == 1
    assert drift["window"] == {"size": 200, "photos": 100 + delay, "min_photos": 50,
                               "seen": 100 + delay}
    assert drift["alert"]["active"] and drift["alert"]["since"] and drift["no_reference"] is None
    assert set(drift["labels"]) == {"cat", "dog", "unsure", "neither"}
    assert {"count", "share", "validation", "plausible", "p", "outside"} <= set(
        drift["labels"]["cat"])
    assert drift["score"]["validation"] == 105 and drift["score"]["p"] < ALPHA
    assert 'pawnet_drift_share{label="neither"}' in metrics
    assert f"pawnet_drift_window_photos {100 + delay}.0" in metrics
    assert 'pawnet_drift_alert{what="score"} 1.0' in metrics
    assert f"pawnet_drift_score {drift['score']['statistic']}" in metrics


@pytest.mark.integration
def test_a_bundle_without_a_reference_still_serves_and_says_why(drift_run, tmp_path):
    """A bundle trained before drift monitoring serves, and /v1/drift says why it compares
    nothing; only /v1/predict's photos enter the window."""
    bundle = shutil.copytree(drift_run / "bundle", tmp_path / "bundle")
    provenance = json.loads((bundle / "provenance.json").read_text())
    del provenance["reference"]
    (bundle / "provenance.json").write_text(json.dumps(provenance))
    with TestClient(create_app(bundle, ServeSettings(max_batch=1))) as client:
        for path in PETS[:4]:
            _post(client, path)
        explained = client.post("/v1/explain", files={"file": ("cat.jpg", PETS[0].read_bytes())})
        assert explained.status_code == 200, explained.text  # a photo labelled again: not counted
        drift = client.get("/v1/drift").json()
        metrics = client.get("/metrics").text
    assert drift["reference"] is None and "no validation reference" in drift["no_reference"]
    assert "Try: train the model again" in drift["no_reference"]
    assert drift["window"]["photos"] == 4 and drift["score"]["statistic"] is None
    assert sum(e["count"] for e in drift["labels"].values()) == 4
    assert not drift["alert"]["active"]
    assert 'pawnet_drift_share{label="cat"}' in metrics and "pawnet_drift_score " not in metrics
