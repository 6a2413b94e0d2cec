"""The studio's growth advice and inbox queue: learning curves that rise with the photos,
advice that names the class more photos would help, said no finer than validation can
resolve, and a queue that puts unsure, uncovered photos first and duplicates apart, fast
enough for tens of thousands of photos; then the same on real photos' Lite0 features."""

import json
import time
from itertools import pairwise

import numpy as np
import pytest
from helpers import CVTRICKS, real_photos

from pawnet.studio.growth import (
    advice,
    learning_curves,
    power_law_gain,
    queue_order,
    uncertainty,
)
from pawnet.training.head import LinearHead, encode_targets


def _blobs(rng: np.random.Generator, centres: list[float], n: int, n_val: int,
           dim: int = 64) -> tuple[np.ndarray, ...]:
    """Unit Gaussian blobs centred at `centres` along the diagonal, overlapping."""
    axis = np.ones(dim) / np.sqrt(dim)

    def draw(m: int) -> np.ndarray:
        return np.vstack([rng.standard_normal((m, dim)) + c * axis
                          for c in centres]).astype(np.float32)

    labels = np.arange(len(centres))
    return draw(n), np.repeat(labels, n), draw(n_val), np.repeat(labels, n_val)


def test_targets_and_probabilities_fit_both_heads():
    assert encode_targets(np.array([0, 1, 1]), 1).tolist() == [[0], [1], [1]]
    assert encode_targets(np.array([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    head = LinearHead(np.array([[1.0]], np.float32), np.zeros(1, np.float32), [])
    probs = head.probabilities(np.array([[0.0], [10.0]], np.float32))
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    assert probs[1].argmax() == 1


def test_learning_curve_accuracy_rises_with_the_photos():
    x, y, val_x, val_y = _blobs(np.random.default_rng(0), [-1.5, 1.5], 200, 200, dim=128)
    started = time.perf_counter()
    curves = learning_curves(x, y, val_x, val_y, ["cat", "dog"])
    print(f"learning curves on 400 x 128: {time.perf_counter() - started:.2f}s")
    json.dumps(curves)  # the page gets it as it is
    assert curves["train_photos"]["cat"] == [25, 50, 100, 200]
    assert curves["val_photos"] == {"cat": 200, "dog": 200}
    accuracy = curves["accuracy"]
    assert accuracy[-1] > accuracy[0] + 0.04
    assert all(b > a - 0.01 for a, b in pairwise(accuracy))
    for recall in curves["recall"].values():
        assert all(0 <= r <= 1 for r in recall)


def test_advice_picks_the_class_that_overlaps_both_others():
    # dog sits between cat and fox: two boundaries to learn, the lowest recall, the steepest
    x, y, val_x, val_y = _blobs(np.random.default_rng(1), [-3.0, 0.0, 3.0], 200, 200)
    curves = learning_curves(x, y, val_x, val_y, ["cat", "dog", "fox"])
    said = curves["advice"]
    assert said["best"] == "dog"
    gains = {c: v["gain_if_doubled"] for c, v in said["per_class"].items()}
    assert gains["dog"] > 2 * max(gains["cat"], gains["fox"])
    assert said["text"].startswith("More photos of dog would help most")
    assert "doubled to 400" in said["text"] and "0.5 points" in said["text"]


def _curves(recall: dict[str, list[float]], photos: list[int], val: dict[str, int]) -> dict:
    return {"classes": list(recall), "fractions": [0.25, 0.5, 1.0], "recall": recall,
            "train_photos": {c: photos for c in recall}, "val_photos": val}


def test_power_law_gain_follows_the_law_and_is_zero_off_it():
    photos = [100, 200, 400]
    recall = [1 - 0.4 * n ** -0.5 for n in photos]
    assert power_law_gain(photos, recall) == pytest.approx(0.02 * (1 - 2 ** -0.5))
    assert power_law_gain(photos, [0.8, 0.9, 1.0]) == 0  # perfect already
    assert power_law_gain(photos, [0.9, 0.9, 0.9]) == 0  # flat
    assert power_law_gain(photos, [0.95, 0.9, 0.85]) == 0  # falling recall
    assert power_law_gain([400], [0.9]) == 0  # one point: no slope
    assert 0 <= power_law_gain([10, 11], [0.0, 0.99]) <= 0.01  # never past perfect


def test_advice_says_when_validation_cannot_resolve_the_gain():
    flat = _curves({"cat": [0.95, 0.96, 0.965], "dog": [0.96, 0.962, 0.963]}, [100, 200, 400],
                   {"cat": 10, "dog": 10})
    said = advice(flat)
    assert said["best"] is None
    assert said["text"].startswith("More photos are unlikely to show a measurable gain")
    assert said["per_class"]["cat"]["few_validation"]
    perfect = advice(_curves({"cat": [0.9, 1.0, 1.0], "dog": [1.0, 1.0, 1.0]},
                             [10, 20, 40], {"cat": 50, "dog": 50}))
    assert perfect["best"] is None and "cat" in perfect["text"]
    few = advice(_curves({"cat": [0.4, 0.6, 0.8], "dog": [0.98, 0.99, 0.99]}, [10, 20, 40],
                         {"cat": 15, "dog": 15}))
    assert few["best"] == "cat"  # +8.4 points predicted, against steps of 6.7
    assert "only 15 cat photos" in few["text"] and "6.7 points" in few["text"]
    empty = advice(_curves({"cat": [0.5, 0.6, 0.7], "dog": [None, None, None]}, [10, 20, 40],
                           {"cat": 40, "dog": 0}))
    assert empty["per_class"]["dog"]["gain_if_doubled"] is None and empty["best"] == "cat"


def _two_blob_queue(rng: np.random.Generator, n: int = 400, dim: int = 16):
    """Two overlapping blobs, the probabilities of a logistic model along their axis."""
    side = rng.integers(0, 2, n)
    axis = np.ones(dim) / np.sqrt(dim)
    features = (rng.standard_normal((n, dim)) + np.outer(2.0 * side - 1, axis) * 2)
    dog = 1 / (1 + np.exp(-2 * features @ axis))
    return np.column_stack([1 - dog, dog]).astype(np.float32), features.astype(np.float32)


def test_queue_puts_the_ambiguous_first_and_duplicates_apart():
    probs, features = _two_blob_queue(np.random.default_rng(0))
    u = uncertainty(probs)
    ambiguous = np.argsort(-u)[:10]
    probs = np.vstack([probs, probs[ambiguous]])  # exact duplicates of the most ambiguous
    features = np.vstack([features, features[ambiguous]])
    queue = queue_order(probs, features, features[:0])
    n = len(features)
    assert sorted(queue.order.tolist()) == list(range(n))
    first = queue.order[:20]
    best_possible = np.sort(u)[-20:].mean()  # the 20 most ambiguous distinct photos
    assert queue.uncertainty[first].mean() > max(0.9 * best_possible,
                                                  5 * queue.uncertainty.mean())
    assert queue.order[0] in ambiguous
    twins = {int(i): int(j) for i, j in zip(ambiguous, range(400, n), strict=True)}
    twins |= {j: i for i, j in twins.items()}
    early = set(queue.order[:50].tolist())
    assert not [i for i in early if twins.get(i) in early]  # a duplicate waits
    assert np.all((queue.novelty >= 0) & (queue.novelty <= 1))
    assert np.all(queue.novelty[[i for i in twins if i not in early]] < 1e-3)


def test_queue_puts_neighbours_of_labelled_photos_later():
    rng = np.random.default_rng(2)
    features = rng.standard_normal((300, 32)).astype(np.float32)
    probs = np.full((300, 2), 0.5, np.float32)  # equally unsure of all: coverage decides
    covered = features[:100] + 0.01 * rng.standard_normal((100, 32)).astype(np.float32)
    queue = queue_order(probs, features, covered)
    position = np.argsort(queue.order)
    assert position[:100].min() > position[100:].max()  # every near-copy after the rest
    assert queue.novelty[:100].max() < queue.novelty[100:].min()


def test_queue_weight_zero_is_uncertainty_order_and_sigmoid_columns_work():
    rng = np.random.default_rng(3)
    dog = rng.uniform(size=(1000, 1)).astype(np.float32)
    features = rng.standard_normal((1000, 8)).astype(np.float32)
    queue = queue_order(dog, features, features[:0], weight=0.0, greedy=100)
    assert np.all(np.diff(queue.uncertainty[queue.order]) <= 1e-6)
    assert queue_order(dog[:0], features[:0], features[:0]).order.tolist() == []


def test_queue_of_25000_photos_is_fast():
    rng = np.random.default_rng(4)
    features = rng.standard_normal((25_000, 1280)).astype(np.float32)
    covered = rng.standard_normal((1_400, 1280)).astype(np.float32)
    probs = rng.dirichlet([1, 1, 1], 25_000).astype(np.float32)
    started = time.perf_counter()
    queue = queue_order(probs, features, covered)
    took = time.perf_counter() - started
    print(f"queue_order on 25,000 x 1280 (1,400 covered): {took:.2f}s")
    assert took < 20
    assert np.array_equal(np.sort(queue.order), np.arange(25_000))


# --- real photos -------------------------------------------------------------------------------

def _lite0_features(split: str, per_class: int, offset: int = 0):
    from pawnet.data.checks import file_sha256
    from pawnet.data.scan import Photo
    from pawnet.features import FeatureStore, cached_features, frozen_backbone
    from pawnet.models.registry import get_model_spec

    photos = [Photo(str(p), label, split, file_sha256(p)) for label in ("cat", "dog")
              for p in real_photos(label, offset + per_class, split, CVTRICKS)[offset:]]
    spec = get_model_spec("efficientnet-lite0")
    frozen = frozen_backbone(spec, spec.image_size)
    features = cached_features(frozen.runtime, FeatureStore(frozen.key), photos,
                               spec.image_size, 32, "Features")
    return features, np.array([("cat", "dog").index(p.label) for p in photos])


@pytest.mark.integration  # Lite0 features of 160 real photos
def test_curves_advice_and_queue_on_real_photos():
    x, y = _lite0_features("train", 40)
    val_x, val_y = _lite0_features("train", 20, offset=40)
    started = time.perf_counter()
    curves = learning_curves(x, y, val_x, val_y, ["cat", "dog"])
    print(f"learning curves on 80 Lite0 rows: {time.perf_counter() - started:.2f}s",
          curves["accuracy"], curves["advice"]["text"])
    assert curves["train_photos"]["dog"] == [5, 10, 20, 40]
    assert all(0 <= r <= 1 for recall in curves["recall"].values() for r in recall)
    assert curves["accuracy"][-1] >= 0.9
    assert "cat" in curves["advice"]["text"] or "dog" in curves["advice"]["text"]

    from pawnet.training.head import fit_linear

    inbox_x, _ = _lite0_features("test", 20)
    head = fit_linear(x, encode_targets(y, 1), val_x, encode_targets(val_y, 1))
    queue = queue_order(head.probabilities(inbox_x), inbox_x, x)
    assert sorted(queue.order.tolist()) == list(range(40))
    assert queue.uncertainty[queue.order[:5]].mean() >= np.median(queue.uncertainty)
