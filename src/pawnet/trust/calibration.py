"""Calibrated probabilities: temperature scaling, fitted on the validation split at the end
of training and applied wherever a bundle's probabilities are read.

A temperature T > 1 softens over-confident probabilities and T < 1 sharpens timid ones,
without changing any label: `calibrate(p, T) = softmax(log(p) / T)` (for two classes
with one sigmoid unit, `sigmoid(logit(p) / T)`). T is chosen to minimise the negative
log-likelihood of the validation photos' true classes (Guo et al., 2017).
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-7  # probabilities are clipped here before the logarithm
TEMPERATURES = (0.05, 20.0)  # the search range
CALIBRATION_BINS = 15


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities `(N, classes)` rescaled by `temperature`; rows still sum to 1."""
    if temperature == 1.0 or len(probabilities) == 0:
        return probabilities
    logits = np.log(np.clip(probabilities, EPSILON, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def _nll(probabilities: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    chosen = calibrate(probabilities, temperature)[np.arange(len(truth)), truth]
    return float(-np.log(np.clip(chosen, EPSILON, 1.0)).mean())


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `truth` (class
    indices) under `probabilities`; 1.0 when there is nothing to fit on."""
    from scipy.optimize import minimize_scalar

    if len(truth) < 2:
        return 1.0
    low, high = np.log(TEMPERATURES)
    found = minimize_scalar(lambda log_t: _nll(probabilities, truth, float(np.exp(log_t))),
                            bounds=(low, high), method="bounded", options={"xatol": 1e-3})
    best = float(np.exp(found.x))
    return best if _nll(probabilities, truth, best) < _nll(probabilities, truth, 1.0) else 1.0


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins."""
    return float(sum(b["n"] / len(truth) * abs(b["accuracy"] - b["confidence"])
                     for b in reliability(probs, truth, bins)))


def reliability(probs: np.ndarray, truth: np.ndarray, bins: int = CALIBRATION_BINS
                ) -> list[dict[str, float]]:
    """Per confidence bin with photos in it: its range, photo count, mean confidence and
    accuracy; what a reliability diagram draws."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()),
             "accuracy": float(correct[which == b].mean())}
            for b in range(bins) if (which == b).any()]


COVERAGES = (1.0, 0.99, 0.98, 0.95, 0.9, 0.8)


def risk_coverage(probs: np.ndarray, truth: np.ndarray) -> dict[str, list]:
    """Accuracy when only the most confident photos are answered: the whole curve (`curve`:
    coverage, accuracy, confidence threshold per photo count, at most 200 points) and the
    rows at `COVERAGES` (`at`)."""
    confidence = probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    correct = (probs.argmax(axis=1) == truth)[order]
    n = len(truth)
    answered = np.arange(1, n + 1)
    accuracy = np.cumsum(correct) / answered

    def row(k: int) -> dict[str, float]:
        return {"coverage": k / n, "accuracy": float(accuracy[k - 1]),
                "threshold": float(confidence[order[k - 1]])}

    points = np.unique(np.linspace(1, n, min(n, 200)).round().astype(int))
    return {"curve": [row(int(k)) for k in points],
            "at": [row(max(1, round(c * n))) for c in COVERAGES]}


MIN_ANSWERED = 0.85  # the default policy never leaves more validation photos unanswered
UNANSWERED_WARNING = 0.15  # training warns when a policy leaves more than this unanswered


def choose_min_confidence(probs: np.ndarray, truth: np.ndarray, *,
                          max_error: float | None = None,
                          answer_share: float | None = None) -> float:
    """The lowest top probability to answer at, chosen on validation photos (most confident
    first) for one of three policies:

    - `max_error`: the most photos answered with at most that share of them wrong;
    - `answer_share`: that share of the photos answered;
    - neither (the default): as many left unanswered as half the share the model gets
      wrong, and at least `MIN_ANSWERED` answered, so a hard task is still answered
      mostly and an easy one almost always (docs/decisions.md).

    0.0 when every photo is answered; 1.0 when no photo can be (`max_error` unreachable).
    """
    n = len(truth)
    if n == 0:
        return 0.0
    confidence = probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    wrong = probs.argmax(axis=1)[order] != truth[order]
    if max_error is not None:
        ok = np.flatnonzero(np.cumsum(wrong) <= max_error * np.arange(1, n + 1))
        if len(ok) == 0:
            return 1.0
        answered = int(ok[-1]) + 1
    else:
        share = (answer_share if answer_share is not None
                 else min(1.0, max(MIN_ANSWERED, 1.0 - wrong.mean() / 2)))
        answered = max(1, int(np.ceil(share * n - 1e-9)))
    if answered >= n:
        return 0.0
    return float(confidence[order[answered - 1]])


def unanswered(probs: np.ndarray, min_confidence: float) -> float:
    """The share of photos whose top probability is below `min_confidence`."""
    return float((probs.max(axis=1) < min_confidence).mean()) if len(probs) else 0.0
