"""Temperature scaling: fitted to what the photos say, never changing a label, and carried
by the bundle to every runtime and export."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pawnet
from pawnet.inference.bundle import split_outputs
from pawnet.trust.calibration import calibrate, expected_calibration_error, fit_temperature


def _overconfident(n: int = 4000, right: float = 0.8, said: float = 0.99):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, n)
    predicted = np.where(rng.random(n) < right, truth, 1 - truth)
    probs = np.full((n, 2), 1 - said)
    probs[np.arange(n), predicted] = said
    return probs, truth


def test_an_overconfident_model_is_softened_to_its_real_accuracy():
    probs, truth = _overconfident()
    temperature = fit_temperature(probs, truth)
    assert temperature > 2
    calibrated = calibrate(probs, temperature)
    assert calibrated.max(axis=1).mean() == pytest.approx(0.8, abs=0.01)
    assert expected_calibration_error(calibrated, truth) < 0.02
    assert expected_calibration_error(probs, truth) > 0.15
    assert (calibrated.argmax(axis=1) == probs.argmax(axis=1)).all()  # no label changes
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)


def test_a_timid_model_is_sharpened_and_the_scaling_inverts():
    probs, truth = _overconfident(right=0.95, said=0.6)
    temperature = fit_temperature(probs, truth)
    assert temperature < 1
    np.testing.assert_allclose(calibrate(calibrate(probs, temperature), 1 / temperature),
                               probs, atol=1e-9)
    assert fit_temperature(probs[:1], truth[:1]) == 1.0  # nothing to fit on


def test_the_bundles_temperature_reaches_every_runtime_and_the_report(trained_run, tmp_path):
    spec = json.loads((trained_run / "bundle" / "bundle.json").read_text())
    photos = sorted((trained_run.parent / "photos").rglob("*.jpg"))[:6]
    keras = pawnet.load(trained_run, runtime="keras")
    raw, _ = split_outputs(keras.runtime(np.stack([keras.decode(p) for p in photos])),
                           keras.spec)
    want = calibrate(raw, spec["temperature"])
    for runtime in ("keras", "onnx"):
        results = pawnet.load(trained_run, runtime=runtime).predict(photos)
        got = np.array([[r.probabilities[c] for c in spec["class_names"]] for r in results])
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=runtime)
    report = pawnet.evaluate(trained_run)
    report.write(tmp_path / "eval")
    assert report.temperature == spec["temperature"]
    assert "expected_calibration_error_uncalibrated" in report.to_json()
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 5000
    assert sum(b["n"] for b in report.reliability) == report.n


def test_a_format_1_bundle_still_loads_uncalibrated(trained_run, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(trained_run / "bundle", bundle)
    spec = json.loads((bundle / "bundle.json").read_text())
    del spec["temperature"]
    (bundle / "bundle.json").write_text(json.dumps({**spec, "format_version": 1}))
    assert pawnet.load(bundle).spec.temperature == 1.0


def test_risk_coverage_answers_the_most_confident_first():
    from pawnet.trust.calibration import risk_coverage

    probs = np.array([[0.99, 0.01], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45], [0.2, 0.8]])
    truth = np.array([0, 0, 0, 0, 1])  # wrong only on the 0.6 photo
    rc = risk_coverage(probs, truth)
    assert [r["accuracy"] for r in rc["curve"]] == [1.0, 1.0, 1.0, 0.75, 0.8]
    assert [r["threshold"] for r in rc["curve"]] == [0.99, 0.9, 0.8, 0.6, 0.55]
    assert rc["at"][0] == {"coverage": 1.0, "accuracy": 0.8, "threshold": 0.55}


def test_the_report_shows_risk_coverage(trained_run, tmp_path):
    report = pawnet.evaluate(trained_run)
    report.write(tmp_path / "eval")
    at = report.risk_coverage["at"]
    assert at[0]["coverage"] == 1.0 and at[0]["accuracy"] == report.accuracy
    assert (tmp_path / "eval" / "risk_coverage.png").stat().st_size > 5000
    assert "risk-coverage" in (tmp_path / "eval" / "report.md").read_text()


def test_the_minimum_confidence_answers_the_most_photos_within_the_error_rate():
    from pawnet.trust.calibration import choose_min_confidence

    confidence = np.linspace(0.99, 0.51, 200)
    probs = np.column_stack([confidence, 1 - confidence])
    truth = np.zeros(200, int)
    assert choose_min_confidence(probs, truth, max_error=0.005) == 0.0  # all right: never unsure
    truth[[150, 180, 190]] = 1  # three wrong among the least confident
    found = choose_min_confidence(probs, truth, max_error=0.005)
    answered = confidence >= found
    assert (probs[answered].argmax(1) != truth[answered]).mean() <= 0.005
    assert answered.sum() == 150  # up to the first error: 1 in 151 would be 0.66%
    truth[0] = 1  # the most confident photo is wrong
    assert choose_min_confidence(probs[:1], truth[:1], max_error=0.005) == 1.0


def test_the_default_leaves_half_the_error_share_unanswered_and_answers_most():
    from pawnet.trust.calibration import MIN_ANSWERED, choose_min_confidence

    rng = np.random.default_rng(0)
    confidence = np.sort(rng.uniform(0.3, 1.0, 1000))[::-1]
    probs = np.column_stack([confidence, (1 - confidence) / 2, (1 - confidence) / 2])
    truth = np.zeros(1000, int)
    truth[rng.random(1000) > confidence] = 1  # calibrated: wrong as often as unsure
    wrong = (truth != 0).mean()
    found = choose_min_confidence(probs, truth)
    answered = confidence >= found
    assert answered.mean() == pytest.approx(max(MIN_ANSWERED, 1 - wrong / 2), abs=0.002)
    assert (truth[answered] == 0).mean() > (truth == 0).mean()  # answered: more often right
    share = choose_min_confidence(probs, truth, answer_share=0.6)
    assert (confidence >= share).mean() == pytest.approx(0.6, abs=0.002)
    assert choose_min_confidence(probs[:10], np.zeros(10, int)) == 0.0  # none wrong: all
