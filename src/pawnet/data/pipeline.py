"""tf.data input pipelines: decode and resize in parallel, cache uint8 pixels, batch, prefetch.

Decoding goes through `pawnet.images.load_pixels`, the same function predict and the server
use, so training sees exactly the pixels inference will see. Decoded images are cached as
uint8 after the first epoch (in memory when they fit, else on disk), so later epochs skip
decoding entirely. Augmentation runs on training batches after the cache.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from pawnet.data.images import MAX_PIXELS, DecodeBudget, load_pixels

MEMORY_CACHE_LIMIT = 3 * 1024**3  # bytes of decoded pixels kept in RAM before using disk

Cache = Literal["memory"] | Path | None  # where decoded pixels are kept: RAM, files, nowhere


def cache_location(n_images: int, image_size: int, mode: str, disk_dir: Path) -> Cache:
    """Where to cache decoded pixels for `mode` (auto, memory or disk): "memory", or a file
    prefix under `disk_dir` when they would not fit in `MEMORY_CACHE_LIMIT`."""
    fits = n_images * image_size * image_size * 3 <= MEMORY_CACHE_LIMIT
    if mode == "memory" or (mode == "auto" and fits):
        return "memory"
    disk_dir.mkdir(parents=True, exist_ok=True)
    return disk_dir / "pixels"


def pixel_dataset(
    paths: Sequence[str], image_size: int, max_pixels: int = MAX_PIXELS
) -> tf.data.Dataset:
    """Dataset of decoded `(image_size, image_size, 3)` uint8 images, in the order given."""

    budget = DecodeBudget.for_this_machine()

    def load(path: bytes) -> np.ndarray:
        return load_pixels(path.decode("utf-8"), image_size, max_pixels, budget=budget)

    def load_op(path):
        pixels = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(pixels, (image_size, image_size, 3))

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), dtype=tf.string))
    return ds.map(load_op, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


_BATCH_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def batch_function(model, dtype: str = "float32") -> Callable:
    """`model(images, training=False)` compiled once for batches of any size.

    Keras' `predict_on_batch` compiles again for each new batch size, so a loop's last,
    partial batch would pay a second compilation. The function is kept with the model, so
    later loops over the same model do not compile again.

    Args:
        dtype: the images' dtype: "uint8" pixels, or "float32" after augmentation; they
            are cast to float32 inside.
    """
    functions = _BATCH_FUNCTIONS.setdefault(model, {})
    if dtype not in functions:
        held = weakref.ref(model)  # the function must not keep its model alive
        spec = tf.TensorSpec((None, *model.input.shape[1:]), dtype)
        functions[dtype] = tf.function(
            lambda images: held()(tf.cast(images, tf.float32), training=False),
            input_signature=[spec])
    return functions[dtype]


def decoded_dataset(
    paths: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    image_size: int,
    *,
    cache: Cache = None,
    max_pixels: int = MAX_PIXELS,
    sample_weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Unbatched `(uint8 image, label)` pairs (with a third item, the sample weight, when
    given), decoded once and then cached if asked.

    Args:
        cache: "memory", a file path prefix on disk, or None (decode every pass).
    """
    images = pixel_dataset(paths, image_size, max_pixels)
    extra = () if sample_weights is None else (
        tf.data.Dataset.from_tensor_slices(np.asarray(sample_weights)),)
    ds = tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(np.asarray(labels)),
                             *extra)
    if cache is None:
        return ds
    return ds.cache("" if cache == "memory" else str(cache))


def batched(
    decoded: tf.data.Dataset,
    batch_size: int,
    *,
    shuffle: tuple[int, int] | None = None,
    augment: Callable | None = None,
) -> tf.data.Dataset:
    """Batches of `(float32 images 0-255, labels)` from `decoded_dataset`.

    Args:
        shuffle: `(buffer_size, seed)` to reshuffle every epoch; None keeps the order.
        augment: function applied to each float32 batch (training only).
    """
    ds = decoded
    if shuffle is not None:
        ds = ds.shuffle(shuffle[0], seed=shuffle[1], reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest),
                num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False  # it stalled whole epochs at random (docs/decisions.md)
    if augment is not None:
        # Sequential: random layers share one seed state, and parallel calls would make the
        # draws depend on thread timing, so runs would not repeat. Each op may still use
        # every core, which tf.data does not allow map functions by default.
        ds = ds.map(lambda x, *rest: (augment(x), *rest))
        options.threading.max_intra_op_parallelism = os.cpu_count() or 1
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def labelled_dataset(
    paths: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    image_size: int,
    batch_size: int,
    *,
    cache: Cache = None,
    shuffle_seed: int | None = None,
    augment: Callable | None = None,
    max_pixels: int = MAX_PIXELS,
    sample_weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of `(float32 images 0-255, int labels)` for `fit` and `evaluate`, with
    each photo's weight third when `sample_weights` are given.

    Args:
        paths, labels: photos and their class indices.
        image_size: side of the square images.
        batch_size: photos per batch.
        cache: "memory", a file path prefix on disk, or None (decode every pass).
        shuffle_seed: shuffle every epoch with this seed; None keeps the order.
        augment: function applied to each float32 batch (training only).
        max_pixels: decompression-bomb limit passed to the decoder.
    """
    decoded = decoded_dataset(paths, labels, image_size, cache=cache, max_pixels=max_pixels,
                              sample_weights=sample_weights)
    shuffle = None if shuffle_seed is None else (len(paths), shuffle_seed)
    return batched(decoded, batch_size, shuffle=shuffle, augment=augment)
