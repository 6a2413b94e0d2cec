"""Training end to end on images: from scratch, and the loop that transfer learning's
fine-tuning reuses. Keras `fit` on the tf.data pipeline, with the best weights kept by
validation loss, early stopping, curves, and a resume checkpoint after every epoch."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import sys

import numpy as np

from pawnet import logs
from pawnet.models.spec import ModelSpec, output_kind
from pawnet.run_folder import RunFolder, read_history
from pawnet.training.callbacks import (
    HistoryRecorder,
    ResumableEarlyStopping,
    ResumeCheckpoint,
    last_checkpoint,
    tensorboard,
)
from pawnet.training.plan import Plan
from pawnet.training.recipe import Fitted, compile_model, image_datasets, steps_per_epoch

log = logging.getLogger(__name__)


def fit_on_images(model, plan: Plan, train_ds, val_ds, weights, *, epochs: int,
                  initial_epoch: int, state: dict | None = None):
    """Keras fit with best checkpoint, early stopping, history/curves and resume state;
    returns the model with its best weights."""
    import keras

    run_dir, cfg = plan.run_dir, plan.cfg
    ckpt_dir = RunFolder(run_dir).checkpoints
    ckpt_dir.mkdir(exist_ok=True)
    state = state or {}
    early = ResumableEarlyStopping(monitor="val_loss", patience=cfg.patience, state=state)
    best_path = ckpt_dir / "best.weights.h5"
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            best_path, monitor="val_loss", save_best_only=True, save_weights_only=True,
            initial_value_threshold=state.get("best"),
        ),
        early,
        HistoryRecorder(run_dir, read_history(RunFolder(run_dir).history, initial_epoch)),
        ResumeCheckpoint(ckpt_dir, early),
        *tensorboard(run_dir, cfg.tensorboard, "images"),
    ]
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        initial_epoch=initial_epoch,
        class_weight=None if plan.multi_worker else weights,  # else in the datasets
        shuffle=False,  # the tf.data pipeline shuffles, with the run's seed
        callbacks=callbacks,
        verbose=(1 if sys.stdout.isatty() else 2) if logs.shown() else 0,
    )
    if best_path.exists():
        model.load_weights(best_path)
    if plan.multi_worker:
        log.info(f"Worker {plan.cluster.index} weights after training: sha256 "
                 f"{weights_digest(model)} (the same on every worker)")
    return model


def weights_digest(model) -> str:
    """The first 16 hex digits of the SHA-256 of all of a model's weights."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()[:16]


def on_this_worker(model, plan: Plan):
    """After multi-worker training, the model with the same weights outside the strategy,
    so evaluating and saving it on one worker needs no other."""
    import keras

    if not plan.multi_worker:
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def dtype_policy(cfg) -> str:
    """Keras' dtype policy for training from scratch: mixed float16 when asked (auto: on a
    GPU), else float32."""
    if cfg.precision == "auto":
        import tensorflow as tf

        return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    return "mixed_float16" if cfg.precision == "mixed" else "float32"


@contextlib.contextmanager
def built_with(policy: str):
    """Layers built in the block take `policy`; the global policy is restored after."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def in_float32(model, plan: Plan, spec: ModelSpec):
    """A model trained in mixed precision, as the same model in float32 (for the bundle,
    which every runtime reads), on this worker."""
    if model.dtype_policy.name == "float32":
        return model
    with built_with("float32"):
        copy = spec.build(len(plan.classes), plan.cfg.image_size)
    copy.set_weights(model.get_weights())
    compile_model(copy, plan.cfg, 1)
    return copy


def _start_or_resume(plan: Plan, spec: ModelSpec):
    import keras

    cfg = plan.cfg
    checkpoint = last_checkpoint(RunFolder(plan.run_dir).checkpoints) if plan.resumed else None
    if plan.resumed and (plan.state is None or checkpoint is None):
        log.info(f"No epoch of {plan.run_dir} finished before it stopped; training it from the "
                 "first epoch, on its saved split and settings")
        plan.state = None
    if plan.state is None or checkpoint is None:
        model = spec.build(len(plan.classes), cfg.image_size)
        compile_model(model, cfg, steps_per_epoch(len(plan.split("train")), cfg))
        return model
    log.info(f"Resuming {plan.run_dir} after epoch {plan.initial_epoch} of {cfg.epochs}")
    return keras.models.load_model(checkpoint)


def fit(plan: Plan, spec: ModelSpec, weights: dict[int, float] | None) -> Fitted | None:
    """Train `spec` from scratch (or on from the resume checkpoint): the model with its
    best weights, measured on the validation photos; None on a worker other than the
    chief, which alone finishes the run."""
    cfg = plan.cfg
    policy = dtype_policy(cfg)
    with (plan.cluster.scope() if plan.cluster else contextlib.nullcontext(),
          built_with(policy)):
        model = _start_or_resume(plan, spec)
    binary = output_kind(model) == "sigmoid"
    train_ds, val_ds = image_datasets(plan, binary, weights=weights)
    log.info(f"Training {cfg.model} at {cfg.image_size}px, batch {cfg.batch_size}, "
             f"up to {cfg.epochs} epochs, lr {cfg.lr:g} ({cfg.lr_schedule}), "
             f"augment: {', '.join(cfg.augment) or 'none'}"
             f"{', mixed precision' if policy != 'float32' else ''}; run folder {plan.run_dir}")
    model = fit_on_images(model, plan, train_ds, val_ds, weights, epochs=cfg.epochs,
                          initial_epoch=plan.initial_epoch, state=plan.state)
    if not plan.is_chief:
        return None
    return validated(in_float32(model, plan, spec), plan, binary, val_ds)


def validated(model, plan: Plan, binary: bool, val_ds) -> Fitted:
    """The trained model (on this worker) measured on the validation photos, in their
    order (`val_ds` unless it is spread over workers)."""
    if plan.multi_worker:
        model = on_this_worker(model, plan)
        plan = dataclasses.replace(plan, cluster=None)
        compile_model(model, plan.cfg, 1)
        _, val_ds = image_datasets(plan, binary, augment=False)
    loss, accuracy = (float(v) for v in model.evaluate(val_ds, verbose=0))
    return Fitted(model, loss, accuracy, np.asarray(model.predict(val_ds, verbose=0)))
