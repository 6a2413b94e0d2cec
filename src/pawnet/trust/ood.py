"""Saying "neither": photos unlike anything the model was trained on (out of distribution).

A photo's OOD score is one minus the cosine similarity of its centred features (the input
of the model's classifier, minus the training photos' mean) to its `NEIGHBOURS`-th nearest
training photo (deep nearest neighbours, Sun et al., 2022). The training photos' centred,
normalised features are kept in the model as a bank of at most `BANK_SIZE` rows, so the
score is one more output column in every runtime and export
(`pawnet.models.ood.with_ood`).

The threshold is set on photos of the classes only, as they are: the validation photos,
and for a frozen backbone also the training photos scored against the others
(leave-one-out), so that it rests on thousands of scores rather than a few hundred; at
most `FALSE_NEITHER_RATE` of them score above it. Photos too small to judge are not in it:
they get their own reason (`pawnet.trust.verdict`). Why these choices and values:
docs/decisions.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

NEIGHBOURS = 5
BANK_SIZE = 2048
FALSE_NEITHER_RATE = 0.0025
BLOCK_BYTES = 16 * 2**20  # float32 similarities held at once (docs/decisions.md)


def normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class OodScore:
    """What the score needs: the training features' mean and the bank of their centred,
    normalised rows `(M, D)`, and the threshold above which a photo is `neither`."""

    mean: np.ndarray
    bank: np.ndarray
    threshold: float

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return scores(features, self.bank, self.mean)


def row_blocks(n: int, width: int, block_bytes: int = BLOCK_BYTES) -> list[tuple[int, int]]:
    """(start, stop) of blocks of `n` rows whose float32 products with `width` columns hold
    at most `block_bytes` (at least two rows). Blocks are of equal size: a one-row block
    would go through BLAS's matrix-vector product, whose sums can differ from the matrix
    product's in the last bit."""
    rows = max(2, block_bytes // (4 * max(width, 1)))
    return list(pairwise(int(b) for b in np.linspace(0, n, -(-n // rows) + 1)))


def scores(features: np.ndarray, bank: np.ndarray, mean: np.ndarray | None = None,
           neighbours: int = NEIGHBOURS) -> np.ndarray:
    """OOD scores `(N,)` of features against a bank: 1 - cosine similarity of the centred
    features to the `neighbours`-th nearest bank row (0: a copy of a training photo; up to
    2), a block of rows at a time."""
    centred = np.asarray(features, np.float32) - (0.0 if mean is None else mean)
    k = min(neighbours, bank.shape[0])
    out = np.empty(len(centred), np.float32)
    for start, stop in row_blocks(len(centred), bank.shape[0]):
        similarity = normalised(centred[start:stop]) @ bank.T
        out[start:stop] = 1.0 - np.partition(similarity, -k, axis=1)[:, -k]
    return out


def leave_one_out(unit: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """Each row's score against all the other rows of `unit` (centred, normalised features),
    a block of rows at a time: memory O(n d + BLOCK_BYTES)."""
    n = len(unit)
    k = min(neighbours, n - 1)
    out = np.empty(n, np.float32)
    for start, stop in row_blocks(n, n):
        block = unit[start:stop] @ unit.T
        block[np.arange(stop - start), np.arange(start, stop)] = -1.0
        out[start:stop] = 1.0 - np.partition(block, n - k, axis=1)[:, n - k]
    return out


def threshold(in_distribution: np.ndarray, rate: float = FALSE_NEITHER_RATE) -> float:
    """The score above which at most `rate` of the photos of the classes lie."""
    return float(np.quantile(np.asarray(in_distribution, dtype=np.float64), 1.0 - rate,
                             method="higher"))


def fit(train: np.ndarray, val: np.ndarray, seed: int, *, frozen: bool,
        size: int = BANK_SIZE) -> OodScore:
    """The score fitted on training features and its threshold on validation features
    (and, for `frozen` features that training did not shape, the training photos'
    leave-one-out scores too)."""
    mean = np.asarray(train, np.float32).mean(axis=0)
    rows = normalised(np.asarray(train, np.float32) - mean)
    keep = (np.arange(len(rows)) if len(rows) <= size else
            np.sort(np.random.default_rng(seed).choice(len(rows), size, replace=False)))
    bank = rows[keep]
    found = [scores(val, bank, mean)]
    if frozen and len(bank) > NEIGHBOURS:
        found.append(leave_one_out(bank))
    return OodScore(mean, bank, round(threshold(np.concatenate(found)), 6))
