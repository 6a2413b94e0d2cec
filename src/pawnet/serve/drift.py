"""Drift monitoring for `pawnet serve`: are the photos clients send still like the
validation photos the model was checked on?

A sliding window holds the label (a class, `unsure` or `neither`) and the OOD score of the
last `drift_window` answered photos; photos that could not be read never enter it. After
each request it is compared with what the validation photos showed at training time (the
`reference` of the bundle's provenance.json, `pawnet.training.trust.validation_reference`):

- each label's share: its count in the window against the beta-binomial posterior
  predictive of validation's count (Jeffreys prior) at the window's size, two-sided, with a
  Bonferroni correction over the labels. It counts the doubt in both samples, and stays
  sensible for rates that were 0 on validation (`neither`), where a normal approximation
  would call one photo a drift;
- the OOD score (the one number about a photo's features that every runtime returns): a
  two-sample Kolmogorov-Smirnov test between the window's scores and the validation
  photos' sample.

Each of the two has its alert. It starts when a p-value falls below `ALPHA` (for the
scores, with a KS statistic of at least `MIN_KS`) once the window holds `MIN_PHOTOS`
photos, and logs one warning; it clears, with one line, once its p-values are back above
`CLEAR_ALPHA`. `add` runs on the server's event loop, so its work per request stays small
at any window: the share p-values are computed at the window's counts only, the plausible
ranges only for `summary` and a warning. Why these tests and values: docs/decisions.md.
Pure NumPy and SciPy: the routes and the gauges read `summary` and `gauges`.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from scipy import stats

from pawnet.trust.verdict import NEITHER, UNSURE

log = logging.getLogger(__name__)

MIN_PHOTOS = 50  # no alert before the window holds this many photos (docs/decisions.md)
ALPHA = 0.001  # an alert starts below this p-value (labels: Bonferroni-corrected)
CLEAR_ALPHA = 0.01  # and clears once its p-values are above this
MIN_KS = 0.25  # a smaller KS statistic starts no alert, however small its p-value
WHAT = ("shares", "score")  # the two things watched, as /metrics and /v1/drift name them
SAID = {"shares": "label shares", "score": "OOD scores"}  # as the log lines name them
RETRAIN = ("Try: train the model again with this pawnet (its bundle then records what "
           "the validation photos showed)")


@dataclass(frozen=True)
class Reference:
    """What the validation photos showed: each label's count of `n` photos, a sample of
    their OOD scores, and the minimum confidence the labels were counted at."""

    n: int
    counts: dict[str, int]
    scores: np.ndarray
    min_confidence: float | None
    created: str | None = None


def reference_of(provenance: dict, labels: Sequence[str]) -> tuple[Reference | None, str]:
    """The bundle's validation reference for `labels`, or None and why there is none."""
    if "builtin" in provenance:
        return None, "a built-in model has no validation photos to compare with"
    found = provenance.get("reference")
    if not isinstance(found, dict):
        version = (provenance.get("versions") or {}).get("pawnet", "an older pawnet")
        return None, (f"this bundle records no validation reference (trained with pawnet "
                      f"{version}, before drift monitoring, or without validation photos). "
                      f"{RETRAIN}")
    try:
        n, counts = int(found["n"]), {k: int(v) for k, v in found["counts"].items()}
        scores = np.sort(np.asarray(found.get("ood_scores") or [], dtype=np.float64))
        min_confidence = found.get("min_confidence")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, f"the bundle's validation reference is damaged. {RETRAIN}"
    if n < 1 or sorted(counts) != sorted(labels) or sum(counts.values()) != n:
        return None, (f"the bundle's validation reference counts {sorted(counts)}, not this "
                      f"model's labels {sorted(labels)}. {RETRAIN}")
    return Reference(n, counts, scores[np.isfinite(scores)],
                     None if min_confidence is None else float(min_confidence),
                     provenance.get("created")), ""


@dataclass(frozen=True)
class _Found:
    """One comparison of the window with the reference."""

    photos: int
    counts: np.ndarray  # per label
    share_p: np.ndarray | None  # per label, Bonferroni-corrected; None: not compared
    ks: float | None = None
    ks_p: float | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _beyond(found: _Found) -> dict[str, tuple[bool, bool]]:
    """For each thing watched: (an alert would start: p below `ALPHA`, and for the scores a
    KS statistic of at least `MIN_KS`; an alert holds: p below `CLEAR_ALPHA`)."""
    shares = 1.0 if found.share_p is None else float(found.share_p.min())
    ks, ks_p = found.ks or 0.0, 1.0 if found.ks_p is None else found.ks_p
    return {"shares": (shares < ALPHA, shares < CLEAR_ALPHA),
            "score": (ks_p < ALPHA and ks >= MIN_KS, ks_p < CLEAR_ALPHA)}


def _tails(counts: np.ndarray, n: int, a: np.ndarray, b: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """P(count or fewer) and P(count or more) of each label's `counts` of `n` photos, for
    beta-binomials of parameters `a`, `b`: the probabilities of 0..count summed, n + labels
    terms in all. A table of every count would cost labels x n at each new `n` (the window
    filling), and `betabinom.cdf` and `.sf` add their overhead twice per request."""
    ends = np.cumsum(counts + 1)
    row = np.repeat(np.arange(len(counts)), counts + 1)
    k = np.arange(ends[-1]) - np.repeat(ends - counts - 1, counts + 1)  # 0..count per label
    pmf = stats.betabinom.pmf(k, n, a[row], b[row])
    fewer = np.bincount(row, pmf, len(counts))
    return fewer, np.clip(1.0 - fewer + pmf[ends - 1], 0.0, 1.0)


def _plausible_counts(n: int, a: np.ndarray, b: np.ndarray, labels: int) -> np.ndarray:
    """(fewest, most) photos of `n` for each label of beta parameters `a`, `b`: the counts
    whose share p-value (Bonferroni over `labels`) is at least `ALPHA`."""
    q = ALPHA / (2 * labels)
    return np.stack([stats.betabinom.ppf(q, n, a, b), stats.betabinom.isf(q, n, a, b)],
                    axis=1).astype(np.int64)


class DriftMonitor:
    """The window of the last `window` answered photos and the alert state.

    Args:
        classes: the model's class names; `unsure` and `neither` are watched too.
        reference: what validation showed, or None (`why_none` says why): shares are
            still reported, nothing is compared.
        window: photos in the window. Defaults to 200.
        shares_off: why the label shares cannot be compared with validation's (the
            server answers `unsure` at another minimum confidence); None: they can.
        scores_off: why the OOD scores cannot be compared; None: they can.
    """

    def __init__(self, classes: Sequence[str], reference: Reference | None,
                 why_none: str = "", window: int = 200, *, shares_off: str | None = None,
                 scores_off: str | None = None):
        self.labels = [*classes, UNSURE, NEITHER]
        self.reference, self.why_none = reference, why_none
        self.window, self.min_photos = window, min(MIN_PHOTOS, window)
        if reference is not None and not len(reference.scores):
            scores_off = scores_off or "the validation reference holds no OOD scores"
        self.off = {"shares": shares_off, "score": scores_off}
        self._index = {label: i for i, label in enumerate(self.labels)}
        self._labels: collections.deque[int] = collections.deque(maxlen=window)
        self._scores: collections.deque[float] = collections.deque(maxlen=window)
        self._counts = np.zeros(len(self.labels), np.int64)
        if reference is not None:  # validation's posterior of each label's rate: Beta(a, b)
            seen = np.array([reference.counts[label] for label in self.labels], np.float64)
            self._beta = (seen + 0.5, reference.n - seen + 0.5)
        self._plausible_at: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()
        self.seen = 0  # photos ever added
        self.since: dict[str, tuple[str, int] | None] = dict.fromkeys(WHAT)  # time, photo
        self.found = _Found(0, self._counts.copy(), None)

    def add(self, predictions: Iterable) -> None:
        """Put answered `Prediction`s in the window (error entries are left out), compare
        it with the reference, and log one line for each alert that starts or clears."""
        with self._lock:
            if not self._put(predictions):
                return
            self.found = found = self._compare()
            started, cleared = self._update_alerts()
        for what in started:
            log.warning(f"drift: the last {found.photos} photos are unlike the validation "
                        f"photos: {'; '.join(self._outside(found, what))}. Try: GET "
                        "/v1/drift for the figures; if clients now send such photos, train "
                        "the model with some of them")
        for what in cleared:
            log.info(f"drift: cleared ({SAID[what]}); the last {found.photos} photos' "
                     f"{SAID[what]} are like the validation photos' again")

    def _put(self, predictions: Iterable) -> int:
        """Put the answered `predictions` in the window; how many there were."""
        added = 0
        for p in predictions:
            if getattr(p, "error", None) is not None or p.label not in self._index:
                continue
            if len(self._labels) == self.window:
                self._counts[self._labels[0]] -= 1
            self._labels.append(self._index[p.label])
            self._counts[self._labels[-1]] += 1
            self._scores.append(math.nan if p.ood_score is None else float(p.ood_score))
            added += 1
        self.seen += added
        return added

    def _compare(self) -> _Found:
        n = len(self._labels)
        counts = self._counts.copy()
        if self.reference is None:
            return _Found(n, counts, None)
        share_p = None
        if self.off["shares"] is None:
            fewer, more = _tails(counts, n, *self._beta)
            share_p = np.minimum(1.0, 2 * len(self.labels) * np.minimum(fewer, more))
        if self.off["score"] is not None:
            return _Found(n, counts, share_p)
        scores = np.fromiter(self._scores, np.float64, n)
        if np.isnan(scores).any():  # a model without the OOD column: nothing to test
            return _Found(n, counts, share_p)
        test = stats.ks_2samp(scores, self.reference.scores)
        return _Found(n, counts, share_p, float(test.statistic), float(test.pvalue))

    def _plausible(self, n: int) -> np.ndarray:
        """(fewest, most) photos of each label in a window of `n` that validation makes
        plausible (kept for the last `n`: the window's size once full)."""
        cached = self._plausible_at
        if cached is None or cached[0] != n:
            cached = (n, _plausible_counts(n, *self._beta, len(self.labels)))
            self._plausible_at = cached  # one assignment: `summary` runs without the lock
        return cached[1]

    def _update_alerts(self) -> tuple[list[str], list[str]]:
        """Start or clear each alert; returns (those started, those cleared)."""
        started, cleared = [], []
        armed = self.found.photos >= self.min_photos
        for what, (starts, holds) in _beyond(self.found).items():
            if self.since[what] is None and armed and starts:
                self.since[what] = (_now(), self.seen)
                started.append(what)
            elif self.since[what] is not None and not holds:
                self.since[what] = None
                cleared.append(what)
        return started, cleared

    def _outside(self, found: _Found, what: str) -> list[str]:
        """What is beyond what validation makes plausible in `what`, for its warning."""
        ref, n = self.reference, found.photos
        if what == "score":
            return [f"OOD scores KS {found.ks:.2f} (p {found.ks_p:.1g})"]
        rows = np.flatnonzero(found.share_p < ALPHA)  # only these: the warning is on the loop
        plausible = _plausible_counts(n, *(x[rows] for x in self._beta), len(self.labels))
        return [f"{self.labels[i]} {found.counts[i] / n:.0%} (validation "
                f"{ref.counts[self.labels[i]] / ref.n:.0%}, plausible {low / n:.0%}-"
                f"{high / n:.0%})" for i, (low, high) in zip(rows, plausible, strict=True)]

    def summary(self) -> dict:
        """What `/v1/drift` answers (see docs/serving.md#drift)."""
        with self._lock:  # a consistent view; the work is done without holding `add` up
            found, since, seen = self.found, dict(self.since), self.seen
        ref, n = self.reference, found.photos
        plausible = None if found.share_p is None else self._plausible(n)
        labels = {}
        for i, label in enumerate(self.labels):
            entry = {"count": int(found.counts[i]),
                     "share": round(float(found.counts[i] / n), 6) if n else None}
            if ref is not None:
                entry["validation"] = round(ref.counts[label] / ref.n, 6)
            if plausible is not None:
                low, high = (plausible[i] / n).round(6)
                entry.update(plausible=[float(low), float(high)], p=float(found.share_p[i]),
                             outside=bool(found.share_p[i] < ALPHA))
            labels[label] = entry
        return {
            "window": {"size": self.window, "photos": n, "min_photos": self.min_photos,
                       "seen": seen},
            "reference": None if ref is None else {
                "photos": ref.n, "ood_scores": len(ref.scores),
                "min_confidence": ref.min_confidence, "created": ref.created},
            "no_reference": self.why_none if ref is None else None,
            "alpha": ALPHA, "clear_alpha": CLEAR_ALPHA,
            "labels": labels,
            "shares_off": self.why_none if ref is None else self.off["shares"],
            "score": self._score(found),
            "alert": _alert(since),
        }

    def _score(self, found: _Found) -> dict:
        ref = self.reference
        return {"test": "two-sample Kolmogorov-Smirnov: OOD scores, window vs validation",
                "statistic": found.ks, "p": found.ks_p,
                "outside": None if found.ks_p is None else _beyond(found)["score"][0],
                "min_statistic": MIN_KS,
                "window": found.photos, "validation": 0 if ref is None else len(ref.scores),
                "off": self.why_none if ref is None else self.off["score"]}

    def gauges(self) -> dict:
        """What `/metrics` shows: window photos, shares, the KS statistic and p-value,
        each alert (1: held)."""
        with self._lock:
            found, n = self.found, self.found.photos
            return {"photos": n,
                    "shares": {label: (float(found.counts[i] / n) if n else math.nan)
                               for i, label in enumerate(self.labels)},
                    "score": found.ks, "score_p": found.ks_p,
                    "alerts": {what: int(since is not None)
                               for what, since in self.since.items()}}


def _alert(since: dict[str, tuple[str, int] | None]) -> dict:
    """`/v1/drift`'s `alert`: whether one is held, since when, and each one."""
    held = [at for at in since.values() if at is not None]
    first = min(held, default=None, key=lambda at: at[1])
    return {"active": bool(held),
            "since": None if first is None else first[0],
            "since_photo": None if first is None else first[1],
            **{what: None if at is None else {"since": at[0], "since_photo": at[1]}
               for what, at in since.items()}}


def monitor_for(predictor, window: int) -> DriftMonitor:
    """The monitor of a serving `Predictor`: its classes, its bundle's reference; the
    shares are not compared when the server answers `unsure` at another minimum confidence
    than the one validation's labels were counted at."""
    reference, why = reference_of(predictor.bundle.provenance, [*predictor.classes, UNSURE,
                                                                 NEITHER])
    shares_off = scores_off = None
    if reference is not None and reference.min_confidence is not None and not math.isclose(
            reference.min_confidence, predictor.min_confidence, abs_tol=1e-9):
        shares_off = (f"validation's labels were counted at minimum confidence "
                      f"{reference.min_confidence:g}; this server answers at "
                      f"{predictor.min_confidence:g}")
    if predictor.spec.ood_threshold is None:
        scores_off = "this model has no OOD score column"
    return DriftMonitor(predictor.classes, reference, why, window, shares_off=shares_off,
                        scores_off=scores_off)
