"""The new head of a transfer model, fitted on the backbone's cached features by L-BFGS:
a logistic (softmax) regression with an L2 penalty, the weights of the head's one Dense
layer. It converges in a fraction of a second where 60 epochs of Adam took seconds, to the
same validation accuracy (docs/decisions.md). Each iteration is one row of the history, so
the learning curves show the fit; the iterate with the lowest validation loss is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pawnet.inference.bundle import class_probabilities
from pawnet.models.keras_file import dense_outputs

L2 = 1e-3  # penalty on the kernel, chosen on validation photos (docs/decisions.md)


@dataclass
class LinearHead:
    """The Dense layer's kernel `(dim, units)` and bias, and one history row per iteration
    (`epoch` is the iteration)."""

    kernel: np.ndarray
    bias: np.ndarray
    rows: list[dict[str, float]]

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.kernel + self.bias

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """What the head's Dense layer outputs: sigmoid or softmax probabilities."""
        return dense_outputs(x, self.kernel, self.bias)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """One probability column per class (a sigmoid's P(class 1) becomes [1 - p, p])."""
        out = self.outputs(x)
        return class_probabilities(out, "sigmoid" if out.shape[1] == 1 else "softmax")


def encode_targets(index: np.ndarray, units: int) -> np.ndarray:
    """Class indices as the head's targets: `(N, 1)` 0/1 floats for one sigmoid unit, else
    one-hot rows of `units` columns."""
    index = np.asarray(index, dtype=np.int64)
    if units == 1:
        return index.astype(np.float32).reshape(-1, 1)
    return np.eye(units, dtype=np.float32)[index]


def _loss_terms(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-photo cross-entropy of logits `z` against (soft) targets `y`, and its gradient
    with respect to `z`: binary on one column, categorical on several."""
    if z.shape[1] == 1:
        p = 1 / (1 + np.exp(-z))
        return (np.logaddexp(0, z) - y * z)[:, 0], p - y
    shifted = z - z.max(1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(1, keepdims=True))
    log_p = shifted - log_norm
    return -(y * log_p).sum(1), np.exp(log_p) * y.sum(1, keepdims=True) - y


def _accuracy(z: np.ndarray, y: np.ndarray) -> float:
    if z.shape[1] == 1:
        return float(((z[:, 0] > 0) == (y[:, 0] > 0.5)).mean())
    return float((z.argmax(1) == y.argmax(1)).mean())


def fit_linear(x: np.ndarray, y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, *,
               sample_weight: np.ndarray | None = None, label_smoothing: float = 0.0,
               l2: float = L2, max_iter: int = 200, patience: int = 10) -> LinearHead:
    """Fit the head on features `x` with targets `y` ((N, 1) 0/1 for a sigmoid output, else
    one-hot rows), stopping `patience` iterations after the validation loss last fell.

    Returns:
        The iterate with the lowest validation loss (the last one without validation
        photos), with the history of every iteration.
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    x64, units = x.astype(np.float64), y.shape[1]
    smooth = label_smoothing / (2 if units == 1 else units)
    target = y * (1 - label_smoothing) + smooth
    weight = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, float)
    weight = weight / weight.sum()
    dim = x.shape[1]

    def unpack(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return params[: dim * units].reshape(dim, units), params[dim * units:]

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        kernel, bias = unpack(params)
        losses, dz = _loss_terms(x64 @ kernel + bias, target)
        dz = dz * weight[:, None]
        loss = float(weight @ losses) + 0.5 * l2 * float((kernel ** 2).sum())
        return loss, np.concatenate([(x64.T @ dz + l2 * kernel).ravel(), dz.sum(0)])

    rows: list[dict[str, float]] = []
    best: dict = {"loss": np.inf, "params": np.zeros(dim * units + units), "since": 0}

    def record(intermediate_result) -> None:  # the name SciPy passes an OptimizeResult to
        result = intermediate_result
        kernel, bias = unpack(result.x)
        z = x64 @ kernel + bias
        row = {"epoch": len(rows) + 1, "loss": float(_loss_terms(z, y)[0].mean()),
               "accuracy": _accuracy(z, y)}
        if len(val_x):
            vz = val_x.astype(np.float64) @ kernel + bias
            row |= {"val_loss": float(_loss_terms(vz, val_y)[0].mean()),
                    "val_accuracy": _accuracy(vz, val_y)}
        rows.append(row)
        loss = row.get("val_loss", -len(rows))
        if loss < best["loss"]:
            best.update(loss=loss, params=result.x.copy(), since=0)
        else:
            best["since"] += 1
            if best["since"] >= patience:
                raise StopIteration

    with threadpool_limits(1, "blas"):  # products this small: threads only add waiting
        result = minimize(objective, best["params"], jac=True, method="L-BFGS-B",
                          callback=record, options={"maxiter": max_iter})
        if not rows:  # done before a first iteration (a gradient of zero at the start)
            record(result)
    kernel, bias = unpack(best["params"])
    return LinearHead(kernel.astype(np.float32), bias.astype(np.float32), rows)
