"""`evaluate`: per-class metrics of a saved model on held-out photos, with plots.

Writes `report.json`, `report.md`, `confusion.png` and `misclassified.png` into
`RUN_DIR/eval` (then `eval2`, ...), and returns the report as a dict; `format_report` is
its text for terminals.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pawnet.data.scan import SPLIT_FOLDER_NAMES, scan
from pawnet.data.splits import read_manifest
from pawnet.errors import DataError, one_line
from pawnet.inference.bundle import resolve
from pawnet.inference.predictor import Predictor
from pawnet.reporting.plots import (
    plot_confusion,
    plot_grid,
    plot_reliability,
    plot_risk_coverage,
    plot_roc,
)
from pawnet.run_folder import RunFolder
from pawnet.storage import Output, atomic_path, atomic_write_text, check_output_folder, next_run_dir
from pawnet.trust.calibration import (
    calibrate,
    expected_calibration_error,
    reliability,
    risk_coverage,
)
from pawnet.trust.verdict import NEITHER, REASONS, UNSURE, reason_kind

log = logging.getLogger(__name__)

MAX_MISCLASSIFIED_SHOWN = 64
LEAST_CONFIDENT_SHOWN = 16
EVALUATION_OUTPUT = Output("evaluation", r"report\.(json|md|html)|[a-z_]+\.png",
                           r"report\.json")


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


def select_photos(model: str | Path, run_dir: Path | None, photos: str | Path | None, split: str):
    """(paths, labels, description) of the photos to evaluate on."""
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
        return [p.path for p in chosen], [p.label for p in chosen], f"{run_dir} {split_key} split"
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
    return [p.path for p in chosen], [p.label for p in chosen], description


def _check_classes(labels: list[str], predictor: Predictor, source: str) -> None:
    unknown = sorted(set(labels) - set(predictor.classes))
    if unknown:
        raise DataError(
            f"{source} has classes the model does not know: {', '.join(unknown)}; the model "
            f"knows {', '.join(predictor.classes)}. Try: evaluate on folders with those names"
        )


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation of {one_line(report['model'])}",
        "",
        f"Photos: {one_line(report['source'])} — {report['n']} evaluated"
        + (f", {len(report['failed'])} unreadable" if report["failed"] else ""),
        "",
        f"**Accuracy: {report['accuracy']:.4f}**"
        + (f" · ROC-AUC {report['roc_auc']:.4f}" if report.get("roc_auc") is not None else "")
        + (f" · log loss {report['log_loss']:.4f}" if "log_loss" in report else "")
        + f" · expected calibration error {report['expected_calibration_error']:.4f} "
        f"(uncalibrated {report['expected_calibration_error_uncalibrated']:.4f}, temperature "
        f"{report['temperature']:.3f})",
        "",
        _verdict_line(report),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, m in report["per_class"].items():
        lines.append(f"| {one_line(name)} | {m['precision']:.4f} | {m['recall']:.4f} | "
                     f"{m['f1']:.4f} | {m['support']} |")
    classes = [one_line(c) for c in report["classes"]]
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![confusion matrix](confusion.png)", "",
              "Answering only the most confident photos (risk-coverage):", "",
              "| coverage | accuracy | confidence at least |", "|---|---|---|"]
    lines += [f"| {r['coverage']:.0%} | {r['accuracy']:.4f} | {r['threshold']:.4f} |"
              for r in report["risk_coverage"]["at"]]
    lines += ["", "![risk-coverage](risk_coverage.png) ![reliability](reliability.png)", "",
              f"Misclassified photos: {len(report['misclassified'])} "
              "(most confident first, in misclassified.png)", ""]
    if report.get("heatmaps"):
        lines += [f"![where the model looked]({report['heatmaps']})", ""]
    lines += [f"- {one_line(m['path'])}: {one_line(m['true'])} predicted as "
              f"{one_line(m['predicted'])} ({m['confidence']:.3f})"
              for m in report["misclassified"][:20]]
    return "\n".join(lines) + "\n"


def confusion_text(report: dict[str, Any]) -> str:
    """The confusion matrix as aligned text, for terminals."""
    classes = [one_line(c) for c in report["classes"]]
    width = max(8, *(len(c) for c in classes)) + 2
    head = "true \\ pred".ljust(width) + "".join(c.rjust(width) for c in classes)
    rows = [c.ljust(width) + "".join(str(v).rjust(width) for v in row)
            for c, row in zip(classes, report["confusion_matrix"], strict=True)]
    return "\n".join([head, *rows])


def _report(predictor: Predictor, paths: list[str], labels: list[str], source: str
            ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
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
    return report, probs, truth


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


def _verdict_line(report: dict[str, Any]) -> str:
    v = report["verdicts"]
    accuracy = "-" if v["answered_accuracy"] is None else f"{v['answered_accuracy']:.4f}"
    reasons = v.get("reasons", {})
    why = "; ".join(f"{n} {kind}" for kind, n in reasons.items() if n)
    return (f"answered {v['answered']} of {report['n']} (accuracy {accuracy}); unsure "
            f"{v['unsure']}, neither {v['neither']}" + (f" ({why})" if why else ""))


def _heat_maps(predictor: Predictor, images: np.ndarray, shown: list[dict]) -> list | None:
    """The misclassified photos with their Grad-CAM for the class predicted over them; None
    for a model `pawnet explain` cannot reach."""
    from pawnet.errors import ConfigError
    from pawnet.reporting.gradcam import blend, grad_cam

    classes = predictor.classes
    try:
        maps = [grad_cam(predictor.model, images[i : i + 1], classes.index(m["predicted"]))[0][0]
                for i, m in enumerate(shown)]
    except ConfigError:
        return None
    return [blend(image, cam) for image, cam in zip(images, maps, strict=True)]


def _write(report: dict[str, Any], out_dir: Path, predictor: Predictor, probs: np.ndarray,
           truth: np.ndarray) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_roc(truth, probs, report["classes"], out_dir / "roc.png")
    plot_confusion(np.array(report["confusion_matrix"]), report["classes"],
                   out_dir / "confusion.png")
    plot_reliability(report["reliability"], out_dir / "reliability.png")
    plot_risk_coverage(report["risk_coverage"]["curve"], out_dir / "risk_coverage.png")
    shown = report["misclassified"][:MAX_MISCLASSIFIED_SHOWN]
    images, heat = [], None
    if shown:
        images = np.stack([predictor.decode(m["path"]) for m in shown])
        captions = [f"{m['true']}→{m['predicted']} {m['confidence']:.2f}" for m in shown]
        plot_grid(images, captions, out_dir / "misclassified.png",
                  title="misclassified (true→predicted, confidence)")
        heat = _heat_maps(predictor, images, shown)
        if heat is not None:
            plot_grid(np.stack(heat), captions, out_dir / "misclassified_heatmaps.png",
                      title="where the model looked for the class it predicted (Grad-CAM)")
            report["heatmaps"] = "misclassified_heatmaps.png"
    unsure = [predictor.decode(m["path"]) for m in report["least_confident_correct"]]
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", _markdown(report))
    from pawnet.reporting.html import write_html

    write_html(report, out_dir, predictor.bundle, list(zip(images, heat or [None] * len(images),
                                                           strict=True)), unsure)


def evaluate(
    model: str | Path,
    photos: str | Path | None = None,
    *,
    split: str = "test",
    out: str | Path | None = None,
    runtime: str = "auto",
    tta: bool = False,
    min_confidence: float | None = None,
) -> dict[str, Any]:
    """Evaluate a saved model on held-out photos.

    Args:
        model: a run folder, a bundle folder or a built-in name.
        photos: a folder of photos with the model's class names. Defaults to None: the
            run's own held-out split from its manifest.
        split: which split to use when the photos (or the run) have splits. Defaults to
            "test".
        out: folder for the report. Defaults to `RUN_DIR/eval` (then `eval2`, ...), or
            `runs/evaluate` for a bare bundle. An existing folder is replaced only when it
            is an earlier report (never a folder of the user's).
        runtime: where the model runs (see `pawnet.Predictor`). Defaults to "auto".
        tta: average each photo with its mirror image (see `pawnet.Predictor`).
            Defaults to False.
        min_confidence: below this top probability a photo counts as unsure. Defaults
            to None: the bundle's.

    Returns:
        The report: model, tta, source, n, accuracy, classes, per_class, confusion_matrix,
        roc_auc and log_loss (two classes), expected_calibration_error, reliability,
        risk_coverage, verdicts (answered, unsure, neither), failed, misclassified, out.

    Raises:
        DataError: no photos, or classes the model does not know.
        BundleError: the model cannot be loaded.
        ConfigError: `out` holds something that is not an earlier report.
    """
    if out is not None:
        check_output_folder(out, EVALUATION_OUTPUT)  # before minutes of work, not after
    predictor = Predictor(resolve(model), runtime=runtime, tta=tta,
                          min_confidence=min_confidence)
    run_dir = predictor.bundle.run_dir
    paths, labels, source = select_photos(model, run_dir, photos, split)
    _check_classes(labels, predictor, source)
    measured, probs, truth = _report(predictor, paths, labels, source)
    report = {"model": str(model), "tta": tta, **measured}
    out_dir = Path(out) if out else next_run_dir(
        RunFolder(run_dir).reports if run_dir else Path("runs") / "evaluate")
    report["out"] = str(out_dir)
    with atomic_path(out_dir, EVALUATION_OUTPUT) as tmp:
        _write(report, tmp, predictor, probs, truth)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal: accuracy, per-class table, confusion matrix."""
    lines = [
        f"Evaluated {report['n']} photos from {one_line(report['source'])}"
        + (" (with flip test-time augmentation)" if report.get("tta") else ""),
        f"accuracy {report['accuracy']:.4f}"
        + (f"  ROC-AUC {report['roc_auc']:.4f}" if report.get("roc_auc") else "")
        + (f"  log loss {report['log_loss']:.4f}" if "log_loss" in report else "")
        + f"  ECE {report['expected_calibration_error']:.4f} (uncalibrated "
        f"{report['expected_calibration_error_uncalibrated']:.4f})",
        _verdict_line(report),
        f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name, m in report["per_class"].items():
        lines.append(f"{one_line(name):<12}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}"
                     f"{m['support']:>10}")
    lines.append(confusion_text(report))
    if report["failed"]:
        lines.append(f"{len(report['failed'])} photos could not be read (listed in report.json)")
    return "\n".join(lines)
