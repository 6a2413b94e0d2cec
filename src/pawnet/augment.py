"""Training-only augmentation, applied to batches in the tf.data pipeline.

It is never part of a saved model: predict, evaluate and serve see plain photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras


class RandomResizedCrop(keras.layers.Layer):
    """Crop a random box (area `min_area` to 1 of the image, aspect 3/4 to 4/3) from each
    image and resize it back to the full size, as Inception-style training does."""

    def __init__(self, min_area: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.min_area = min_area
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images):
        import tensorflow as tf

        n = tf.shape(images)[0]
        size = tf.shape(images)[1:3]
        draws = keras.random.uniform((4, n), seed=self.seed_generator)
        area = self.min_area + (1.0 - self.min_area) * draws[0]
        log_ratio = (draws[1] * 2.0 - 1.0) * tf.math.log(4.0 / 3.0)
        ratio = tf.exp(log_ratio)
        height = tf.clip_by_value(tf.sqrt(area / ratio), 0.0, 1.0)
        width = tf.clip_by_value(tf.sqrt(area * ratio), 0.0, 1.0)
        top = draws[2] * (1.0 - height)
        left = draws[3] * (1.0 - width)
        boxes = tf.stack([top, left, top + height, left + width], axis=1)
        return tf.image.crop_and_resize(images, boxes, tf.range(n), size)


def build_augmenter(
    names: Sequence[str], strengths: dict[str, float], seed: int
) -> Callable | None:
    """Return a function `batch -> augmented batch` (float32 0-255 in and out), or None.

    Args:
        names: augmentations to apply, in the order given: crop, flip, vflip, zoom,
            shear, rotate, translate, contrast, brightness.
        strengths: strength per augmentation name (see `Config` for meanings).
        seed: makes the random draws repeatable.
    """
    layers = []
    for name in names:
        s = strengths.get(name, 0.0)
        if name == "crop" and s:
            layers.append(RandomResizedCrop(1.0 - s, seed=seed))
        elif name == "flip":
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
