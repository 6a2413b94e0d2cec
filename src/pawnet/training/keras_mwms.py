"""A compatibility shim: Keras 3's `fit` under `tf.distribute.MultiWorkerMirroredStrategy`.

Keras 3.0 to 3.15.1 (at least) fail in `keras/src/backend/tensorflow/trainer.py` as soon
as there are two workers:

1. `_maybe_symbolic_build` builds the model from `strategy.reduce("MEAN", batch)` of the
   first distributed batch: "Attempt to convert a value (PerReplica...) to a Tensor"
   (https://github.com/ray-project/ray/issues/47464).
2. Then every step's metrics go through `strategy.reduce("MEAN", v, axis=0)`, which fails
   on scalars: "Invalid reduction dimension 0 for input with 0 dimensions"
   (https://github.com/tensorflow/tensorflow/issues/72388).

Open upstream: https://github.com/keras-team/keras/issues/20585 and
https://github.com/keras-team/keras/issues/19891. The shim builds the model from this
worker's own first batch, and gives the per-step logs this worker's values (the progress
line). Gradients are still all-reduced by the strategy, and the epoch's figures still come
from the metrics' variables, which Keras reads across all workers, so every worker logs
the same epoch figures. `tests/training/test_keras_mwms.py` fails the day Keras fixes the
bugs, so that this module can go.
"""

from __future__ import annotations

BROKEN_FROM, CHECKED_UP_TO = (3, 0), (3, 15, 1)  # Keras versions with both bugs
_applied = False


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def needed(version: str | None = None) -> bool:
    """Whether Keras `version` (default: the installed one) needs the shim. Versions after
    the last one checked are assumed fixed; the shim's test says when that is wrong."""
    import keras

    found = _version(version or keras.__version__)
    return found[:2] >= BROKEN_FROM and found <= CHECKED_UP_TO


def apply() -> bool:
    """Patch Keras' TensorFlow trainer where its version needs it (once); returns whether
    the shim is in place."""
    global _applied
    if _applied or not needed():
        return _applied
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original_reduce = trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        strategy = self.distribute_strategy

        def first_local(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(first_local, next(it))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(
                strategy):
            def local_mean(v):
                if not trainer._is_per_replica_instance(v):
                    return v
                return tf.reduce_mean(strategy.experimental_local_results(v), axis=0)

            return tree.map_structure(local_mean, values)
        return original_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    _applied = True
    return True
