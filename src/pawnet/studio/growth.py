"""Growing a folder of photos: how many more photos of which class would help, and in which
order to label the photos waiting in the inbox.

Learning curves: the head is refitted (`fit_linear`, on the cached backbone features) on
nested, stratified fractions of the training photos, and each class's recall on all the
validation photos is measured at each fraction. `advice` fits the usual learning-curve power
law, error ≈ a·n^(−b) (Cortes et al., 1994; Hestness et al., 2017), to each class's
recall-vs-photos points and predicts the gain from doubling that class, saying how fine
a step its validation photos can resolve (one photo is 1/n of a class's recall).

The inbox queue: photos first that the model is unsure of and that are unlike anything
already labelled or queued (uncertainty-weighted farthest-first, a k-center greedy in the
spirit of Sener & Savarese, 2018), so that near-duplicates of a queued photo drop back.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

from pawnet.training.head import LinearHead, encode_targets, fit_linear
from pawnet.trust.ood import normalised, row_blocks

FRACTIONS = (0.125, 0.25, 0.5, 1.0)
MIN_PER_CLASS = 2  # training photos each class keeps in the smallest fraction
CURVE_ITERATIONS = 100  # L-BFGS iterations per fit: a curve needs the trend, not the last digit
FEW_VALIDATION = 20  # fewer validation photos of a class: each is a recall step of >= 5 points
GREEDY = 500  # queue picks made greedily; the rest are ordered by their final score
UNCERTAINTY_FLOOR = 0.05  # a sure but novel photo still ranks by its novelty
FLAT = 1e-6  # a log-log slope closer to zero than this is a flat curve: no gain
MAX_DISTANCE = 2.0  # cosine distance never exceeds it: "nothing near" when nothing is covered


# --- learning curves -------------------------------------------------------------------------

def _subsets(y: np.ndarray, n_classes: int, fractions: tuple[float, ...],
             rng: np.random.Generator) -> list[np.ndarray]:
    """Nested, stratified row indices, one per fraction: each class keeps `fraction` of its
    photos, at least `MIN_PER_CLASS` (all it has, if fewer)."""
    orders = [rng.permutation(np.flatnonzero(y == k)) for k in range(n_classes)]
    return [np.sort(np.concatenate([
        order[:min(len(order), max(MIN_PER_CLASS, round(f * len(order))))] for order in orders
    ])) for f in fractions]


def _recalls(head: LinearHead, val_x: np.ndarray, val_y: np.ndarray,
             n_classes: int) -> tuple[float, list[float]]:
    """Accuracy on all validation photos, and each class's recall (NaN without photos)."""
    right = head.probabilities(val_x).argmax(1) == val_y
    recall = [float(right[val_y == k].mean()) if (val_y == k).any() else float("nan")
              for k in range(n_classes)]
    return float(right.mean()) if len(right) else float("nan"), recall


def learning_curves(x: np.ndarray, y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                    classes: list[str], *, fractions: tuple[float, ...] = FRACTIONS,
                    repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Accuracy and per-class recall on all validation photos of heads fitted on growing
    fractions of the training photos (`y`, `val_y`: class indices), each the mean of
    `repeats` random stratified subsets (one for the whole set: it is deterministic).

    Returns:
        A JSON-able dict: classes, fractions, train_photos {class: [n per fraction]},
        recall {class: [mean per fraction, None without validation photos]}, accuracy
        [mean per fraction], val_photos {class: n}, repeats, and `advice(...)` of it.
    """
    y, val_y = np.asarray(y, int), np.asarray(val_y, int)
    k, fractions = len(classes), tuple(float(f) for f in fractions)
    units = 1 if k == 2 else k  # a sigmoid head for two classes, as training fits
    val_t = encode_targets(val_y, units)
    accuracy = np.zeros((repeats, len(fractions)))
    recall = np.zeros((repeats, len(fractions), k))
    counts = np.zeros((len(fractions), k), int)
    rng = np.random.default_rng(seed)
    for r in range(repeats):
        for j, rows in enumerate(_subsets(y, k, fractions, rng)):
            if r and fractions[j] >= 1.0:  # the whole set: the same fit again
                accuracy[r, j], recall[r, j] = accuracy[0, j], recall[0, j]
                continue
            head = fit_linear(x[rows], encode_targets(y[rows], units), val_x, val_t,
                              max_iter=CURVE_ITERATIONS)
            accuracy[r, j], recall[r, j] = _recalls(head, val_x, val_y, k)
            counts[j] = np.bincount(y[rows], minlength=k)
    mean_recall = recall.mean(0)
    curves: dict[str, Any] = {
        "classes": list(classes), "fractions": list(fractions), "repeats": repeats,
        "train_photos": {c: counts[:, i].tolist() for i, c in enumerate(classes)},
        "recall": {c: [None if np.isnan(v) else float(v) for v in mean_recall[:, i]]
                   for i, c in enumerate(classes)},
        "accuracy": [None if np.isnan(v) else float(v) for v in accuracy.mean(0)],
        "val_photos": {c: int((val_y == i).sum()) for i, c in enumerate(classes)},
    }
    curves["advice"] = advice(curves)
    return curves


# --- advice ----------------------------------------------------------------------------------

def power_law_gain(photos: list[int], recall: list[float | None]) -> float:
    """Recall gained by doubling the photos, from error ≈ a·n^(−b) fitted by least squares in
    log-log on the points with error > 0, through the last point: its error times
    (1 − 2^(−b)). Zero when the last error is zero, the curve is flat or rising, or fewer
    than two photo counts have an error to fit; never above the error left."""
    points = [(n, 1 - r) for n, r in zip(photos, recall, strict=True)
              if r is not None and n > 0]
    if not points or points[-1][1] <= 0:
        return 0.0
    fit = [(np.log(n), np.log(e)) for n, e in points if e > 0]
    if len({n for n, _ in fit}) < 2:
        return 0.0
    log_n, log_e = np.array(fit).T
    slope = np.polyfit(log_n, log_e, 1)[0]
    if not np.isfinite(slope) or slope > -FLAT:
        return 0.0
    error = points[-1][1]
    return float(np.clip(error * (1 - 2.0 ** slope), 0.0, error))


def _resolution_sentence(cls: str, val_photos: int) -> str:
    step = 100 / val_photos
    if val_photos < FEW_VALIDATION:
        return (f"Validation has only {val_photos:,} {cls} photos, so recall moves in steps "
                f"of {step:.1f} points: add validation photos of {cls} to measure finer.")
    return (f"Validation has {val_photos:,} {cls} photos, so steps of {step:.1f} points "
            "are resolvable.")


def _advice_text(per_class: dict[str, dict[str, Any]], best: str | None) -> str:
    gains = {c: v["gain_if_doubled"] for c, v in per_class.items()
             if v["gain_if_doubled"] is not None}
    if best is None:
        if not gains or max(gains.values()) <= 0:
            now = ", ".join(f"{c} {100 * per_class[c]['recall']:.1f}%" for c in gains)
            return ("More photos are unlikely to show a measurable gain on this validation "
                    "set: no class's recall is predicted to rise if its photos are doubled"
                    + (f" (recall now: {now})." if now else "."))
        top = max(gains, key=gains.__getitem__)
        return ("More photos are unlikely to show a measurable gain on this validation set: "
                f"the largest predicted gain from doubling a class ({top}, "
                f"+{100 * gains[top]:.1f} points) is below one validation photo's step "
                f"({per_class[top]['resolution'] * 100:.1f} points).")
    entry = per_class[best]
    others = ", ".join(f"{c}: +{100 * g:.1f}" for c, g in
                       sorted(gains.items(), key=lambda item: -item[1]) if c != best)
    return (f"More photos of {best} would help most: about "
            f"+{100 * entry['gain_if_doubled']:.1f} points of recall if doubled to "
            f"{2 * entry['photos']:,}" + (f" ({others})." if others else ".") + " "
            + _resolution_sentence(best, entry["val_photos"]))


def advice(curves: dict[str, Any]) -> dict[str, Any]:
    """Per class, the recall now and the gain predicted from doubling its training photos
    (`power_law_gain`, a fraction of 1), and how fine a step its validation photos resolve
    (1/n). Each class's curve is taken against its own photo count, though all classes grew
    together: a guide to where photos help most, not a promise.

    Returns:
        {"per_class": {class: {recall, gain_if_doubled, photos, val_photos, resolution,
        few_validation}}, "best": the class whose gain is largest among those at least one
        validation step, else None, "text": one sentence or two for a person}.
    """
    per_class: dict[str, dict[str, Any]] = {}
    for cls in curves["classes"]:
        photos, recall = curves["train_photos"][cls], curves["recall"][cls]
        val_photos = int(curves["val_photos"][cls])
        known = val_photos > 0 and recall[-1] is not None
        per_class[cls] = {
            "recall": recall[-1] if known else None,
            "gain_if_doubled": power_law_gain(photos, recall) if known else None,
            "photos": int(photos[-1]), "val_photos": val_photos,
            "resolution": 1 / val_photos if val_photos else None,
            "few_validation": val_photos < FEW_VALIDATION,
        }
    measurable = {c: v["gain_if_doubled"] for c, v in per_class.items()
                  if v["gain_if_doubled"] is not None and v["gain_if_doubled"] > 0
                  and v["gain_if_doubled"] >= v["resolution"]}
    best = max(measurable, key=measurable.__getitem__) if measurable else None
    return {"per_class": per_class, "best": best, "text": _advice_text(per_class, best)}


# --- the inbox queue -------------------------------------------------------------------------

@dataclass
class Queue:
    """The order to label photos in, and why: `order` is a permutation of the photos'
    indices, first to label first; `uncertainty` (1 − the margin between the two likeliest
    classes) and `novelty` (cosine distance to the nearest labelled or earlier-queued photo
    when it was placed, over the largest such distance; 1 when nothing was near) are per
    photo, in the photos' own order, both in [0, 1]."""

    order: np.ndarray
    uncertainty: np.ndarray
    novelty: np.ndarray


def uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 − (top probability − second), in [0, 1]: 1 on the boundary, 0 when sure."""
    probs = np.asarray(probs, np.float32)
    if probs.shape[1] == 1:
        probs = np.hstack([1 - probs, probs])
    top = np.sort(probs, axis=1)[:, -2:]
    return np.clip(1 - (top[:, 1] - top[:, 0]), 0.0, 1.0)


def _nearest(unit: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Cosine distance of each row of `unit` to its nearest row of `bank` (inf if none), a
    block of rows at a time: memory O(BLOCK_BYTES) beyond the inputs."""
    out = np.full(len(unit), np.inf, np.float32)
    if not len(bank):
        return out
    for start, stop in row_blocks(len(unit), len(bank)):
        out[start:stop] = 1 - (unit[start:stop] @ bank.T).max(1)
    return np.maximum(out, 0)


def _score(weight_u: np.ndarray, distance: np.ndarray, weight: float) -> np.ndarray:
    """Uncertainty (floored, raised to 1 − weight) times distance (raised to weight)."""
    return weight_u * np.minimum(distance, MAX_DISTANCE) ** weight


def _greedy(unit: np.ndarray, weight_u: np.ndarray, distance: np.ndarray, weight: float,
            picks: int) -> tuple[list[int], np.ndarray]:
    """Farthest-first picks weighted by uncertainty, each the photo of highest score given
    the photos already picked. Lazy: scores only fall as picks are added, so a stale score
    bounds the true one, and only the photos at the top of the heap are brought up to date
    (exact, at a fraction of a matrix-vector product per pick). Returns the picks and each
    pick's distance when it was picked."""
    seen = np.zeros(len(unit), int)  # picks each photo's distance accounts for
    heap = [(-s, i) for i, s in enumerate(_score(weight_u, distance, weight).tolist())]
    heapq.heapify(heap)
    picked = np.empty((picks, unit.shape[1]), np.float32)
    chosen: list[int] = []
    at_pick = np.zeros(picks, np.float32)
    while len(chosen) < picks:
        _, i = heapq.heappop(heap)
        if seen[i] < len(chosen):  # stale: bring it up to date and put it back
            near = 1 - float((picked[seen[i]:len(chosen)] @ unit[i]).max())
            distance[i] = min(distance[i], max(near, 0.0))
            seen[i] = len(chosen)
            heapq.heappush(heap, (-float(_score(weight_u[i], distance[i], weight)), i))
            continue
        at_pick[len(chosen)] = distance[i]
        picked[len(chosen)] = unit[i]
        chosen.append(i)
    return chosen, at_pick


def queue_order(probs: np.ndarray, features: np.ndarray, covered: np.ndarray, *,
                weight: float = 0.5, greedy: int = GREEDY) -> Queue:
    """The order to label unlabelled photos in: those whose label would teach the model most
    first, uncertain first and spread over what is not covered yet.

    A photo's score is u^(1 − weight) · d^weight: u its uncertainty (floored at
    `UNCERTAINTY_FLOOR`, so a sure photo far from everything still ranks by its distance),
    d the cosine distance of its (centred) features to the nearest `covered` (labelled) or
    already-queued photo. The first `greedy` photos are picked one at a time, each pick
    shrinking the others' distances, so a near-duplicate of a queued photo drops back; the
    rest follow by score with their distances to all covered and greedy picks (a greedy pick
    per photo would be an O(N·D) product each, too slow for tens of thousands of photos).

    Args:
        probs: (N, K) model probabilities of the unlabelled photos ((N, 1) sigmoid too).
        features: (N, D) their backbone features.
        covered: (M, D) features of the labelled (training) photos; may be empty.
        weight: 0 orders by uncertainty alone, 1 by novelty alone (farthest-first).
        greedy: photos picked greedily before the rest are sorted.

    Cost: O((N + M)·D) memory, O(N·(M + greedy)·D) time in blocked float32 products.
    """
    features = np.asarray(features, np.float32)
    covered = np.asarray(covered, np.float32).reshape(-1, features.shape[1])
    n = len(features)
    u = uncertainty(probs) if n else np.zeros(0, np.float32)
    weight_u = (UNCERTAINTY_FLOOR + (1 - UNCERTAINTY_FLOOR) * u) ** (1 - weight)
    mean = np.concatenate([features, covered]).mean(0) if n + len(covered) else 0
    unit, bank = normalised(features - mean), normalised(covered - mean)
    start = _nearest(unit, bank)
    chosen, at_pick = _greedy(unit, weight_u, start.copy(), weight, min(greedy, n))
    final = np.minimum(start, _nearest(unit, unit[chosen]))
    placed = final.copy()
    placed[chosen] = at_pick
    rest = np.setdiff1d(np.arange(n), chosen)
    scores = _score(weight_u[rest], final[rest], weight)
    order = np.concatenate([np.array(chosen, int), rest[np.argsort(-scores, kind="stable")]])
    finite = placed[np.isfinite(placed)]
    scale = float(finite.max()) if len(finite) and finite.max() > 0 else 1.0
    novelty = np.where(np.isfinite(placed), np.minimum(placed / scale, 1.0), 1.0)
    return Queue(order.astype(int), u.astype(np.float32), novelty.astype(np.float32))
