"""The OOD score inside the model: one more output column after the class outputs, so that
Keras, ONNX Runtime, LiteRT and every export compute it alike (see `pawnet.trust.ood`)."""

from __future__ import annotations

import keras
import numpy as np

from pawnet.trust.ood import NEIGHBOURS, OodScore


@keras.saving.register_keras_serializable(package="pawnet")
class NeighbourDistance(keras.layers.Layer):
    """Features (N, D) -> 1 - cosine similarity to the k-th nearest bank row (N, 1).

    The bank holds normalised training features (M, D), a fixed weight saved with the model;
    when `centred`, they and the features have the training features' mean (another
    weight) taken off first (bundles before format 4 are not centred).
    """

    def __init__(self, bank_size: int, dim: int, neighbours: int = NEIGHBOURS,
                 centred: bool = False, **kwargs):
        super().__init__(trainable=False, **{k: v for k, v in kwargs.items()
                                             if k != "trainable"})
        self.bank_size = bank_size
        self.dim = dim
        self.neighbours = min(neighbours, bank_size)
        self.centred = centred
        self.bank = self.add_weight(shape=(dim, bank_size), initializer="zeros",
                                    trainable=False, name="bank")
        if centred:
            self.mean = self.add_weight(shape=(dim,), initializer="zeros", trainable=False,
                                        name="mean")

    def call(self, features):
        ops = keras.ops
        features = ops.cast(features, "float32")
        if self.centred:
            features = features - self.mean
        norms = ops.sqrt(ops.maximum(ops.sum(features * features, axis=-1, keepdims=True),
                                     1e-24))
        similarity = ops.matmul(features / norms, self.bank)
        nearest, _ = ops.top_k(similarity, self.neighbours)
        return 1.0 - nearest[:, -1:]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return {**super().get_config(), "bank_size": self.bank_size, "dim": self.dim,
                "neighbours": self.neighbours, "centred": self.centred}


def with_ood(model: keras.Model, score: OodScore) -> keras.Model:
    """`model` with the OOD score (bank (M, D) and mean) as one more output column, computed
    on the features it classifies: the input of its `predictions` layer, or for a transfer
    model (a backbone model, then a head model) the backbone's output."""
    bank = score.bank
    layer = NeighbourDistance(bank.shape[0], bank.shape[1], centred=True, name="ood_score")
    if isinstance(model.layers[-1], keras.Model):
        backbone, head = model.layers[-2], model.layers[-1]
        inputs = keras.Input(model.inputs[0].shape[1:], name=model.inputs[0].name)
        features = backbone(inputs, training=False)
        classes = head(features)
    else:
        inputs, features, classes = model.inputs[0], model.get_layer("predictions").input, \
            model.outputs[0]
    distance = layer(features)
    layer.bank.assign(np.ascontiguousarray(bank.T, dtype=np.float32))
    layer.mean.assign(np.asarray(score.mean, dtype=np.float32))
    outputs = keras.layers.Concatenate(name="outputs_and_ood_score")([classes, distance])
    return keras.Model(inputs, outputs, name=model.name)


def feature_model(model: keras.Model) -> keras.Model:
    """Pixels to the features a flat (from-scratch) model classifies."""
    return keras.Model(model.inputs[0], model.get_layer("predictions").input)
