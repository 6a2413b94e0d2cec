"""What makes a trained model trustworthy, fitted on the validation photos at the end of
training: calibrated probabilities and the confidence to answer at (`pawnet.trust.
calibration`), the OOD score (`pawnet.trust.ood`) and the size below which photos are too
small to judge (`pawnet.trust.verdict`); then what the validation photos showed with all of
them, the reference `pawnet serve` watches for drift (`validation_reference`)."""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from pawnet.inference.bundle import class_probabilities
from pawnet.models.spec import ModelSpec, output_kind
from pawnet.training.plan import Plan
from pawnet.training.recipe import Fitted
from pawnet.trust.ood import OodScore, fit
from pawnet.trust.verdict import NEITHER, UNSURE, choose_min_side, sides_to_try, verdict

log = logging.getLogger(__name__)

SIZE_PHOTOS = 1000  # training photos whose sizes are read (headers only)
SHRUNK_PHOTOS = 128  # validation photos shrunk to measure accuracy by size
REFERENCE_SCORES = 500  # validation OOD scores kept for the drift test (pawnet serve)


@dataclass(frozen=True)
class Calibration:
    """The temperature, the validation photos' calibration error (ECE) before and after it,
    the minimum confidence to answer at, and the share of them it leaves unanswered."""

    temperature: float
    val_ece_uncalibrated: float
    val_ece: float
    min_confidence: float
    val_unanswered: float

    def metrics(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Unknowns:
    """The model with its OOD score column, the score's threshold, and the too-small cut
    (no threshold and 0 when there were no validation photos to fit them on)."""

    model: object  # keras.Model
    ood_threshold: float | None
    min_side: int


def fit_calibration(plan: Plan, fitted: Fitted) -> Calibration:
    """Fitted on the validation photos: the temperature, and the minimum confidence (the
    run's `max_error` or `answer_share`, or the default policy)."""
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
    probabilities = class_probabilities(fitted.val_outputs, output_kind(fitted.model))
    truth = np.array([plan.classes.index(p.label) for p in plan.split("val")])
    temperature = round(fit_temperature(probabilities, truth), 4)
    calibrated = calibrate(probabilities, temperature)
    chosen = choose_min_confidence(calibrated, truth, max_error=cfg.max_error,
                                   answer_share=cfg.answer_share)
    min_confidence = math.floor(chosen * 1e6) / 1e6  # rounded down: the photo at it answers
    left = unanswered(calibrated, min_confidence)
    plan.validation.update(probabilities=calibrated, min_confidence=min_confidence)
    found = Calibration(temperature, expected_calibration_error(probabilities, truth),
                        expected_calibration_error(calibrated, truth), min_confidence,
                        round(left, 6))
    policy = (f"at most {cfg.max_error:.1%} of the answers wrong" if cfg.max_error is not None
              else f"{cfg.answer_share:.1%} answered" if cfg.answer_share is not None
              else f"half as many unanswered as wrong, at least {MIN_ANSWERED:.0%} answered")
    log.info(f"Calibrated on validation photos: temperature {temperature:.3f}, expected "
             f"calibration error {found.val_ece_uncalibrated:.4f} -> {found.val_ece:.4f}; "
             f"'unsure' below {min_confidence:.4f} ({policy}): {left:.1%} of the validation "
             "photos unanswered")
    if left > UNANSWERED_WARNING:
        log.warning(f"'unsure' would leave {left:.0%} of the validation photos unanswered. "
                    "Try: --answer-share 0.9 (answer 90%), a larger --max-error, or more "
                    "epochs or photos")
    return found


def shorter_sides(paths: list[str], seed: int) -> list[int]:
    """The shorter side of up to `SIZE_PHOTOS` of the photos (drawn with `seed`), from their
    headers (those that cannot be read now are left out)."""
    if len(paths) > SIZE_PHOTOS:
        paths = [paths[i] for i in np.random.default_rng(seed).choice(len(paths), SIZE_PHOTOS,
                                                                     replace=False)]
    return [min(size) for size in _sizes(paths) if size is not None]


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
    from pawnet.features import (
        FeatureStore,
        backbone_id,
        backbone_runtime,
        cached_features,
        frozen_backbone,
    )
    from pawnet.models.keras_file import FrozenTransfer
    from pawnet.training.head import LinearHead

    cfg = plan.cfg
    if cfg.fine_tune:  # the backbone changed: its own features
        backbone = model.layers[-2]
        key = backbone_id(backbone, "+".join(spec.backbones), cfg.image_size)
        runtime = backbone_runtime(backbone, key)
    else:
        frozen = frozen_backbone(spec, cfg.image_size, cfg.weights)
        key, runtime = frozen.key, frozen.runtime
    linear = (LinearHead(model.kernel, model.bias, rows=[]) if isinstance(model, FrozenTransfer)
              else LinearHead(*model.layers[-1].get_layer("predictions").get_weights(),
                              rows=[]))

    def features(photos, view: str = "", make=None, desc: str = "Features") -> np.ndarray:
        return cached_features(runtime, FeatureStore(key, view), photos, cfg.image_size,
                               cfg.batch_size, desc, cfg.max_pixels, view=make)

    return features, linear.outputs


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


def fit_unknowns(plan: Plan, spec: ModelSpec, fitted: Fitted) -> Unknowns:
    """The OOD score, fitted on the training photos' features (those the head was trained
    on when there are some, else computed from the trained model), and the too-small cut."""
    if not plan.split("val"):
        log.info("No validation photos: the model cannot say 'neither' or 'too small'")
        return Unknowns(fitted.model, None, 0)
    started = time.monotonic()
    train_photos, val_photos = plan.split("train"), plan.split("val")
    features, classify = (_transfer_parts(plan, fitted.model, spec) if spec.pretrained
                          else _scratch_parts(plan, fitted.model))
    found = fitted.features or {"train": features(train_photos, desc="Features (train)"),
                                "val": features(val_photos, desc="Features (val)")}
    frozen = spec.pretrained and not plan.cfg.fine_tune
    score = fit(found["train"], found["val"], plan.cfg.seed, frozen=frozen)
    log.info(f"OOD score fitted in {time.monotonic() - started:.1f}s on {len(score.bank)} "
             f"training photos: 'neither' above {score.threshold:.4f}")
    min_side = _min_side(plan, fitted.model, features, classify, found["val"])
    plan.validation["reference"] = validation_reference(plan, score(found["val"]),
                                                        score.threshold, min_side)
    return Unknowns(_with_ood(fitted.model, score), score.threshold, min_side)


def validation_reference(plan: Plan, scores: np.ndarray, ood_threshold: float,
                         min_side: int) -> dict | None:
    """What the validation photos showed, as the served model answers: each label's count
    (a class, `unsure`, `neither`) of `n` photos, and a sample of at most
    `REFERENCE_SCORES` of their OOD scores (drawn with the run's seed). From the calibrated
    probabilities `fit_calibration` kept and the photos' `scores`, with no other pass over
    the photos than reading their sizes from the headers (a photo whose header cannot be
    read now is judged as if its size were fine). None without calibration."""
    probabilities = plan.validation.get("probabilities")
    if probabilities is None:
        return None
    min_confidence = plan.validation["min_confidence"]
    photos = plan.split("val")
    labels = [verdict(plan.classes, row, size=size, min_side=min_side, ood_score=float(s),
                      ood_threshold=ood_threshold, min_confidence=min_confidence)[0]
              for row, size, s in zip(probabilities, _sizes([p.path for p in photos]), scores,
                                      strict=True)]
    n = len(labels)
    keep = (np.arange(n) if n <= REFERENCE_SCORES else
            np.random.default_rng(plan.cfg.seed).choice(n, REFERENCE_SCORES, replace=False))
    counts = {label: labels.count(label) for label in [*plan.classes, UNSURE, NEITHER]}
    return {"what": "the validation photos' labels and OOD scores, for pawnet serve's "
                    "drift monitoring (/v1/drift)",
            "n": n, "counts": counts,
            "shares": {label: round(count / n, 6) for label, count in counts.items()},
            "min_confidence": min_confidence, "ood_threshold": ood_threshold,
            "min_side": min_side,
            "ood_scores": [round(float(s), 6) for s in np.sort(np.asarray(scores)[keep])]}


def _sizes(paths: list[str]) -> list[tuple[int, int] | None]:
    """Each photo's (width, height) from its header; None when it cannot be read now."""
    from PIL import Image

    sizes: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except OSError:
            sizes.append(None)  # changed since the scan
    return sizes


def _with_ood(model, score: OodScore):
    """The model with the OOD score as one more output column."""
    if hasattr(model, "with_ood"):  # a `keras_file.FrozenTransfer`: no Keras needed
        return model.with_ood(score)
    from pawnet.models.ood import with_ood

    return with_ood(model, score)


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
