"""Saying "neither": photos unlike anything the model was trained on (out of distribution).

A photo's OOD score is one minus the cosine similarity of its features (the input of the
model's classifier: the backbone's pooled features for transfer learning) to its `NEIGHBOURS`-th
nearest training photo (deep nearest neighbours, Sun et al., 2022). The training photos'
normalised features are kept in the model as a bank of at most `BANK_SIZE` rows, so the
score is one more output column in every runtime and export
(`pawnet.models.ood.with_ood`).

The threshold is set on validation photos only: at most `FALSE_NEITHER_RATE` of them,
counted once as they are and once shrunk to `SMALL_SIDE` pixels, score above it. The
shrunk copies keep small and blurry photos of the classes from being called neither just
for their size. Why these choices and values: docs/decisions.md.
"""

from __future__ import annotations

import io

import numpy as np

NEIGHBOURS = 5
BANK_SIZE = 2048
FALSE_NEITHER_RATE = 0.01
SMALL_SIDE = 32
NEITHER = "neither"  # the label of a photo that is out of distribution
UNSURE = "unsure"  # the label of a photo whose top probability is below min_confidence


def normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def feature_bank(features: np.ndarray, seed: int, size: int = BANK_SIZE) -> np.ndarray:
    """The normalised training features kept for the score: all of them, or `size` drawn
    at random with `seed` when there are more."""
    rows = normalised(features)
    if len(rows) <= size:
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size, replace=False))
    return rows[keep]


def scores(features: np.ndarray, bank: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """OOD scores `(N,)` of features against a bank: 1 - cosine similarity to the
    `neighbours`-th nearest bank row (0: a copy of a training photo; up to 2)."""
    similarity = normalised(features) @ bank.T
    k = min(neighbours, bank.shape[0])
    return 1.0 - np.sort(similarity, axis=1)[:, -k]


def threshold(validation_scores: np.ndarray, rate: float = FALSE_NEITHER_RATE) -> float:
    """The score above which at most `rate` of the validation photos lie."""
    return float(np.quantile(np.asarray(validation_scores, dtype=np.float64), 1.0 - rate,
                             method="higher"))


def small_view(source, max_pixels: int | None = None, side: int = SMALL_SIDE) -> bytes:
    """A photo shrunk to `side` x `side` pixels, as PNG bytes, so that it goes through the
    decoding a small photo would."""
    from PIL import Image

    from pawnet.data.images import MAX_PIXELS, load_pixels

    buffer = io.BytesIO()
    Image.fromarray(load_pixels(source, side, max_pixels or MAX_PIXELS)).save(buffer, "PNG")
    return buffer.getvalue()
