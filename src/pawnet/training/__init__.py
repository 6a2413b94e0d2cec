"""`train`: from a folder of photos to a run folder holding a model bundle.

```
runs/train/
  config.yaml      the resolved settings        manifest.csv   path, label, split, sha256
  data.json        skipped files, duplicates    history.csv    one row per epoch
  curves.png       loss and accuracy curves     checkpoints/   last/, best.weights.h5
  bundle/          the model bundle (see pawnet.inference.bundle)
```

`plan` settles what the run does (new or resumed), `recipe` holds what every way of training
shares, `scratch` and `transfer` fit, `callbacks` record and checkpoint.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from pawnet.config import resolve_config
from pawnet.distribute import connect, lost_workers, split_batch
from pawnet.errors import one_line
from pawnet.inference.bundle import BundleSpec, class_probabilities, save_bundle
from pawnet.models.registry import get_model_spec
from pawnet.models.spec import output_kind
from pawnet.run_folder import RunFolder, read_history
from pawnet.training import scratch, transfer
from pawnet.training.callbacks import require_tensorboard
from pawnet.training.plan import (
    Plan,
    already_finished,
    check_resumable,
    new_plan,
    provenance,
    resume_plan,
    start_resumed,
)
from pawnet.training.recipe import class_weights
from pawnet.training.unknowns import fit_unknowns

log = logging.getLogger(__name__)


def train(photos: str | Path | None = None, *, config: str | Path | dict | None = None,
          **settings: Any) -> Path | None:
    """Train a model on a folder of photos and save a bundle in a new run folder.

    Args:
        photos: folder of photos (class folders, train/val/test folders, or Kaggle-style
            `cat.1.jpg` files). Defaults to None: the `photos` of `config`.
        config: a YAML file or dict of settings; keyword arguments win over it.
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
    photos = str(photos) if photos is not None else None
    if settings.get("resume"):
        check_resumable(Path(settings["resume"]), photos=photos, config=config, **settings)
        if already_finished(Path(settings["resume"]), settings.get("epochs")):
            return Path(settings["resume"])
    resumed = resume_plan(Path(settings["resume"]), photos=photos, config=config, **settings
                          ) if settings.get("resume") else None
    cfg = resumed.cfg if resumed else resolve_config(config, photos=photos, **settings)
    cluster = connect(cfg.strategy, cfg.workers, cfg.worker_index, cfg.startup_timeout)
    split_batch(cfg.batch_size, cluster)
    if cluster.kind != "one":
        log.info(f"Training with the {cluster.describe()}")
    with lost_workers(cluster):
        if not resumed:
            _check_inputs(cfg)
        plan = start_resumed(resumed, cluster) if resumed else new_plan(cfg, cluster)
        try:
            run_dir = _fit(plan)
        finally:
            if not cluster.is_chief:
                shutil.rmtree(plan.run_dir, ignore_errors=True)
    return run_dir if cluster.is_chief else None


def _check_inputs(cfg) -> None:
    """What can be wrong with the settings, found before a run folder is made for them:
    TensorBoard asked for but missing, a --weights file that does not load."""
    if cfg.tensorboard:
        require_tensorboard()
    if cfg.weights is not None:
        from pawnet.models.pretrained import load_backbone

        load_backbone(get_model_spec(cfg.model), cfg.image_size, weights=cfg.weights)


def _calibration(plan: Plan, output: str, val_out: np.ndarray) -> dict[str, float]:
    """Fitted on the validation photos: the temperature, their calibration error (ECE)
    before and after it, and the minimum confidence to answer at (the run's `max_error` or
    `answer_share`, or the default policy)."""
    from pawnet.trust.calibration import (
        MIN_ANSWERED,
        UNANSWERED_WARNING,
        calibrate,
        choose_min_confidence,
        expected_calibration_error,
        fit_temperature,
        unanswered,
    )

    cfg = plan.cfg
    probabilities = class_probabilities(val_out, output)
    truth = np.array([plan.classes.index(p.label) for p in plan.split("val")])
    temperature = round(fit_temperature(probabilities, truth), 4)
    calibrated = calibrate(probabilities, temperature)
    chosen = choose_min_confidence(calibrated, truth, max_error=cfg.max_error,
                                   answer_share=cfg.answer_share)
    min_confidence = math.floor(chosen * 1e6) / 1e6  # rounded down: the photo at it answers
    left = unanswered(calibrated, min_confidence)
    found = {"temperature": temperature,
             "val_ece_uncalibrated": expected_calibration_error(probabilities, truth),
             "val_ece": expected_calibration_error(calibrated, truth),
             "min_confidence": min_confidence, "val_unanswered": round(left, 6)}
    policy = (f"at most {cfg.max_error:.1%} of the answers wrong" if cfg.max_error is not None
              else f"{cfg.answer_share:.1%} answered" if cfg.answer_share is not None
              else f"half as many unanswered as wrong, at least {MIN_ANSWERED:.0%} answered")
    log.info(f"Calibrated on validation photos: temperature {temperature:.3f}, expected "
             f"calibration error {found['val_ece_uncalibrated']:.4f} -> {found['val_ece']:.4f}; "
             f"'unsure' below {min_confidence:.4f} ({policy}): {left:.1%} of the validation "
             "photos unanswered")
    if left > UNANSWERED_WARNING:
        log.warning(f"'unsure' would leave {left:.0%} of the validation photos unanswered. "
                    "Try: --answer-share 0.9 (answer 90%), a larger --max-error, or more epochs or "
                    "photos")
    return found


def _fit(plan: Plan) -> Path:
    import keras

    cfg, run_dir = plan.cfg, plan.run_dir
    keras.utils.set_random_seed(cfg.seed)
    log.info("Using " + "; ".join(
             f"{split} {sum(c.values())} ({', '.join(f'{one_line(k)} {v}' for k, v in c.items())})"
             for split, c in plan.counts().items()
    ))
    weights = (class_weights(plan.split("train"), plan.classes)
               if cfg.class_weight == "auto" else None)
    if weights:
        log.info("Classes are imbalanced; class weights: "
                 + ", ".join(f"{one_line(plan.classes[i])} {w:.2f}" for i, w in weights.items()))

    spec = get_model_spec(cfg.model)
    started = time.monotonic()
    fitted = (transfer if spec.pretrained else scratch).fit(plan, spec, weights)
    if fitted is None:  # a worker other than the chief, whose part is done
        return run_dir
    model, (val_loss, val_accuracy), val_out, features = fitted
    fit_seconds = time.monotonic() - started
    log.info(f"Saved model on validation photos: val_loss {val_loss:.4f}, "
             f"val_accuracy {val_accuracy:.4f}")
    output = output_kind(model)
    calibration = _calibration(plan, output, val_out)
    model, score, min_side = fit_unknowns(plan, model, spec, features)
    ood_threshold = None if score is None else score.threshold

    bundle_spec = BundleSpec(model_name=cfg.model, class_names=plan.classes,
                             image_size=cfg.image_size, output=output,
                             temperature=calibration["temperature"],
                             min_confidence=calibration["min_confidence"],
                             ood_threshold=ood_threshold, min_side=min_side)
    metrics = {"val_loss": val_loss, "val_accuracy": val_accuracy, **calibration,
               "ood_threshold": ood_threshold, "min_side": min_side}
    record = provenance(plan, read_history(RunFolder(run_dir).history), metrics, fit_seconds)
    bundle_dir = save_bundle(RunFolder(run_dir).bundle, model, bundle_spec, record, cfg.to_yaml())
    shutil.rmtree(plan.pixel_cache, ignore_errors=True)
    log.info(f"Saved bundle to {one_line(bundle_dir)}")
    return run_dir
