"""Bootstrap intervals and McNemar's test: the figures and their uncertainty, as the model
card and the release gate report them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from pawnet.reporting.intervals import bootstrap, mcnemar


def _answers(n: int, accuracy: float, seed: int = 1, k: int = 2):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    predicted = np.where(rng.random(n) < accuracy, truth, (truth + 1) % k)
    return truth, predicted


def test_intervals_hold_the_figures_and_narrow_with_more_photos():
    widths = []
    for n in (100, 1600):
        truth, predicted = _answers(n, 0.9)
        found = bootstrap(truth, predicted, 2)
        assert found.accuracy.value == pytest.approx((truth == predicted).mean())
        for i in range(2):
            recall = found.recall[i]
            assert recall.value == pytest.approx((predicted[truth == i] == i).mean())
            assert recall.low <= recall.value <= recall.high
            precision = found.precision[i]
            assert precision.value == pytest.approx((truth[predicted == i] == i).mean())
            assert precision.low <= precision.value <= precision.high
        # about the normal approximation's 95% width: 2 * 1.96 * sqrt(p (1 - p) / n)
        p = found.accuracy.value
        widths.append(found.accuracy.high - found.accuracy.low)
        assert widths[-1] == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.2)
    assert widths[1] < widths[0] / 2


def test_intervals_are_reproducible_and_cover_several_classes():
    truth, predicted = _answers(3000, 0.8, k=3)
    first, again = bootstrap(truth, predicted, 3), bootstrap(truth, predicted, 3)
    assert first == again
    assert len(first.recall) == len(first.precision) == 3


def test_a_class_never_predicted_has_no_precision_and_one_never_present_no_recall():
    truth = np.array([0, 0, 1, 1, 0])
    found = bootstrap(truth, np.zeros(5, int), 3)
    assert found.precision[1].value is None and str(found.precision[1]) == "n/a"
    assert found.recall[2].value is None
    assert found.recall[0].value == 1.0 and found.recall[1].value == 0.0
    with pytest.raises(ValueError):
        bootstrap(np.array([], int), np.array([], int), 2)


def test_mcnemar_is_the_exact_binomial_test_on_the_photos_the_models_disagree_on():
    first = np.array([True] * 10 + [False] * 2 + [True] * 50 + [False] * 5)
    second = np.array([False] * 10 + [True] * 2 + [True] * 50 + [False] * 5)
    found = mcnemar(first, second)
    assert (found.only_first, found.only_second) == (10, 2)
    assert found.p_value == pytest.approx(binomtest(10, 12, 0.5).pvalue)
    assert found.p_value == pytest.approx(0.0386, abs=1e-4)
    assert mcnemar(first, first).p_value == 1.0
    with pytest.raises(ValueError):
        mcnemar(first, second[:-1])


def test_a_thousand_classes_need_no_table_per_resample():
    import resource

    truth, predicted = _answers(5000, 0.9, k=1000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = bootstrap(truth, predicted, 1000)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert found.accuracy.low <= found.accuracy.value <= found.accuracy.high
    assert grown_mb < 400  # a confusion table per resample would be 2000 x 10^6 cells
