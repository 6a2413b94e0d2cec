"""Fitting the OOD score at the end of training: the bank of training features the score
compares against, and its threshold from the validation photos (see `pawnet.ood`)."""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from pawnet.models.spec import ModelSpec
from pawnet.ood import feature_bank, scores, small_view, threshold
from pawnet.training.plan import Plan, log


def _transfer_features(plan: Plan, model, spec: ModelSpec):
    """Backbone features of the training photos, the validation photos and their shrunk
    copies, from the feature cache where they are in it."""
    from pawnet.training.transfer import (
        FeatureStore,
        backbone_id,
        backbone_runtime,
        cached_features,
    )

    cfg = plan.cfg
    backbone = model.layers[-2]
    key = backbone_id(backbone, "+".join(spec.backbones), cfg.image_size)
    runtime = backbone_runtime(backbone, key)
    store = FeatureStore(key)
    args = (cfg.image_size, cfg.batch_size)
    train = cached_features(runtime, store, plan.split("train"), *args, "Features (train)",
                            cfg.max_pixels)
    val = cached_features(runtime, store, plan.split("val"), *args, "Features (val)",
                          cfg.max_pixels)
    small = cached_features(runtime, FeatureStore(key, "small"), plan.split("val"), *args,
                            "Features (val, shrunk)", cfg.max_pixels,
                            view=partial(small_view, max_pixels=cfg.max_pixels))
    return train, val, small


def _scratch_features(plan: Plan, model):
    """Features the trained model classifies, of the training photos, the validation photos
    and their shrunk copies."""
    from pawnet.data.images import load_pixels
    from pawnet.models.ood import feature_model
    from pawnet.runtimes import KerasRuntime

    cfg = plan.cfg
    features = KerasRuntime(feature_model(model))

    def of(sources) -> np.ndarray:
        out = [features(np.stack([load_pixels(s, cfg.image_size, cfg.max_pixels)
                                  for s in sources[i : i + cfg.batch_size]]))
               for i in range(0, len(sources), cfg.batch_size)]
        return np.concatenate(out)

    val = [p.path for p in plan.split("val")]
    return (of([p.path for p in plan.split("train")]), of(val),
            of([small_view(path, cfg.max_pixels) for path in val]))


def fit_ood(plan: Plan, model, spec: ModelSpec):
    """`model` with an OOD score column, and the score's threshold; the model unchanged and
    None when there are no validation photos to set it on."""
    from pawnet.models.ood import with_ood

    if not plan.split("val"):
        log("No validation photos: the model cannot say 'neither' (no OOD threshold)")
        return model, None
    started = time.monotonic()
    train, val, small = (_transfer_features(plan, model, spec) if spec.pretrained
                         else _scratch_features(plan, model))
    bank = feature_bank(train, plan.cfg.seed)
    found = threshold(np.concatenate([scores(val, bank), scores(small, bank)]))
    log(f"OOD score fitted in {time.monotonic() - started:.1f}s on {len(bank)} training "
        f"photos: 'neither' above {found:.4f}")
    return with_ood(model, bank), round(found, 6)
