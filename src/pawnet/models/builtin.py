"""Built-in models that work right after `pip install`, with no training and no internet.

`imagenet-catdog` labels a photo cat, dog or neither from an ImageNet-trained
EfficientNet-Lite2. With m_cat and m_dog the ImageNet probability mass of the 5 cat classes
(281-285) and of the 118 dog classes (151-268), their sum m, the class means
a_cat = m_cat / 5 and a_dog = m_dog / 118, and a gate g = sigmoid(SHARPNESS * (m - THRESHOLD)):

    P(cat) = g * a_cat / (a_cat + a_dog),   P(dog) = g * a_dog / (a_cat + a_dog),
    P(neither) = 1 - g,

so `neither` wins exactly when the cat+dog mass is below about THRESHOLD. Means, not sums:
118 dog classes against 5 cat classes would otherwise give dogs a prior that calls cat
photos dogs. Why these choices and values: docs/decisions.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from pawnet.models.efficientnet_lite import (
    IMAGENET_CAT_CLASSES,
    IMAGENET_DOG_CLASSES,
    image_size,
)
from pawnet.models.efficientnet_lite_weights import load_pretrained

BACKBONE = "lite2"
# The cat+dog ImageNet mass below which a photo is "neither": the 0.1th percentile of that
# mass on photos that are all cats or dogs (benchmarks/imagenet_catdog.py).
THRESHOLD = 0.05
SHARPNESS = 100.0
CLASSES = ["cat", "dog", "neither"]


@keras.saving.register_keras_serializable(package="pawnet")
class CatDogVerdict(keras.layers.Layer):
    """ImageNet probabilities (N, 1000) -> P(cat), P(dog), P(neither) (N, 3)."""

    def __init__(self, threshold: float = THRESHOLD, sharpness: float = SHARPNESS, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.sharpness = sharpness
        groups = np.zeros((1000, 2), dtype="float32")
        groups[list(IMAGENET_CAT_CLASSES), 0] = 1.0
        groups[list(IMAGENET_DOG_CLASSES), 1] = 1.0
        self._groups = groups
        self._sizes = groups.sum(axis=0)

    def call(self, probs):
        ops = keras.ops
        masses = ops.matmul(probs, ops.convert_to_tensor(self._groups))
        total = ops.sum(masses, axis=-1, keepdims=True)
        gate = ops.sigmoid(self.sharpness * (total - self.threshold))
        means = masses / ops.convert_to_tensor(self._sizes) + 1e-12  # 1e-12: both 0 -> even
        shares = means / ops.sum(means, axis=-1, keepdims=True)
        return ops.concatenate([gate * shares, 1.0 - gate], axis=-1)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold,
                "sharpness": self.sharpness}


def imagenet_catdog() -> keras.Model:
    """cat / dog / neither from ImageNet EfficientNet-Lite2 class probabilities."""
    classifier = load_pretrained(BACKBONE, include_top=True, folded=True)
    pixels = keras.Input(classifier.input.shape[1:], name="pixels")
    probs = keras.layers.Softmax(name="imagenet_probabilities")(classifier(pixels))
    return keras.Model(pixels, CatDogVerdict(name="verdict")(probs), name="imagenet_catdog")


@dataclass(frozen=True)
class BuiltinModel:
    """A ready-made model: its builder and what a bundle would say about it."""

    name: str
    build: Callable[[], keras.Model]
    classes: tuple[str, ...]
    image_size: int
    description: str
    version: int = 1  # raise when the model changes, so converted files are remade


MODELS = (
    BuiltinModel("imagenet-catdog", imagenet_catdog, tuple(CLASSES), image_size(BACKBONE),
                 "cat / dog / neither from ImageNet EfficientNet-Lite2 class probabilities"),
)
