"""Built-in models that work right after `pip install`, with no training and no internet.

`imagenet-catdog` labels a photo cat, dog or neither from an ImageNet-trained
EfficientNet-Lite: the mean ImageNet probability of the 5 cat classes (281-285) against
that of the 118 dog classes (151-268). Comparing means, not sums, removes the prior that
118 classes against 5 gives dogs: with sums, cat photos whose probability spreads over a
few dog breeds were called dogs (measured with Lite2 and benchmarks/imagenet_catdog.py,
`neither` counted wrong: cvtricks/test 0.9375 with sums, 0.990 with means; tongpython/test
0.9285 and 0.985). When cat and dog classes together hold little mass, the verdict is
`neither`.

Its three outputs are probabilities: with masses m_cat, m_dog, their sum m, class means
a_cat = m_cat / 5, a_dog = m_dog / 118, and a gate g = sigmoid(SHARPNESS * (m - THRESHOLD)),

    P(cat) = g * a_cat / (a_cat + a_dog),   P(dog) = g * a_dog / (a_cat + a_dog),
    P(neither) = 1 - g,

so `neither` wins exactly when the cat+dog mass is below about THRESHOLD.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from pawnet.bundle import BundleSpec
from pawnet.errors import BundleError

BACKBONE = "lite2"  # measured with the sum rule: lite0 0.91, lite2 0.9375 on cvtricks/test
# The cat+dog ImageNet mass below which a photo is "neither": the 0.1th percentile of that
# mass on the 2,000 cdfiltered/train photos, all cats or dogs (measured 0.0504 with
# benchmarks/imagenet_catdog.py). It calls 0.50% of cvtricks/test "neither", 0.45% of
# tongpython/test.
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
        from pawnet.models.efficientnet_lite import IMAGENET_CAT_CLASSES, IMAGENET_DOG_CLASSES

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


def imagenet_catdog() -> tuple[keras.Model, BundleSpec]:
    """cat / dog / neither from ImageNet EfficientNet-Lite2 class probabilities."""
    from pawnet.models.efficientnet_lite import image_size, load_pretrained

    classifier = load_pretrained(BACKBONE, include_top=True, folded=True)
    pixels = keras.Input(classifier.input.shape[1:], name="pixels")
    probs = keras.layers.Softmax(name="imagenet_probabilities")(classifier(pixels))
    model = keras.Model(pixels, CatDogVerdict(name="verdict")(probs), name="imagenet_catdog")
    spec = BundleSpec(model_name="imagenet-catdog", class_names=CLASSES,
                      image_size=image_size(BACKBONE), output="softmax")
    return model, spec


BUILTIN_MODELS: dict[str, Callable[[], tuple[keras.Model, BundleSpec]]] = {
    "imagenet-catdog": imagenet_catdog,
}


def is_builtin(ref) -> bool:
    """True when `ref` names a built-in model (and no folder of that name exists)."""
    return str(ref) in BUILTIN_MODELS and not Path(ref).exists()


def load_builtin(name: str) -> tuple[keras.Model, BundleSpec]:
    try:
        return BUILTIN_MODELS[name]()
    except KeyError:
        raise BundleError(f"no built-in model '{name}'; built-in: "
                          f"{', '.join(BUILTIN_MODELS)}") from None
