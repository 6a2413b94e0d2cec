"""What a model answers for one photo: one of its classes, or "I don't know" with the reason.

In this order:

1. `unsure`, too small: the photo's shorter side is below the bundle's `min_side`, the
   size under which the model's accuracy on shrunk validation photos fell away
   (`choose_min_side`, at training time);
2. `neither`, unlike the training photos: its OOD score is above the bundle's
   `ood_threshold` (`pawnet.trust.ood`);
3. `unsure`, no class likely enough: its top calibrated probability is below
   `min_confidence` (`pawnet.trust.calibration.choose_min_confidence`).

Every runtime and the exports' examples apply the same rules; the reasons are the same
words everywhere (`REASONS` names their kinds, as the evaluation counts them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NEITHER = "neither"  # the label of a photo that is out of distribution
UNSURE = "unsure"  # the label of a photo the model cannot judge
TOO_SMALL = "too small"
UNLIKE = "unlike the training photos"
NOT_LIKELY = "no class likely enough"
REASONS = (TOO_SMALL, UNLIKE, NOT_LIKELY)

SIDES = (16, 24, 32, 48, 64, 96, 128)  # shrunk sizes tried for `min_side`
SIZE_QUANTILE = 0.05  # training photos this small or smaller are still "seen" sizes
ACCURACY_DROP = 0.05  # shrunk photos within this of full-size accuracy can be judged


def verdict(classes: Sequence[str], probabilities: np.ndarray, *,
            size: tuple[int, int] | None = None, min_side: int = 0,
            ood_score: float | None = None, ood_threshold: float | None = None,
            min_confidence: float = 0.0) -> tuple[str, str | None]:
    """(label, reason): a class and None, or `unsure`/`neither` and why, for one photo's
    calibrated class probabilities, its size (width, height) before resizing, and its OOD
    score."""
    if size is not None and min(size) < min_side:
        return UNSURE, f"{TOO_SMALL} ({size[0]}x{size[1]})"
    if ood_score is not None and ood_threshold is not None and ood_score > ood_threshold:
        return NEITHER, f"{UNLIKE} (score {ood_score:.4g} > {ood_threshold:.4g})"
    top = float(np.max(probabilities))
    if top < min_confidence:
        return UNSURE, f"{NOT_LIKELY} ({top:.4g} < {min_confidence:.4g})"
    return classes[int(np.argmax(probabilities))], None


def reason_kind(reason: str | None) -> str | None:
    """The kind of a reason (one of `REASONS`), as counted in reports."""
    return next((kind for kind in REASONS if reason and reason.startswith(kind)), None)


def sides_to_try(training_sides: Sequence[int], image_size: int) -> tuple[list[int], int]:
    """(the shrunk sides to measure, smallest first; the size every photo at least this big
    is judged at): sides below both the model's input and the training photos' usual
    smallest side (`SIZE_QUANTILE` of their shorter sides)."""
    seen = int(np.quantile(training_sides, SIZE_QUANTILE)) if len(training_sides) else 0
    ceiling = min(seen, image_size)
    return [s for s in SIDES if s < ceiling], ceiling


def choose_min_side(sides: Sequence[int], ceiling: int, full_accuracy: float,
                    accuracy_at) -> tuple[int, dict[int, float]]:
    """The smallest of `sides` (ascending) at which `accuracy_at(side)` (validation photos
    shrunk to that shorter side) is within `ACCURACY_DROP` of `full_accuracy`, found by
    bisection; `ceiling` when none is. Returns it and the accuracies measured."""
    measured: dict[int, float] = {}
    low, high = 0, len(sides)  # sides[high:] are fine (or none), sides[:low] are not
    while low < high:
        middle = (low + high) // 2
        measured[sides[middle]] = accuracy_at(sides[middle])
        if measured[sides[middle]] >= full_accuracy - ACCURACY_DROP:
            high = middle
        else:
            low = middle + 1
    return (sides[high] if high < len(sides) else ceiling), measured
