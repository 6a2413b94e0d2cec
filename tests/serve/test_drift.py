"""Drift monitoring in `pawnet serve`: the validation reference a training run records, the
window compared with it on real streams of photos (cats and dogs like the training photos,
everyday photos with no animal, only cats), the one warning per alert, /metrics and
/v1/drift, and a request answered whatever the monitor does.

The monitor alone is first tested without a model, on answers drawn from a synthetic
population (labels with fixed shares, gamma-distributed OOD scores) and a reference drawn
from it. The model is a Lite0 transfer run at 128 px on 200 cvtricks photos, half of them for
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
from scipy import stats

import pawnet
from pawnet.data.splits import read_manifest
from pawnet.inference.predictor import Prediction
from pawnet.run_folder import RunFolder
from pawnet.serve.app import create_app
from pawnet.serve.drift import (
    ALPHA,
    MIN_PHOTOS,
    DriftMonitor,
    Reference,
    monitor_for,
    reference_of,
)
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


def _warnings(caplog, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == DRIFT and r.levelno == level]


# --- the monitor alone: a synthetic reference, no model ----------------------------------

SHARES = {"cat": 0.45, "dog": 0.45, "unsure": 0.08, "neither": 0.02}  # the population's


def _population(n: int, seed: int, labels: dict[str, float] = SHARES,
                shift: float = 0.0) -> list[Prediction]:
    """`n` answers drawn like a model's on photos like its validation photos: labels with
    the shares `labels`, OOD scores from a gamma distribution (moved up by `shift`)."""
    rng = np.random.default_rng(seed)
    drawn = rng.choice(list(labels), n, p=list(labels.values()))
    scores = rng.gamma(4.0, 0.05, n) + shift
    return [Prediction(f"{i}.jpg", label=str(label), ood_score=float(score))
            for i, (label, score) in enumerate(zip(drawn, scores, strict=True))]


def _reference(answers: list[Prediction], labels=tuple(SHARES)) -> Reference:
    return Reference(len(answers), {label: sum(a.label == label for a in answers)
                                    for label in labels},
                     np.sort([a.ood_score for a in answers]), 0.5)


def test_the_window_holds_the_last_answered_photos():
    reference = _reference(_population(200, 0))
    monitor = DriftMonitor(["cat", "dog"], reference, window=5)
    stream = [Prediction(f"{i}.jpg", label="cat" if i < 3 else "dog", ood_score=i / 10)
              for i in range(7)]
    monitor.add(stream[:2])
    monitor.add([Prediction("notes.txt", error="not an image"),
                 Prediction("horse.jpg", label="horse", ood_score=0.1)])  # not a label
    monitor.add(stream[2:])
    found = monitor.summary()
    assert found["window"] == {"size": 5, "photos": 5, "min_photos": 5, "seen": 7}
    assert {label: entry["count"] for label, entry in found["labels"].items()} == {
        "cat": 1, "dog": 4, "unsure": 0, "neither": 0}
    assert found["labels"]["dog"]["share"] == 0.8
    expected = stats.ks_2samp([0.2, 0.3, 0.4, 0.5, 0.6], reference.scores)  # the last five
    assert found["score"]["statistic"] == pytest.approx(expected.statistic)
    assert found["score"]["p"] == pytest.approx(expected.pvalue)


@pytest.mark.parametrize(("label", "filler", "expected"), [("cat", "dog", [0.28, 0.71]),
                                                           ("neither", "cat", [0.0, 0.085])])
def test_the_share_p_values_and_the_plausible_ranges_agree(label, filler, expected):
    """Every count of a window of 200: its p-value is the two-sided tail of validation's
    beta-binomial, Bonferroni over the 4 labels, and at least `ALPHA` just when the count
    is inside the plausible range (docs/serving.md: 28-71 % for 52 of 105 validation
    photos, up to 17 photos for a label validation never gave)."""
    counts = {"cat": 52, "dog": 50, "unsure": 3, "neither": 0}
    reference = Reference(105, counts, np.array([]), 0.5)
    pmf = stats.betabinom.pmf(np.arange(201), 200, counts[label] + 0.5,
                              105 - counts[label] + 0.5)
    for count in range(201):
        monitor = DriftMonitor(["cat", "dog"], reference, window=200)
        monitor.add([Prediction("a.jpg", label=label)] * count
                    + [Prediction("b.jpg", label=filler)] * (200 - count))
        entry = monitor.summary()["labels"][label]
        low, high = (round(share * 200) for share in entry["plausible"])
        tail = min(pmf[: count + 1].sum(), pmf[count:].sum())
        assert entry["p"] == pytest.approx(min(1.0, 8 * tail), rel=1e-9, abs=1e-10)
        assert (entry["p"] >= ALPHA) == (low <= count <= high) == (not entry["outside"])
    assert entry["plausible"] == pytest.approx(expected, abs=0.005)


def test_a_second_alert_gets_its_own_warning(caplog):
    """The shares alert starts on a stream of only cats; while it holds, cats unlike the
    validation photos start the score alert: one warning each, then one line as each
    clears."""
    caplog.set_level(logging.INFO, logger="pawnet")
    monitor = DriftMonitor(["cat", "dog"], _reference(_population(200, 0)), window=200)
    assert _stream(monitor, _population(100, 1), caplog) is None
    shares_at = _stream(monitor, _population(150, 2, {"cat": 1.0}), caplog)
    assert shares_at is not None and len(_warnings(caplog)) == 1
    assert monitor.summary()["alert"]["score"] is None
    score_at = _stream(monitor, _population(150, 3, {"cat": 1.0}, shift=0.3), caplog)
    warnings = _warnings(caplog)
    print(f"\nonly cats: shares warning after {shares_at} requests; cats unlike validation "
          f"then: score warning after {score_at}; {warnings}")
    assert score_at is not None and len(warnings) == 2
    assert "cat " in warnings[0] and "OOD scores" not in warnings[0]
    assert "OOD scores KS" in warnings[1] and "cat " not in warnings[1]
    alert = monitor.summary()["alert"]
    assert alert["shares"]["since_photo"] == 100 + shares_at
    assert alert["score"]["since_photo"] == 250 + score_at
    assert alert["since_photo"] == 100 + shares_at
    _stream(monitor, _population(400, 4), caplog)
    assert not monitor.summary()["alert"]["active"] and len(_warnings(caplog)) == 2
    assert sorted(_warnings(caplog, logging.INFO)) == [
        "drift: cleared (OOD scores); the last 200 photos' OOD scores are like the "
        "validation photos' again",
        "drift: cleared (label shares); the last 200 photos' label shares are like the "
        "validation photos' again"]


def test_a_long_stream_like_the_validation_photos_raises_nothing(caplog):
    """5,000 requests drawn from the population the reference was drawn from."""
    monitor = DriftMonitor(["cat", "dog"], _reference(_population(200, 0)), window=200)
    assert _stream(monitor, _population(5000, 5), caplog) is None
    found = monitor.summary()
    assert found["window"]["seen"] == 5000 and not found["alert"]["active"]
    assert found["score"]["p"] > ALPHA and min(e["p"] for e in found["labels"].values()) > ALPHA


def test_a_large_window_of_many_labels_is_cheap_per_request_while_it_fills():
    """Window 10,000 and 102 labels, half full: the p-values come from the window's counts,
    not from a table of every count recomputed at each new size."""
    shares = {f"c{i}": 0.9 / 100 for i in range(100)} | {"unsure": 0.09, "neither": 0.01}
    classes = list(shares)[:100]
    monitor = DriftMonitor(classes, _reference(_population(2000, 6, shares), shares),
                           window=10_000)
    stream = _population(5020, 7, shares)
    monitor.add(stream[:5000])
    started = time.perf_counter()
    for answer in stream[5000:]:
        monitor.add([answer])
    per_request = (time.perf_counter() - started) / 20
    print(f"\ndrift monitor: {per_request * 1e3:.1f} ms per request (window 10,000 at 5,000 "
          "photos, 102 labels)")
    assert monitor.summary()["window"]["photos"] == 5020
    assert per_request < 0.05


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


@pytest.mark.integration
def test_a_fault_in_the_monitor_costs_the_client_nothing(predictor, caplog, monkeypatch):
    def broken(predictions):
        raise ValueError("a fault in the monitor")

    with TestClient(create_app(predictor, ServeSettings(max_batch=1))) as client:
        monkeypatch.setattr(client.app.state.pawnet.drift, "add", broken)
        answers = [_post(client, path) for path in PETS[:3]]
    assert [a["label"] for a in answers] == [r.label for r in predictor.predict(PETS[:3])]
    failed = [r for r in caplog.records if r.name == "pawnet.serve.app"
              and r.levelno == logging.ERROR]
    assert len(failed) == 1 and failed[0].exc_info[0] is ValueError  # once, not per request
    assert failed[0].getMessage().startswith("drift: the monitor failed")


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
