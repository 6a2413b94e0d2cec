"""`train`: from a folder of photos to a run folder holding a model bundle (its layout:
`pawnet.run_folder`).

One step per function: `plan` settles what the run does (new or resumed), `scratch` or
`transfer` fits (`recipe` holds what they share, `callbacks` record and checkpoint), `trust`
fits calibration and the unknowns on the validation photos, then the bundle is saved.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pawnet import logs
from pawnet.config import Config, resolve_config
from pawnet.distribute import Cluster, connect, lost_workers, multi_worker_asked, split_batch
from pawnet.errors import one_line
from pawnet.inference.bundle import BundleSpec, save_bundle
from pawnet.models.keras_file import FrozenTransfer
from pawnet.models.registry import get_model_spec
from pawnet.models.spec import output_kind
from pawnet.quiet import native_logs_are_shown
from pawnet.run_folder import RunFolder, read_history
from pawnet.training import transfer
from pawnet.training.history import require_tensorboard
from pawnet.training.plan import (
    Plan,
    already_finished,
    check_resumable,
    new_plan,
    provenance,
    resume_plan,
    start_resumed,
)
from pawnet.training.recipe import Fitted, class_weights
from pawnet.training.trust import Calibration, Unknowns, fit_calibration, fit_unknowns

log = logging.getLogger(__name__)


def train(photos: str | Path | None = None, *, config: str | Path | dict | None = None,
          verbose: bool = True, **settings: Any) -> Path | None:
    """Train a model on a folder of photos and save a bundle in a new run folder.

    Args:
        photos: folder of photos (class folders, train/val/test folders, or Kaggle-style
            `cat.1.jpg` files). Defaults to None: the `photos` of `config`.
        config: a YAML file or dict of settings; keyword arguments win over it.
        verbose: show progress (pawnet's log lines and Keras' epochs); warnings always.
        **settings: any `Config` field, e.g. `model="tutorial-a-cnn"`, `epochs=10`,
            `image_size=150`, `augment=["flip", "zoom"]`, `resume="runs/train"`.

    Returns:
        The run folder; its `bundle/` holds the trained model. None on a worker of a
        multi-worker run other than the chief, which writes the run folder. Resuming a
        finished run does nothing unless `epochs` is more than it was set to; then its
        bundle and reports move to `RUN/previous/N/` and it trains on.

    Raises:
        ConfigError, DataError: bad settings or unusable photos.
        ClusterError: workers that differ, or one lost (see `pawnet.distribute`).

    >>> run = pawnet.train("photos/", epochs=5)
    """
    entered = time.monotonic()
    photos = str(photos) if photos is not None else None
    resume = Path(settings["resume"]) if settings.get("resume") else None
    with logs.verbosity(verbose), logs.timings() as times:
        if resume is not None:
            check_resumable(resume, photos=photos, config=config, **settings)
            if already_finished(resume, settings.get("epochs")):
                return resume
        resumed = (resume_plan(resume, photos=photos, config=config, **settings)
                   if resume is not None else None)
        cfg = resumed.cfg if resumed else resolve_config(config, photos=photos, **settings)
        cluster = _connect(cfg)
        with lost_workers(cluster) if cluster.strategy else contextlib.nullcontext():
            if not resumed:
                _check_inputs(cfg)
            with logs.timed("scan and split"):
                plan = start_resumed(resumed, cluster) if resumed else new_plan(cfg, cluster)
            try:
                _run(plan)
            finally:
                if not cluster.is_chief:
                    shutil.rmtree(plan.run_dir, ignore_errors=True)
        if native_logs_are_shown():  # the CLI's --verbose: where the time went
            log.info(logs.breakdown({"start-up": entered - logs.STARTED, **times},
                                    time.monotonic() - logs.STARTED))
    return plan.run_dir if cluster.is_chief else None


def _connect(cfg: Config) -> Cluster:
    """The run's cluster; none at all (and no TensorFlow) for a run in one process that
    does not need TensorFlow (`transfer.needs_tensorflow`)."""
    spec = get_model_spec(cfg.model)
    if (spec.pretrained and not transfer.needs_tensorflow(spec, cfg.fine_tune)
            and not multi_worker_asked(cfg.strategy, cfg.workers)):
        return Cluster(None)
    from pawnet.quiet import import_quietly

    with logs.timed("TensorFlow start-up"):
        import_quietly()
    cluster = connect(cfg.strategy, cfg.workers, cfg.worker_index, cfg.startup_timeout)
    split_batch(cfg.batch_size, cluster)
    if cluster.kind != "one":
        log.info(f"Training with the {cluster.describe()}")
    return cluster


def _check_inputs(cfg: Config) -> None:
    """What can be wrong with the settings, found before a run folder is made for them:
    TensorBoard asked for but missing, fine-tuning a model that cannot be, a --weights
    file that does not load."""
    if cfg.tensorboard:
        require_tensorboard()
    if cfg.fine_tune and get_model_spec(cfg.model).pretrained:
        from pawnet.models.pretrained import check_fine_tunable

        check_fine_tunable(get_model_spec(cfg.model))
    if cfg.weights is not None:
        from pawnet.models.pretrained import load_backbone

        load_backbone(get_model_spec(cfg.model), cfg.image_size, weights=cfg.weights)


def _run(plan: Plan) -> None:
    """Every worker fits; the chief alone finishes the run."""
    if plan.cluster.strategy is not None:
        import keras

        keras.utils.set_random_seed(plan.cfg.seed)
    _describe(plan)
    fitted = _fit(plan, _class_weights(plan))
    if fitted is not None:
        _finish(plan, fitted)


def _describe(plan: Plan) -> None:
    counts = (f"{split} {sum(c.values())} "
              f"({', '.join(f'{one_line(k)} {v}' for k, v in c.items())})"
              for split, c in plan.counts().items())
    log.info("Using " + "; ".join(counts))


def _class_weights(plan: Plan) -> dict[int, float] | None:
    if plan.cfg.class_weight != "auto":
        return None
    weights = class_weights(plan.split("train"), plan.classes)
    if weights:
        log.info("Classes are imbalanced; class weights: "
                 + ", ".join(f"{one_line(plan.classes[i])} {w:.2f}" for i, w in weights.items()))
    return weights


def _fit(plan: Plan, weights: dict[int, float] | None) -> Fitted | None:
    """The trained model on the chief (None on the other workers)."""
    spec = get_model_spec(plan.cfg.model)
    started = time.monotonic()
    if spec.pretrained:
        fitted = transfer.fit(plan, spec, weights)
    else:
        from pawnet.training import scratch

        with logs.timed("training"):
            fitted = scratch.fit(plan, spec, weights)
    if fitted is not None:
        fitted.seconds = time.monotonic() - started
        log.info(f"Saved model on validation photos: val_loss {fitted.val_loss:.4f}, "
                 f"val_accuracy {fitted.val_accuracy:.4f}")
    return fitted


def _finish(plan: Plan, fitted: Fitted) -> None:
    with logs.timed("calibration"):
        calibration = fit_calibration(plan, fitted)
    with logs.timed("OOD and too-small"):
        unknowns = fit_unknowns(plan, get_model_spec(plan.cfg.model), fitted)
    with logs.timed("bundle"):
        bundle_dir = _save(plan, fitted, calibration, unknowns)
        if isinstance(unknowns.model, FrozenTransfer):
            transfer.ready_runtime(plan, unknowns.model, fitted.features["val"], bundle_dir)
    shutil.rmtree(plan.pixel_cache, ignore_errors=True)
    log.info(f"Saved bundle to {one_line(bundle_dir)}")


def _save(plan: Plan, fitted: Fitted, calibration: Calibration, unknowns: Unknowns) -> Path:
    """The bundle: the model with its OOD score, what it needs to be used the way it was
    trained (`bundle.json`), and how it came to be (`provenance.json`)."""
    cfg, run = plan.cfg, RunFolder(plan.run_dir)
    spec = BundleSpec(model_name=cfg.model, class_names=plan.classes,
                      image_size=cfg.image_size, output=output_kind(fitted.model),
                      temperature=calibration.temperature,
                      min_confidence=calibration.min_confidence,
                      ood_threshold=unknowns.ood_threshold, min_side=unknowns.min_side)
    metrics = {"val_loss": fitted.val_loss, "val_accuracy": fitted.val_accuracy,
               **calibration.metrics(), "ood_threshold": unknowns.ood_threshold,
               "min_side": unknowns.min_side}
    record = provenance(plan, read_history(run.history), metrics, fitted.seconds)
    return save_bundle(run.bundle, unknowns.model, spec, record, cfg.to_yaml())
