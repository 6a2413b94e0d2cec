"""`evaluate`: per-class metrics of a saved model on held-out photos.

It computes a `Report` and writes nothing: `Report.write` writes the report folder
(`report.json`, `report.md`, `report.html`, plots, the model card) when asked, as `pawnet
evaluate` does.
"""

from __future__ import annotations

import logging
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pawnet import logs
from pawnet.data.scan import SPLIT_FOLDER_NAMES, Photo, scan
from pawnet.data.splits import read_manifest
from pawnet.errors import DataError
from pawnet.inference.predictor import Predictor, load
from pawnet.reporting.intervals import LEVEL, ROUNDS, bootstrap
from pawnet.reporting.report import Report
from pawnet.run_folder import RunFolder
from pawnet.trust.calibration import (
    calibrate,
    expected_calibration_error,
    reliability,
    risk_coverage,
)
from pawnet.trust.verdict import NEITHER, REASONS, UNSURE, reason_kind

log = logging.getLogger(__name__)

LEAST_CONFIDENT_SHOWN = 16


def compute_metrics(probs: np.ndarray, truth: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix, calibration;
    ROC-AUC and log loss too when there are two classes."""
    from sklearn.metrics import (
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = list(range(len(classes)))
    predicted = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    report: dict[str, Any] = {
        "n": len(truth),
        "accuracy": float((predicted == truth).mean()),
        "classes": classes,
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        "expected_calibration_error": expected_calibration_error(probs, truth),
    }
    if len(classes) == 2:
        both_present = len(set(truth.tolist())) == 2
        report["roc_auc"] = float(roc_auc_score(truth, probs[:, 1])) if both_present else None
        # float32 softmax rows sum to 1 only within ~1e-7, which sklearn warns about
        rows = probs / probs.sum(axis=1, keepdims=True)
        report["log_loss"] = float(log_loss(truth, rows, labels=labels))
    return report


def select_photos(model: str | Path, run_dir: Path | None, photos: str | Path | None, split: str
                  ) -> tuple[list[str], list[str], str]:
    """(paths, labels, description) of the photos to evaluate on."""
    chosen, description = photos_to_measure(model, run_dir, photos, split)
    return [p.path for p in chosen], [p.label for p in chosen], description


def photos_to_measure(model: str | Path, run_dir: Path | None, photos: str | Path | None,
                      split: str) -> tuple[list[Photo], str]:
    """The photos to evaluate on, with their content hashes, and where they come from: the
    `split` of `photos` (all of them when it has no split folders), or of the run's
    manifest when `photos` is None."""
    split_key = SPLIT_FOLDER_NAMES.get(split.lower())
    if split_key is None:
        raise DataError(f"unknown split '{split}'; allowed: train, val, test")
    if photos is None:
        if run_dir is None:
            raise DataError(f"{model} has no split manifest. Try: pawnet evaluate {model} PHOTOS")
        chosen = [p for p in read_manifest(RunFolder(run_dir).manifest) if p.split == split_key]
        if not chosen:
            raise DataError(f"the run {run_dir} has no photos in its {split_key} split. "
                            "Try: --split val, or give PHOTOS")
        return chosen, f"{run_dir} {split_key} split"
    photoset = scan(photos)
    log.info(photoset.summary())
    chosen = photoset.photos
    description = str(photos)
    if photoset.splits():
        chosen = [p for p in chosen if p.split == split_key]
        if not chosen:
            raise DataError(f"{photos} has no {split_key} folder; it has "
                            f"{', '.join(photoset.splits())}. Try: --split {photoset.splits()[-1]}")
        description += f" ({split_key})"
    return chosen, description


def _check_classes(labels: list[str], predictor: Predictor, source: str) -> None:
    unknown = sorted(set(labels) - set(predictor.classes))
    if unknown:
        raise DataError(
            f"{source} has classes the model does not know: {', '.join(unknown)}; the model "
            f"knows {', '.join(predictor.classes)}. Try: evaluate on folders with those names"
        )


def _report(predictor: Predictor, paths: list[str], labels: list[str], source: str, *,
            model: str, tta: bool) -> Report:
    """Predict every photo and measure: metrics, unreadable photos, misclassified ones
    (most confident first), the least confident right ones; with the probabilities and
    true classes they come from."""
    predictions = predictor.predict(paths)
    failed = [{"path": p.path, "error": p.error} for p in predictions if p.error]
    kept = [(p, label) for p, label in zip(predictions, labels, strict=True) if not p.error]
    if not kept:
        raise DataError(f"none of the {len(paths)} photos in {source} could be read")
    classes = predictor.classes
    probs = np.array([[p.probabilities[c] for c in classes] for p, _ in kept])
    truth = np.array([classes.index(label) for _, label in kept])
    report = {"source": source, **compute_metrics(probs, truth, classes), "failed": failed}
    report["intervals"] = interval_figures(truth, probs.argmax(axis=1), classes)
    temperature = predictor.spec.temperature  # the probabilities are calibrated; undo it
    report["temperature"] = temperature
    report["expected_calibration_error_uncalibrated"] = expected_calibration_error(
        calibrate(probs, 1.0 / temperature), truth)
    report["reliability"] = reliability(probs, truth)
    report["risk_coverage"] = risk_coverage(probs, truth)
    report["verdicts"] = _verdicts(predictor, [p for p, _ in kept], truth)
    wrong = [i for i in range(len(kept)) if probs[i].argmax() != truth[i]]
    wrong.sort(key=lambda i: -probs[i].max())
    def photo(i: int) -> dict[str, Any]:
        return {"path": kept[i][0].path, "true": classes[truth[i]],
                "predicted": classes[int(probs[i].argmax())], "confidence": float(probs[i].max()),
                "probabilities": kept[i][0].probabilities}

    report["misclassified"] = [photo(i) for i in wrong]
    right = sorted((i for i in range(len(kept)) if probs[i].argmax() == truth[i]),
                   key=lambda i: probs[i].max())
    report["least_confident_correct"] = [photo(i) for i in right[:LEAST_CONFIDENT_SHOWN]]
    return Report(model=model, tta=tta, **report, predictor=predictor,
                  paths=[p.path for p, _ in kept], probabilities=probs, truth=truth)


def interval_figures(truth: np.ndarray, predicted: np.ndarray, classes: list[str]
                     ) -> dict[str, Any]:
    """Bootstrap 95% intervals of accuracy and of each class's precision and recall, as
    `report.json` holds them."""
    found = bootstrap(truth, predicted, len(classes))
    return {"method": "percentile bootstrap", "rounds": ROUNDS, "level": LEVEL,
            "accuracy": found.accuracy.to_json(),
            "per_class": {c: {"precision": found.precision[i].to_json(),
                              "recall": found.recall[i].to_json()}
                          for i, c in enumerate(classes)}}


def _command(model: str | Path, photos: str | Path | None, split: str, runtime: str,
             tta: bool, min_confidence: float | None) -> str:
    """The `pawnet evaluate` command that measures what these arguments do."""
    words = ["pawnet", "evaluate", str(model), *([str(photos)] if photos is not None else [])]
    if split.lower() != "test":
        words += ["--split", split]
    if runtime != "auto":
        words += ["--runtime", runtime]
    if tta:
        words.append("--tta")
    if min_confidence is not None:
        words += ["--min-confidence", str(min_confidence)]
    return shlex.join(words)


def _verdicts(predictor: Predictor, predictions: list, truth: np.ndarray) -> dict[str, Any]:
    """How many photos the model answered, called unsure or neither, and its accuracy on
    the answered ones."""
    labels = [p.label for p in predictions]
    classes = predictor.classes
    answered = [i for i, label in enumerate(labels) if label not in (UNSURE, NEITHER)]
    right = sum(labels[i] == classes[truth[i]] for i in answered)
    kinds = Counter(reason_kind(p.reason) for p in predictions if p.reason)
    return {"min_confidence": predictor.min_confidence,
            "ood_threshold": predictor.spec.ood_threshold,
            "min_side": predictor.spec.min_side,
            "answered": len(answered), "unsure": labels.count(UNSURE),
            "neither": labels.count(NEITHER),
            "reasons": {kind: kinds[kind] for kind in REASONS},
            "answered_accuracy": right / len(answered) if answered else None}


def evaluate(
    model: str | Path,
    photos: str | Path | None = None,
    *,
    split: str = "test",
    runtime: str = "auto",
    tta: bool = False,
    min_confidence: float | None = None,
    verbose: bool = True,
) -> Report:
    """Evaluate a saved model on held-out photos. Nothing is written: `Report.write` writes
    the report folder (JSON, Markdown, HTML, plots, model card) when asked, and the model
    card into a run's bundle too when this is the run's own test split, as the bundle
    answers (no PHOTOS, no `tta`, no `min_confidence`).

    Args:
        model: a run folder, a bundle folder or a built-in name.
        photos: a folder of photos with the model's class names. Defaults to None: the
            run's own held-out split from its manifest.
        split: which split to use when the photos (or the run) have splits. Defaults to
            "test".
        runtime: where the model runs (see `pawnet.Predictor`). Defaults to "auto".
        tta: average each photo with its mirror image (see `pawnet.Predictor`).
            Defaults to False.
        min_confidence: below this top probability a photo counts as unsure. Defaults
            to None: the bundle's.
        verbose: show what is evaluated (pawnet's log lines); warnings always.

    Returns:
        The `Report`: model, tta, source, n, accuracy, classes, per_class, intervals
        (bootstrap 95% intervals of accuracy, precision and recall), confusion_matrix,
        roc_auc and log_loss (two classes), expected_calibration_error, reliability,
        risk_coverage, verdicts (answered, unsure, neither), failed, misclassified;
        `to_json()` for all of them as a dict, `write()` for the folder.

    Raises:
        DataError: no photos, or classes the model does not know.
        BundleError: the model cannot be loaded.

    >>> pawnet.evaluate(run).accuracy
    """
    with logs.verbosity(verbose):
        predictor = load(model, runtime=runtime, tta=tta, min_confidence=min_confidence)
        run_dir = predictor.bundle.run_dir
        paths, labels, source = select_photos(model, run_dir, photos, split)
        _check_classes(labels, predictor, source)
        report = _report(predictor, paths, labels, source, model=str(model), tta=tta)
    report.command = _command(model, photos, split, runtime, tta, min_confidence)
    # the bundle's card describes it as it answers by default, on photos it never saw; any
    # runtime will do, as each agrees with Keras (the command names one that is not auto)
    report.held_out = (photos is None and SPLIT_FOLDER_NAMES[split.lower()] == "test"
                       and not tta and min_confidence is None)
    return report
