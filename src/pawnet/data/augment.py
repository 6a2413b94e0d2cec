"""Training-only augmentation, applied to batches in the tf.data pipeline.

It is never part of a saved model: predict, evaluate and serve see plain photos.

The geometric ones (flip, vflip, zoom, shear, rotate, translate) are fused into one random
affine warp per image: one resampling pass instead of one per Keras layer, about half the
CPU (docs/decisions.md), and that CPU is taken from training.
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


GEOMETRIC = ("flip", "vflip", "zoom", "shear", "rotate", "translate")


class RandomAffine(keras.layers.Layer):
    """Random flips, zoom, shear, rotation and shift as one affine warp per image.

    Strengths mean what they mean for the Keras layers of the same names: zoom by a factor
    in [1 - zoom, 1 + zoom] (same for both axes), shear by up to `shear` in each axis,
    rotate by up to `rotate` of a full turn, shift by up to `translate` of the side.
    Pixels from outside the image are filled by reflection, sampling is bilinear.
    """

    def __init__(self, *, flip: bool = False, vflip: bool = False, zoom: float = 0.0,
                 shear: float = 0.0, rotate: float = 0.0, translate: float = 0.0,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.flip, self.vflip = flip, vflip
        self.zoom, self.shear, self.rotate, self.translate = zoom, shear, rotate, translate
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images):
        import math

        import tensorflow as tf

        n = tf.shape(images)[0]
        height = tf.cast(tf.shape(images)[1], tf.float32)
        width = tf.cast(tf.shape(images)[2], tf.float32)
        u = keras.random.uniform((8, n), -1.0, 1.0, seed=self.seed_generator)
        ones, zeros = tf.ones((n,)), tf.zeros((n,))
        fx = tf.where(u[0] < 0, -ones, ones) if self.flip else ones
        fy = tf.where(u[1] < 0, -ones, ones) if self.vflip else ones
        z = 1.0 + self.zoom * u[2]
        sx, sy = self.shear * u[3], self.shear * u[4]
        angle = self.rotate * 2.0 * math.pi * u[5]
        tx, ty = self.translate * width * u[6], self.translate * height * u[7]
        cos, sin = tf.cos(angle), tf.sin(angle)
        # Output pixel (x, y), taken from the centre c, maps to the input point
        # c + R . S . Z . F . (x, y) - c + t: the matrix [[a, b], [d, e]] below.
        r = [[cos, -sin], [sin, cos]]
        sh = [[ones, sx], [sy, ones]]
        zf = [z * fx, z * fy]  # Z . F is diagonal
        rs = [[r[i][0] * sh[0][j] + r[i][1] * sh[1][j] for j in range(2)] for i in range(2)]
        a, b = rs[0][0] * zf[0], rs[0][1] * zf[1]
        d, e = rs[1][0] * zf[0], rs[1][1] * zf[1]
        cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
        transforms = tf.stack([a, b, cx - a * cx - b * cy + tx,
                               d, e, cy - d * cx - e * cy + ty, zeros, zeros], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "vflip": self.vflip,
                "zoom": self.zoom, "shear": self.shear, "rotate": self.rotate,
                "translate": self.translate}


def build_augmenter(
    names: Sequence[str], strengths: dict[str, float], seed: int
) -> Callable | None:
    """Return a function `batch -> augmented batch` (float32 0-255 in and out), or None.

    Args:
        names: augmentations to apply: crop, flip, vflip, zoom, shear, rotate, translate,
            contrast, brightness. They run in that order (crop, one fused geometric warp,
            then colour), whatever the order given.
        strengths: strength per augmentation name (see `Config` for meanings).
        seed: makes the random draws repeatable.
    """
    layers = []
    geometric = {name: strengths.get(name, 0.0) for name in names if name in GEOMETRIC}
    if "crop" in names and strengths.get("crop"):
        layers.append(RandomResizedCrop(1.0 - strengths["crop"], seed=seed))
    if not any(geometric.values()) and geometric:  # flips alone: a copy beats a warp
        mode = "horizontal_and_vertical" if len(geometric) == 2 else (
            "horizontal" if "flip" in geometric else "vertical")
        layers.append(keras.layers.RandomFlip(mode, seed=seed))
    elif geometric:
        layers.append(RandomAffine(
            flip="flip" in geometric, vflip="vflip" in geometric, seed=seed,
            **{k: v for k, v in geometric.items() if k not in ("flip", "vflip")},
        ))
    for name in names:
        s = strengths.get(name, 0.0)
        if name == "contrast" and s:
            layers.append(keras.layers.RandomContrast(s, value_range=(0, 255), seed=seed))
        elif name == "brightness" and s:
            layers.append(keras.layers.RandomBrightness(s, value_range=(0, 255), seed=seed))
    if not layers:
        return None
    pipeline = keras.Sequential(layers, name="augment")

    def augment(images):
        return keras.ops.clip(pipeline(images, training=True), 0.0, 255.0)

    return augment
