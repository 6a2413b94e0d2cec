"""Training-only augmentation, applied to batches in the tf.data pipeline.

It is never part of a saved model: predict, evaluate and serve see plain photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras


def build_augmenter(
    names: Sequence[str], strengths: dict[str, float], seed: int
) -> Callable | None:
    """Return a function `batch -> augmented batch` (float32 0-255 in and out), or None.

    Args:
        names: augmentations to apply, in this order of use: flip, vflip, zoom, shear,
            rotate, translate, contrast, brightness.
        strengths: strength per augmentation name (see `Config` for meanings).
        seed: makes the random draws repeatable.
    """
    layers = []
    for name in names:
        s = strengths.get(name, 0.0)
        if name == "flip":
            layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
        elif name == "vflip":
            layers.append(keras.layers.RandomFlip("vertical", seed=seed))
        elif name == "zoom" and s:
            layers.append(keras.layers.RandomZoom((-s, s), fill_mode="reflect", seed=seed))
        elif name == "shear" and s:
            layers.append(keras.layers.RandomShear(x_factor=s, y_factor=s, fill_mode="reflect",
                                                   seed=seed))
        elif name == "rotate" and s:
            layers.append(keras.layers.RandomRotation(s, fill_mode="reflect", seed=seed))
        elif name == "translate" and s:
            layers.append(keras.layers.RandomTranslation(s, s, fill_mode="reflect", seed=seed))
        elif name == "contrast" and s:
            layers.append(keras.layers.RandomContrast(s, value_range=(0, 255), seed=seed))
        elif name == "brightness" and s:
            layers.append(keras.layers.RandomBrightness(s, value_range=(0, 255), seed=seed))
    if not layers:
        return None
    pipeline = keras.Sequential(layers, name="augment")

    def augment(images):
        return keras.ops.clip(pipeline(images, training=True), 0.0, 255.0)

    return augment
