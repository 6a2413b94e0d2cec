"""Transfer learning: a frozen pretrained backbone, features computed once, a new head.

Phase 1 runs every photo through the frozen backbone once (the slow part on a CPU; ONNX
Runtime, `pawnet.features.frozen_backbone`), caches the pooled features per user by photo
content, and fits only the head's Dense layer on them (`pawnet.training.head`), in well
under a second. `feature_views` adds augmented views of each training
photo as extra feature rows. Phase 2 (`fine_tune` > 0) unfreezes the top blocks and trains
end to end on the image pipeline at a low learning rate, with batch norm kept in inference
mode. The bundle saves one model from raw pixels to probabilities.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pawnet import logs
from pawnet.data.images import load_pixels
from pawnet.distribute import broadcast, gather_rows
from pawnet.features import (
    FeatureStore,
    FrozenBackbone,
    cached_features,
    extract_features,
    frozen_backbone,
)
from pawnet.models.keras_file import FrozenTransfer
from pawnet.models.registry import get_model_spec
from pawnet.models.spec import KERAS_PREFIX, ModelSpec, output_kind
from pawnet.training.head import LinearHead, fit_linear
from pawnet.training.history import History, write_scalars
from pawnet.training.plan import Plan
from pawnet.training.recipe import Fitted, targets

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


def needs_tensorflow(spec: ModelSpec, fine_tune: int) -> bool:
    """Whether training `spec` needs TensorFlow: not for frozen EfficientNet-Lite backbones,
    whose features come from ONNX Runtime, whose head is fitted with NumPy and whose model
    file `keras_file` writes."""
    return bool(fine_tune) or any(b.startswith(KERAS_PREFIX) for b in spec.backbones)


def unfreeze_top_blocks(backbone: keras.Model, blocks: int) -> list[str]:
    """Make the top `blocks` blocks (and the head conv) trainable; batch norm stays frozen,
    so it keeps running in inference mode with its ImageNet statistics.

    Returns:
        Names of the layers made trainable.
    """
    numbers = sorted({int(layer.name.split("_")[0][5:]) for layer in backbone.layers
                      if layer.name.startswith("block")})
    chosen = {f"block{n}_" for n in numbers[-blocks:]} if blocks > 0 else set()
    backbone.trainable = True
    opened = []
    for layer in backbone.layers:
        top = layer.name.startswith(tuple(chosen)) or layer.name == "head_conv"
        is_bn = type(layer).__name__ == "BatchNormalization"
        layer.trainable = bool(top and not is_bn and layer.weights)
        if layer.trainable:
            opened.append(layer.name)
    return opened


def _features(plan: Plan, spec: ModelSpec, frozen: FrozenBackbone):
    """(train_x, val_x, views): cached plain-view features, with `feature_views` augmented
    views of each training photo stacked under the plain ones (views in all). On several
    workers each computes its share, and every worker gets all of them."""
    cfg, cluster = plan.cfg, plan.cluster
    train_photos, val_photos = plan.split("train"), plan.split("val")
    store, runtime = FeatureStore(frozen.key), frozen.runtime
    shared = (cluster, frozen.dim) if plan.multi_worker else None
    started = time.monotonic()
    train_x = cached_features(runtime, store, train_photos, cfg.image_size, cfg.batch_size,
                              "Features (train)", cfg.max_pixels, cluster=shared)
    val_x = cached_features(runtime, store, val_photos, cfg.image_size, cfg.batch_size,
                            "Features (val)", cfg.max_pixels, cluster=shared)
    views = [train_x]
    for view in range(1, cfg.feature_views + 1):
        from pawnet.data.augment import build_augmenter

        augment = build_augmenter(cfg.augment, cfg.augment_strengths(), cfg.seed + view)
        paths = [p.path for p in train_photos]
        mine = cluster.shard(paths) if shared else paths
        rows = extract_features(runtime, mine, cfg.image_size, cfg.batch_size,
                                augment=augment, desc=f"Features (augmented view {view})",
                                max_pixels=cfg.max_pixels) if mine else np.zeros((0, frozen.dim))
        views.append(gather_rows(cluster, rows.astype(np.float32), len(paths))
                     if shared else rows)
    n_photos = len(train_photos) * len(views) + len(val_photos)
    log.info(f"Features of {n_photos} photo views ready in {time.monotonic() - started:.1f}s "
             f"({len(store.features)} cached for {spec.name})")
    return np.concatenate(views), val_x, len(views)


def _fit_head(plan: Plan, x: np.ndarray, y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
              weights: dict[int, float] | None) -> tuple[LinearHead, float, float]:
    """The head fitted on features, its history written; (head, val_loss, val_accuracy)."""
    cfg = plan.cfg
    started = time.monotonic()
    index = y[:, 0].astype(int) if y.shape[1] == 1 else y.argmax(1)
    sample_weight = np.array([weights[i] for i in index]) if weights else None
    linear = fit_linear(x, y, val_x, val_y, sample_weight=sample_weight,
                        label_smoothing=cfg.label_smoothing, max_iter=cfg.epochs,
                        patience=cfg.patience)
    History(plan.run_dir).write(linear.rows)
    write_scalars(plan.run_dir, cfg.tensorboard, "head", linear.rows)
    best = min(linear.rows, key=lambda r: r.get("val_loss", 0.0))
    loss, accuracy = best.get("val_loss", 0.0), best.get("val_accuracy", 0.0)
    log.info(f"Head fitted in {time.monotonic() - started:.1f}s ({len(linear.rows)} "
             f"iterations): val_loss {loss:.4f}, val_accuracy {accuracy:.4f}")
    return linear, loss, accuracy


CHECK_PHOTOS = 16  # validation photos run through the saved model to check it


def _check_pixels(plan: Plan) -> np.ndarray:
    """The first `CHECK_PHOTOS` validation photos, decoded: what the saved model is checked
    on, from pixels, against the head on their cached features."""
    cfg = plan.cfg
    photos = plan.split("val")[:CHECK_PHOTOS]
    return np.stack([load_pixels(p.path, cfg.image_size, cfg.max_pixels) for p in photos]
                    ) if photos else np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)


def _check_composed(model, linear: LinearHead, plan: Plan, val_x: np.ndarray) -> None:
    """The saved model, from pixels, must give what the head gave on cached features, so
    the validation figures measured on features are the saved model's own."""
    pixels = _check_pixels(plan)
    if not len(pixels):
        return
    n = len(pixels)
    import keras

    got = keras.ops.convert_to_numpy(model(pixels.astype(np.float32), training=False))
    want = linear.outputs(val_x[:n])
    if not np.allclose(got, want, atol=1e-4):
        raise RuntimeError(f"saved model and trained head disagree by "
                           f"{np.abs(got - want).max():.2g} on validation photos")


def _head_with(linear: LinearHead | None, classes: int, backbone: keras.Model) -> keras.Model:
    from pawnet.models.pretrained import build_head

    head = build_head(classes, backbone)
    if linear is not None:
        head.get_layer("predictions").set_weights([linear.kernel, linear.bias])
    return head


def fit(plan: Plan, spec: ModelSpec, weights: dict[int, float] | None) -> Fitted | None:
    """Phase 1: the head on cached backbone features; phase 2 (optional): fine-tune the top
    blocks. A resumed run redoes phase 1 from the feature cache, in seconds. On several
    workers, all share out the features, the chief fits the head, and all fine-tune.

    Returns:
        The composed model (pixels to probabilities) measured on the validation photos,
        with the features its head was trained on unless fine-tuning changed them; None
        on a worker other than the chief, which alone finishes the run.
    """
    cfg = plan.cfg
    multi_worker, chief = plan.multi_worker, plan.is_chief
    log.info(f"Transfer learning from {spec.name} at {cfg.image_size}px; run folder {plan.run_dir}")
    with logs.timed("backbone graph"):
        frozen = frozen_backbone(spec, cfg.image_size, cfg.weights)
    with logs.timed("features"):
        train_x, val_x, views = _features(plan, spec, frozen)
    if not chief and not cfg.fine_tune:
        return None
    binary = len(plan.classes) == 2
    linear, loss, accuracy = None, 0.0, 0.0
    if chief:
        train_y = np.concatenate([targets(plan.split("train"), plan.classes, binary)] * views)
        val_y = targets(plan.split("val"), plan.classes, binary)
        with logs.timed("head"):
            linear, loss, accuracy = _fit_head(plan, train_x, train_y, val_x, val_y, weights)
    if not cfg.fine_tune:
        plain = {"train": train_x[: len(plan.split("train"))], "val": val_x}
        return Fitted(_frozen_model(plan, spec, linear, val_x), loss, accuracy,
                      linear.outputs(val_x), plain)
    from pawnet.models.pretrained import load_backbone

    backbone = load_backbone(spec, cfg.image_size, weights=cfg.weights,
                             trainable_later=not multi_worker)
    head = _head_with(linear, len(plan.classes), backbone)
    epochs_done = len(linear.rows) if linear else 0
    if multi_worker:
        backbone, head, epochs_done = _on_every_worker(plan, spec, head, epochs_done)
    return _fine_tune(plan, backbone, head, spec, weights, epochs_done)


def _frozen_model(plan: Plan, spec: ModelSpec, linear: LinearHead, val_x: np.ndarray):
    """The model the bundle saves, from pixels: described for `keras_file` to write without
    TensorFlow, or composed in Keras for a `keras:NAME` backbone (and checked)."""
    cfg = plan.cfg
    if not needs_tensorflow(spec, cfg.fine_tune):
        return FrozenTransfer(spec.name, spec.backbones, cfg.image_size, linear.kernel,
                              linear.bias)
    from pawnet.models.pretrained import compose, load_backbone

    with logs.timed("Keras model"):
        backbone = load_backbone(spec, cfg.image_size, weights=cfg.weights)
        model = compose(backbone, _head_with(linear, len(plan.classes), backbone), spec.name)
        _check_composed(model, linear, plan, val_x)
    return model


def ready_runtime(plan: Plan, model: FrozenTransfer, val_x: np.ndarray,
                  bundle_dir: Path) -> None:
    """The saved model written for ONNX Runtime too (from the checkpoints) and checked on
    validation photos, from their pixels, against what it gives on their cached features:
    so the validation figures are the saved model's own, and `predict`, `evaluate` and
    `serve` run it without converting it through TensorFlow."""
    from pawnet.inference.bundle import resolve
    from pawnet.inference.runtimes import seeded

    pixels = _check_pixels(plan)
    if not len(pixels):
        return
    cfg = plan.cfg
    backbone = frozen_backbone(get_model_spec(cfg.model), cfg.image_size).runtime
    if seeded(resolve(bundle_dir).fingerprint, "onnx", model.onnx(), pixels,
              model.outputs(val_x[:len(pixels)]),
              getattr(backbone, "photos_per_call", None)) is None:
        raise RuntimeError("the saved model disagrees with the trained head on validation "
                           "photos")


def _on_every_worker(plan: Plan, spec: ModelSpec, head: keras.Model, epochs_done: int):
    """The chief's head, and a backbone to fine-tune, made in the strategy's scope on every
    worker; the number of head epochs the chief ran."""
    cfg = plan.cfg
    from pawnet.models.pretrained import build_head, load_backbone

    *head_weights, done = broadcast(plan.cluster, [*head.get_weights(), np.array(epochs_done)])
    with plan.cluster.scope():
        backbone = load_backbone(spec, cfg.image_size, trainable_later=True,
                                 weights=cfg.weights)
        head = build_head(len(plan.classes), backbone)
    head.set_weights(head_weights)
    return backbone, head, int(done)


def _fine_tune(plan: Plan, backbone: keras.Model, head: keras.Model, spec: ModelSpec,
               weights: dict[int, float] | None, epochs_done: int) -> Fitted | None:
    from pawnet.models.pretrained import compose
    from pawnet.training.recipe import compile_model, image_datasets, steps_per_epoch
    from pawnet.training.scratch import fit_on_images, validated

    cfg, cluster = plan.cfg, plan.cluster
    opened = unfreeze_top_blocks(backbone, cfg.fine_tune)
    log.info(f"Fine-tuning the top {cfg.fine_tune} blocks ({len(opened)} layers, batch norm "
             f"frozen) at lr {cfg.fine_tune_lr:g} for up to {cfg.fine_tune_epochs} epochs")
    binary = output_kind(head) == "sigmoid"
    train_ds, val_ds = image_datasets(plan, binary, weights=weights)
    with cluster.scope() if cluster else contextlib.nullcontext():
        model = compose(backbone, head, spec.name)
        compile_model(model, cfg, steps_per_epoch(len(plan.split("train")), cfg),
                      lr=cfg.fine_tune_lr, epochs=cfg.fine_tune_epochs)
    model = fit_on_images(model, plan, train_ds, val_ds, weights,
                          epochs=epochs_done + cfg.fine_tune_epochs, initial_epoch=epochs_done)
    if not plan.is_chief:
        return None
    return validated(model, plan, binary, val_ds)
