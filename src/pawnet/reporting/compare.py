"""`compare`: two models measured on the same photos, side by side, and the release gate.

`compare(new, old)` labels the same photos with both models: the photos given, or else the
held-out split that both runs share. For each model it measures accuracy and per-class
precision and recall with bootstrap 95% intervals, and counts the photos it called unsure
or neither. It then runs McNemar's exact test on the photos that only one of the two got
right. `gate` turns a comparison into a verdict: NEW may replace OLD unless it is
significantly worse overall, or some class's recall drops by more than a tolerance.
`pawnet compare` prints both. Nothing is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pawnet import logs
from pawnet.data.scan import SPLIT_FOLDER_NAMES, Photo
from pawnet.data.splits import read_manifest
from pawnet.errors import ConfigError, DataError, one_line
from pawnet.inference.bundle import resolve
from pawnet.inference.predictor import Prediction, Predictor, load
from pawnet.reporting.evaluate import compute_metrics, select_photos
from pawnet.reporting.intervals import Intervals, McNemar, bootstrap, mcnemar
from pawnet.run_folder import RunFolder
from pawnet.trust.verdict import NEITHER, UNSURE

log = logging.getLogger(__name__)

TOLERANCE = 0.02  # the largest recall drop of any class that the gate lets through
ALPHA = 0.05  # McNemar p-values below this make a difference significant
ROUNDING = 1e-9  # a drop equal to the tolerance up to float error (1.0 - 0.98) still passes
SKIPPED_SHOWN = 5


@dataclass(frozen=True)
class Side:
    """One model's answers on the compared photos and what they measure.

    `predicted` is the most probable class per photo (an index into the comparison's
    `classes`), `right` whether it is the true class; `metrics` is `compute_metrics`'s
    dict (support, F1, confusion matrix, ...); `unsure` and `neither` count its labels.
    """

    model: str
    runtime: str
    predicted: np.ndarray
    right: np.ndarray
    intervals: Intervals
    metrics: dict[str, Any]
    unsure: int
    neither: int

    def to_json(self, classes: list[str]) -> dict[str, Any]:
        per_class = {c: {"precision": self.intervals.precision[i].to_json(),
                         "recall": self.intervals.recall[i].to_json(),
                         "f1": self.metrics["per_class"][c]["f1"]}
                     for i, c in enumerate(classes)}
        return {"model": self.model, "runtime": self.runtime,
                "accuracy": self.intervals.accuracy.to_json(), "per_class": per_class,
                "confusion_matrix": self.metrics["confusion_matrix"],
                "unsure": self.unsure, "neither": self.neither}


@dataclass(frozen=True)
class Comparison:
    """NEW and OLD on the same photos: `new` and `old` (`Side`), the `classes` (NEW's
    order; OLD's answers are aligned by name), the photos (`source`, `paths`, `truth`),
    the ones skipped as unreadable by either model, and McNemar's test (`only_first` is
    the photos only NEW got right)."""

    new: Side
    old: Side
    classes: list[str]
    source: str
    paths: list[str]
    truth: np.ndarray
    skipped: list[dict[str, str]]
    mcnemar: McNemar

    @property
    def n(self) -> int:
        return len(self.paths)

    @property
    def support(self) -> list[int]:
        return np.bincount(self.truth, minlength=len(self.classes)).tolist()

    def difference(self, figure: str, i: int | None = None) -> float | None:
        """NEW minus OLD of "accuracy", or of class `i`'s "recall" or "precision"."""
        new, old = (getattr(side.intervals, figure) for side in (self.new, self.old))
        if i is not None:
            new, old = new[i], old[i]
        return None if new.value is None or old.value is None else new.value - old.value

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "n": self.n, "classes": self.classes,
            "support": dict(zip(self.classes, self.support, strict=True)),
            "skipped": self.skipped,
            "new": self.new.to_json(self.classes), "old": self.old.to_json(self.classes),
            "difference": {"accuracy": self.difference("accuracy"), **{
                figure: {c: self.difference(figure, i) for i, c in enumerate(self.classes)}
                for figure in ("recall", "precision")}},
            "mcnemar": {"only_new": self.mcnemar.only_first, "only_old": self.mcnemar.only_second,
                        "disagree": self.mcnemar.only_first + self.mcnemar.only_second,
                        "p_value": self.mcnemar.p_value},
        }


def _predictors(new: str, old: str, runtime: str) -> tuple[Predictor, Predictor]:
    """Both models, loaded once their bundles say their classes match: before any model
    is converted for its runtime, which takes seconds."""
    classes = [list(resolve(model).spec.class_names) for model in (new, old)]
    if set(classes[0]) != set(classes[1]):
        raise DataError(
            f"{one_line(new)} and {one_line(old)} have different classes: "
            f"{', '.join(classes[0])} against {', '.join(classes[1])}. Try: compare "
            "models trained on the same class names")
    return load(new, runtime=runtime), load(old, runtime=runtime)


def _no_manifest(model: str, new: str, old: str) -> DataError:
    return DataError(f"{one_line(model)} is not a training run with a split manifest, so it "
                     f"has no held-out photos to share. Try: pawnet compare {one_line(new)} "
                     f"{one_line(old)} PHOTOS")


def _split_key(split: str) -> str:
    key = SPLIT_FOLDER_NAMES.get(split.lower())
    if key is None:
        raise DataError(f"unknown split '{split}'; allowed: train, val, test. Try: --split test")
    return key


def shared_split(new: str, old: str, runs: tuple[Path | None, Path | None], split: str
                 ) -> tuple[list[str], list[str], str]:
    """(paths, labels, description) of the photos both runs put in `split`, less any that
    either run had in another split (its training or validation photos), by path or by
    content, and any the two runs label differently."""
    key = _split_key(split)
    for model, run in zip((new, old), runs, strict=True):
        if run is None:
            raise _no_manifest(model, new, old)
    manifests = [read_manifest(RunFolder(run).manifest) for run in runs]
    seen: list[Photo] = [p for m in manifests for p in m if p.split != key]
    seen_paths, seen_hashes = {p.path for p in seen}, {p.sha256 for p in seen}
    old_labels = {p.path: p.label for p in manifests[1] if p.split == key}
    common = [p for p in manifests[0] if p.split == key and p.path in old_labels]
    chosen = [p for p in common if p.path not in seen_paths and p.sha256 not in seen_hashes
              and p.label == old_labels[p.path]]
    if not chosen:
        raise DataError(
            f"{one_line(new)} and {one_line(old)} share no {key} photos (trained on different "
            f"photos?), so there is no held-out split to compare them on. Try: pawnet compare "
            f"{one_line(new)} {one_line(old)} PHOTOS")
    description = f"the {key} split both runs held out"
    if len(chosen) < len(common):
        description += (f" ({len(common) - len(chosen)} left out: trained or validated on "
                        "by one run, or labelled differently)")
    return [p.path for p in chosen], [p.label for p in chosen], description


def _warn_if_trained_on(paths: list[str], models: tuple[str, str],
                        runs: tuple[Path | None, Path | None]) -> None:
    """A warning for each run that trained or validated on some of the given photos: its
    figures on them are optimistic."""
    given = {str(Path(p).resolve()) for p in paths}
    for model, run in dict.fromkeys(zip(models, runs, strict=True)):  # once for NEW == OLD
        if run is None:
            continue
        used = {str(Path(p.path).resolve()) for p in read_manifest(RunFolder(run).manifest)
                if p.split in ("train", "val")}
        overlap = len(given & used)
        if overlap:
            log.warning(f"{overlap} of the {len(given)} photos were in {model}'s training or "
                        "validation split, so its figures on them are optimistic. Try: "
                        "photos neither model trained on, or no PHOTOS")


def _side(model: str, predictor: Predictor, predictions: list[Prediction], classes: list[str],
          truth: np.ndarray) -> Side:
    probs = np.array([[p.probabilities[c] for c in classes] for p in predictions])
    predicted = probs.argmax(axis=1)
    labels = [p.label for p in predictions]
    return Side(model=model, runtime=predictor.runtime.name, predicted=predicted,
                right=predicted == truth, intervals=bootstrap(truth, predicted, len(classes)),
                metrics=compute_metrics(probs, truth, classes),
                unsure=labels.count(UNSURE), neither=labels.count(NEITHER))


def compare(new: str | Path, old: str | Path, photos: str | Path | None = None, *,
            split: str = "test", runtime: str = "auto", verbose: bool = True) -> Comparison:
    """Measure two models on the same photos, for deciding whether NEW may replace OLD.

    Args:
        new: the candidate: a run folder, a bundle folder or a built-in name.
        old: the model it would replace, the same way.
        photos: a folder of photos with the models' class names. Defaults to None: the
            `split` photos that both runs held out (both must be runs on the same photos).
        split: which split to use, of the runs or of `photos` when it has split folders.
            Defaults to "test".
        runtime: where the models run (see `pawnet.Predictor`). Defaults to "auto".
        verbose: show what is compared (pawnet's log lines); warnings always.

    Returns:
        The `Comparison`; `gate` judges it, `format_comparison` prints it, `to_json()`.

    Raises:
        DataError: no photos in common, classes that differ, or no readable photo.
        BundleError: a model cannot be loaded.

    >>> passed, reason = gate(compare("runs/candidate", "runs/current"))
    """
    new, old = str(new), str(old)
    _split_key(split)  # before the models load
    with logs.verbosity(verbose):
        first, second = _predictors(new, old, runtime)
        runs = (first.bundle.run_dir, second.bundle.run_dir)
        if photos is None:
            paths, labels, source = shared_split(new, old, runs, split)
        else:
            paths, labels, source = select_photos(new, None, photos, split)
            _warn_if_trained_on(paths, (new, old), runs)
        classes = first.classes
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise DataError(f"{source} has classes the models do not know: "
                            f"{', '.join(unknown)}; they know {', '.join(classes)}. Try: "
                            "photos in folders with those names")
        log.info(f"Comparing {new} with {old} on {len(paths)} photos: {source}")
        answers = [first.predict(paths), second.predict(paths)]
    failed = {i: p.error for answer in answers for i, p in enumerate(answer) if p.error}
    kept = [i for i in range(len(paths)) if i not in failed]
    if not kept:
        raise DataError(f"none of the {len(paths)} photos of {source} could be read")
    truth = np.array([classes.index(labels[i]) for i in kept])
    sides = [_side(model, predictor, [answer[i] for i in kept], classes, truth)
             for model, predictor, answer in zip((new, old), (first, second), answers,
                                                 strict=True)]
    return Comparison(new=sides[0], old=sides[1], classes=classes, source=source,
                      paths=[paths[i] for i in kept], truth=truth,
                      skipped=[{"path": paths[i], "error": e} for i, e in sorted(failed.items())],
                      mcnemar=mcnemar(sides[0].right, sides[1].right))


def check_gate(tolerance: float, alpha: float) -> None:
    """Raises ConfigError unless 0 <= `tolerance` <= 1 and 0 < `alpha` <= 1."""
    if not 0 <= tolerance <= 1 or not 0 < alpha <= 1:
        raise ConfigError(f"the gate needs 0 <= tolerance <= 1 and 0 < alpha <= 1; received "
                          f"tolerance={tolerance}, alpha={alpha}. Try: --tolerance 0.02 "
                          "--alpha 0.05")


def gate(comparison: Comparison, tolerance: float = TOLERANCE, alpha: float = ALPHA
         ) -> tuple[bool, str]:
    """Whether NEW may replace OLD, and why in one line: it may unless McNemar's test says
    it is right significantly less often (p < `alpha`), or some class's recall drops by
    more than `tolerance` (a fraction). Classes absent from the photos are not judged.

    Raises:
        ConfigError: `tolerance` not in 0..1, or `alpha` not in (0, 1].
    """
    check_gate(tolerance, alpha)
    c, test = comparison, comparison.mcnemar
    accuracies = f"{c.new.intervals.accuracy.value:.4f} vs {c.old.intervals.accuracy.value:.4f}"
    evidence = (f"McNemar p={test.p_value:.3g} on {test.only_first + test.only_second} "
                "photos they disagree on")
    reasons = []
    if test.p_value < alpha and test.only_first < test.only_second:
        reasons.append(f"NEW is significantly worse ({accuracies}, {evidence})")
    drops = {name: -d for i, name in enumerate(c.classes)
             if (d := c.difference("recall", i)) is not None}
    for name, drop in sorted(drops.items(), key=lambda item: -item[1]):
        if drop > tolerance + ROUNDING:
            reasons.append(f"recall of {one_line(name)} drops {drop:.3f} "
                           f"(> tolerance {tolerance:.3f})")
    if reasons:
        return False, "; ".join(reasons)
    worst = max(drops.items(), key=lambda item: item[1], default=None)
    recall = ("no class's recall drops" if worst is None or worst[1] <= 0 else
              f"largest recall drop {worst[1]:.3f} ({one_line(worst[0])}) <= tolerance "
              f"{tolerance:.3f}")
    return True, (f"NEW is not significantly worse ({accuracies}, {evidence}; alpha "
                  f"{alpha:g}); {recall}")


def _signed(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _rows(c: Comparison) -> list[tuple[str, str, str, str]]:
    """(figure, NEW, OLD, NEW-OLD) per line of the side-by-side table."""
    rows = [("accuracy", c.new.intervals.accuracy.format(4), c.old.intervals.accuracy.format(4),
             _signed(c.difference("accuracy")))]
    for i, name in enumerate(c.classes):
        for figure in ("recall", "precision"):
            label = f"{figure} {one_line(name)}"
            if figure == "recall":
                label += f" ({c.support[i]})"
            rows.append((label, getattr(c.new.intervals, figure)[i].format(4),
                         getattr(c.old.intervals, figure)[i].format(4),
                         _signed(c.difference(figure, i))))
    for kind in (UNSURE, NEITHER):
        new, old = getattr(c.new, kind), getattr(c.old, kind)
        rows.append((kind, str(new), str(old), f"{new - old:+d}"))
    return rows


def format_comparison(c: Comparison) -> str:
    """The comparison as text for a terminal: the photos, the two models' figures side by
    side with their 95% intervals and the differences, then McNemar's test."""
    lines = [f"NEW: {one_line(c.new.model)} ({c.new.runtime})",
             f"OLD: {one_line(c.old.model)} ({c.old.runtime})",
             f"Photos: {c.n} from {one_line(c.source)}; {len(c.skipped)} unreadable, skipped"]
    lines += [f"  skipped {one_line(s['path'])}: {one_line(s['error'])}"
              for s in c.skipped[:SKIPPED_SHOWN]]
    if len(c.skipped) > SKIPPED_SHOWN:
        lines.append(f"  ... and {len(c.skipped) - SKIPPED_SHOWN} more (--json lists them)")
    rows = [("", "NEW (95% interval)", "OLD (95% interval)", "NEW-OLD"), *_rows(c)]
    widths = [max(len(row[k]) for row in rows) + 2 for k in range(3)]
    lines += ["".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + row[3]
              for row in rows]
    test = c.mcnemar
    lines.append(f"McNemar: only NEW right on {test.only_first}, only OLD right on "
                 f"{test.only_second}; exact p={test.p_value:.3g} on the "
                 f"{test.only_first + test.only_second} photos they disagree on")
    return "\n".join(lines)
