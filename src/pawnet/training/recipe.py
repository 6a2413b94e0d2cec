"""The ingredients every way of training shares: targets, class weights, the compiled
optimizer and loss, the image pipelines, and what fitting gives back (`Fitted`).
`pawnet bench` uses them too, so it measures exactly what `pawnet train` runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pawnet.config import Config
from pawnet.data.scan import Photo, count_classes
from pawnet.training.head import encode_targets
from pawnet.training.plan import Plan

IMBALANCE_RATIO = 1.5  # class weights turn on when the largest class is this much bigger


@dataclass
class Fitted:
    """A trained model and how it did on the validation photos, as the chief measured it.

    `val_outputs` are its outputs on those photos, in their order; `features` the frozen
    backbone's features its head was trained on ("train", "val"), so they need not be
    computed again (None from scratch, or once fine-tuning changed them)."""

    model: Any  # keras.Model
    val_loss: float
    val_accuracy: float
    val_outputs: np.ndarray
    features: dict[str, np.ndarray] | None = None
    seconds: float = 0.0  # fitting time in this session


def targets(photos: list[Photo], classes: list[str], binary: bool) -> np.ndarray:
    """Training targets: `(N, 1)` 0/1 floats for a sigmoid output, else one-hot rows."""
    index = np.array([classes.index(p.label) for p in photos], dtype=np.int64)
    return encode_targets(index, 1 if binary else len(classes))


def class_weights(photos: list[Photo], classes: list[str]) -> dict[int, float] | None:
    """Inverse-frequency weights when classes are imbalanced, else None."""
    counts = np.array(list(count_classes(photos, classes).values()), dtype=float)
    if counts.min() == 0 or counts.max() / counts.min() < IMBALANCE_RATIO:
        return None
    weights = counts.sum() / (len(classes) * counts)
    return {i: float(w) for i, w in enumerate(weights)}


def augmentation_used(cfg: Config) -> list[str]:
    """The augmentations training really applies. A pretrained model trains its head on
    features of plain photos, unless `feature_views` or `fine_tune` asks for more."""
    from pawnet.models.registry import get_model_spec

    pretrained = get_model_spec(cfg.model).pretrained
    return list(cfg.augment) if not pretrained or cfg.feature_views or cfg.fine_tune else []


def compile_model(model, cfg: Config, steps_per_epoch: int, *, lr: float | None = None,
                  epochs: int | None = None, steps_per_execution: int = 1) -> None:
    """Compile with Adam (AdamW when weight decay is set), the loss that fits the model's
    output, accuracy, and the configured learning-rate schedule.

    Args:
        lr: peak learning rate. Defaults to `cfg.lr`.
        epochs: length of the schedule. Defaults to `cfg.epochs`.
    """
    import keras

    from pawnet.models.spec import output_kind

    peak = cfg.lr if lr is None else lr
    if cfg.lr_schedule == "cosine":
        total = max(1, (epochs or cfg.epochs) * steps_per_epoch)
        warmup = min(steps_per_epoch, total // 2)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, total - warmup), alpha=0.01,
            warmup_target=peak, warmup_steps=warmup,
        )
    else:
        schedule = peak
    if cfg.weight_decay > 0:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    if output_kind(model) == "sigmoid":
        loss = keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)


def steps_per_epoch(n_photos: int, cfg: Config) -> int:
    return math.ceil(n_photos / cfg.batch_size)


def image_datasets(plan: Plan, binary: bool, *, augment: bool = True,
                   weights: dict[int, float] | None = None):
    """(train, val) image pipelines: train shuffled and augmented, both cached after the
    first epoch (in memory, or under `plan.pixel_cache` when they would not fit).

    On several workers each one reads only its share of the photos, in batches of its
    share of the global batch, with the class `weights` as sample weights (Keras cannot
    add them to a distributed dataset); elsewhere `fit` takes the weights itself.
    """
    from pawnet.data.augment import build_augmenter
    from pawnet.data.pipeline import cache_location, labelled_dataset

    cfg, cluster = plan.cfg, plan.cluster
    train_photos, val_photos = plan.split("train"), plan.split("val")
    augmenter = build_augmenter(cfg.augment, cfg.augment_strengths(), cfg.seed) if augment else None
    weights = weights if plan.multi_worker else None

    def pipeline(photos: list[Photo], split: str, batch_size: int, **kwargs):
        index = np.array([plan.classes.index(p.label) for p in photos], dtype=np.int64)
        return labelled_dataset(
            [p.path for p in photos], targets(photos, plan.classes, binary), cfg.image_size,
            batch_size, max_pixels=cfg.max_pixels,
            cache=cache_location(len(train_photos) + len(val_photos), cfg.image_size,
                                 cfg.cache, plan.pixel_cache / split),
            sample_weights=None if weights is None else
            np.array([weights[i] for i in index], dtype=np.float32),
            **kwargs,
        )

    if not plan.multi_worker:
        return (pipeline(train_photos, "train", cfg.batch_size, shuffle_seed=cfg.seed,
                         augment=augmenter),
                pipeline(val_photos, "val", cfg.batch_size))

    def sharded(photos: list[Photo], split: str, **kwargs):
        def make(context):
            mine = photos[context.input_pipeline_id::context.num_input_pipelines]
            return pipeline(mine, split, context.get_per_replica_batch_size(cfg.batch_size),
                            **kwargs)

        return cluster.strategy.distribute_datasets_from_function(make)

    return (sharded(train_photos, "train", shuffle_seed=cfg.seed, augment=augmenter),
            sharded(val_photos, "val"))


def head_training_set(head, cfg: Config, x: np.ndarray, y: np.ndarray):
    """Compile `head` to train on in-memory features `x`, `y`; return their batches.

    Head epochs last milliseconds, so the batches are built once in memory and all of an
    epoch's steps run in one call, which keeps Keras' per-epoch overhead from dominating.
    """
    import tensorflow as tf

    steps = steps_per_epoch(len(x), cfg)
    compile_model(head, cfg, steps, steps_per_execution=steps)
    return (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=cfg.seed).batch(cfg.batch_size).prefetch(2))
