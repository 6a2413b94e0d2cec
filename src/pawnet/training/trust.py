"""What a trained model needs to say "I don't know", fitted at the end of training: the OOD
score (`pawnet.trust.ood`) and the size below which photos are too small to judge
(`pawnet.trust.verdict`)."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from pawnet.inference.bundle import class_probabilities
from pawnet.models.spec import ModelSpec, output_kind
from pawnet.training.plan import Plan
from pawnet.trust.ood import OodScore, fit
from pawnet.trust.verdict import choose_min_side, sides_to_try

log = logging.getLogger(__name__)

SIZE_PHOTOS = 1000  # training photos whose sizes are read (headers only)
SHRUNK_PHOTOS = 128  # validation photos shrunk to measure accuracy by size


def shorter_sides(paths: list[str], seed: int) -> list[int]:
    """The shorter side of up to `SIZE_PHOTOS` of the photos (drawn with `seed`), from their
    headers."""
    from PIL import Image

    if len(paths) > SIZE_PHOTOS:
        paths = [paths[i] for i in np.random.default_rng(seed).choice(len(paths), SIZE_PHOTOS,
                                                                     replace=False)]
    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except OSError:
            continue  # changed since the scan; its size is not needed
    return sides


def small_view(source, side: int, max_pixels: int | None = None) -> bytes:
    """A photo shrunk so that its shorter side is `side` pixels (its aspect kept), as PNG
    bytes, so that it goes through the decoding a small photo would."""
    from PIL import Image

    from pawnet.data.images import MAX_PIXELS, load_preview

    pixels = load_preview(source, 8 * side, max_pixels or MAX_PIXELS)
    height, width = pixels.shape[:2]
    scale = side / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR).save(buffer, "PNG")
    return buffer.getvalue()


def _transfer_parts(plan: Plan, model, spec: ModelSpec) -> tuple[Callable, Callable]:
    """(a function giving the backbone's features of photos or of their views, cached; the
    head on those features)."""
    from pawnet.features import FeatureStore, backbone_id, backbone_runtime, cached_features

    cfg = plan.cfg
    backbone, head = model.layers[-2], model.layers[-1]
    key = backbone_id(backbone, "+".join(spec.backbones), cfg.image_size)
    runtime = backbone_runtime(backbone, key)

    def features(photos, view: str = "", make=None, desc: str = "Features") -> np.ndarray:
        return cached_features(runtime, FeatureStore(key, view), photos, cfg.image_size,
                               cfg.batch_size, desc, cfg.max_pixels, view=make)

    def classify(rows: np.ndarray) -> np.ndarray:
        return np.asarray(head.predict(rows, verbose=0, batch_size=256))

    return features, classify


def _scratch_parts(plan: Plan, model) -> tuple[Callable, Callable]:
    """(a function giving the features a from-scratch model classifies, of photos or of
    their views; its last layer on those features)."""
    import keras

    from pawnet.features import extract_features
    from pawnet.inference.runtimes import KerasRuntime
    from pawnet.models.ood import feature_model

    cfg = plan.cfg
    runtime = KerasRuntime(feature_model(model))
    last = model.get_layer("predictions")

    def features(photos, view: str = "", make=None, desc: str = "Features") -> np.ndarray:
        return extract_features(runtime, [make(p.path) if make else p.path for p in photos],
                                cfg.image_size, cfg.batch_size, desc=desc,
                                max_pixels=cfg.max_pixels)

    def classify(rows: np.ndarray) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(last(rows.astype(np.float32))))

    return features, classify


def fit_unknowns(plan: Plan, model, spec: ModelSpec, found: dict[str, np.ndarray] | None
                 ) -> tuple[object, OodScore | None, int]:
    """`model` with an OOD score column, the score, and the too-small cut (`min_side`).

    Args:
        found: the training and validation photos' features ("train", "val") when training
            computed them already (transfer learning), so they are not computed again.

    Returns:
        The model unchanged, None and 0 when there are no validation photos to fit on.
    """
    from pawnet.models.ood import with_ood

    if not plan.split("val"):
        log.info("No validation photos: the model cannot say 'neither' or 'too small'")
        return model, None, 0
    started = time.monotonic()
    train_photos, val_photos = plan.split("train"), plan.split("val")
    features, classify = (_transfer_parts(plan, model, spec) if spec.pretrained
                          else _scratch_parts(plan, model))
    found = found or {"train": features(train_photos, desc="Features (train)"),
                      "val": features(val_photos, desc="Features (val)")}
    frozen = spec.pretrained and not plan.cfg.fine_tune
    score = fit(found["train"], found["val"], plan.cfg.seed, frozen=frozen)
    log.info(f"OOD score fitted in {time.monotonic() - started:.1f}s on {len(score.bank)} "
             f"training photos: 'neither' above {score.threshold:.4f}")
    min_side = _min_side(plan, model, features, classify, found["val"])
    return with_ood(model, score), score, min_side


def _min_side(plan: Plan, model, features: Callable, classify: Callable,
              val_features: np.ndarray) -> int:
    """The too-small cut: the smallest size at which shrunk validation photos are judged
    about as well as at full size, at most the training photos' usual smallest size."""
    cfg = plan.cfg
    photos = plan.split("val")
    if len(photos) > SHRUNK_PHOTOS:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(photos), SHRUNK_PHOTOS,
                                                               replace=False))
        photos, val_features = [photos[i] for i in keep], val_features[keep]
    truth = np.array([plan.classes.index(p.label) for p in photos])
    output = output_kind(model)

    def accuracy(rows: np.ndarray) -> float:
        return float((class_probabilities(classify(rows), output).argmax(1) == truth).mean())

    def accuracy_at(side: int) -> float:
        return accuracy(features(photos, f"shorter-side-{side}",
                                 partial(small_view, side=side, max_pixels=cfg.max_pixels),
                                 f"Features (val shrunk to {side} px)"))

    sides, ceiling = sides_to_try(shorter_sides([p.path for p in plan.split("train")],
                                                cfg.seed), cfg.image_size)
    full = accuracy(val_features)
    chosen, measured = choose_min_side(sides, ceiling, full, accuracy_at)
    shown = ", ".join(f"{side} px {acc:.3f}" for side, acc in sorted(measured.items()))
    log.info(f"Too small to judge: photos under {chosen} px on their shorter side (validation "
             f"accuracy {full:.3f} at full size" + (f"; shrunk: {shown})" if shown else ")"))
    return chosen
