"""How sure a measured figure is: bootstrap 95% intervals of accuracy and per-class
precision and recall, and McNemar's exact test of two models on the same photos.

Both read only the true and predicted class of each photo, so the model card
(`reporting/card.py`) and the release gate (`reporting/compare.py`) state their
uncertainty the same way. Why these methods: docs/decisions.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROUNDS = 2000
LEVEL = 0.95
BLOCK_CELLS = 2**22  # resampled photo indices held at once


@dataclass(frozen=True)
class Interval:
    """A figure measured on the photos and its bootstrap interval (None: undefined)."""

    value: float | None
    low: float | None
    high: float | None

    def to_json(self) -> dict[str, float | None]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return self.format()

    def format(self, digits: int = 3) -> str:
        """"0.990 [0.975, 1.000]"; "n/a" when undefined."""
        if self.value is None:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Intervals:
    """Accuracy, and precision and recall per class (index order), each with its interval."""

    accuracy: Interval
    precision: list[Interval]
    recall: list[Interval]


def _resampled(truth: np.ndarray, predicted: np.ndarray, k: int, rounds: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class, in `rounds` resamples of the photos with replacement: the photos right,
    the photos of the class and the photos predicted as it (each (rounds, k)), a block of
    rounds at a time. Memory O(rounds k + BLOCK_CELLS), whatever the number of classes."""
    n = len(truth)
    rng = np.random.default_rng(seed)
    right, present, chosen = (np.empty((rounds, k), np.int64) for _ in range(3))
    step = max(1, BLOCK_CELLS // max(n, 1))
    for start in range(0, rounds, step):
        stop = min(rounds, start + step)
        picks = rng.integers(0, n, size=(stop - start, n))
        true, said = truth[picks], predicted[picks]
        offsets = np.arange(stop - start)[:, None] * k
        cells = (stop - start) * k
        right[start:stop] = np.bincount((true + offsets)[true == said],
                                        minlength=cells).reshape(-1, k)
        present[start:stop] = np.bincount((true + offsets).ravel(), minlength=cells).reshape(-1, k)
        chosen[start:stop] = np.bincount((said + offsets).ravel(), minlength=cells).reshape(-1, k)
    return right, present, chosen


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / np.maximum(bottom, 1), np.nan)


def _interval(value: float, samples: np.ndarray, level: float) -> Interval:
    if not np.isfinite(value):
        return Interval(None, None, None)
    kept = samples[np.isfinite(samples)]
    if len(kept) == 0:
        return Interval(float(value), None, None)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(kept, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))


def bootstrap(truth: np.ndarray, predicted: np.ndarray, n_classes: int, *,
              rounds: int = ROUNDS, level: float = LEVEL, seed: int = 0) -> Intervals:
    """Percentile bootstrap intervals of accuracy and per-class precision and recall:
    the photos resampled with replacement `rounds` times (seeded, so a report is
    reproducible). A class never predicted has no precision; never present, no recall."""
    truth, predicted = np.asarray(truth, np.int64), np.asarray(predicted, np.int64)
    if len(truth) == 0:
        raise ValueError("no photos to measure")
    k = n_classes
    full = np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
    right, present, chosen = _resampled(truth, predicted, k, rounds, seed)
    accuracy = _interval(np.trace(full) / len(truth), right.sum(1) / len(truth), level)
    precision = [_interval(_ratio(full[i, i], full[:, i].sum()),
                           _ratio(right[:, i], chosen[:, i]), level) for i in range(k)]
    recall = [_interval(_ratio(full[i, i], full[i].sum()),
                        _ratio(right[:, i], present[:, i]), level) for i in range(k)]
    return Intervals(accuracy, precision, recall)


@dataclass(frozen=True)
class McNemar:
    """Two models on the same photos: how many only the first got right (`only_first`),
    only the second (`only_second`), and the exact two-sided p-value that they are
    equally often right."""

    only_first: int
    only_second: int
    p_value: float


def mcnemar(first_right: np.ndarray, second_right: np.ndarray) -> McNemar:
    """McNemar's exact test (a binomial test on the photos the two models disagree on)."""
    from scipy.stats import binomtest

    first_right = np.asarray(first_right, bool)
    second_right = np.asarray(second_right, bool)
    if first_right.shape != second_right.shape:
        raise ValueError("the two models were measured on different photos")
    only_first = int((first_right & ~second_right).sum())
    only_second = int((~first_right & second_right).sum())
    disagree = only_first + only_second
    p = 1.0 if disagree == 0 else float(binomtest(only_first, disagree, 0.5).pvalue)
    return McNemar(only_first, only_second, min(1.0, p))
