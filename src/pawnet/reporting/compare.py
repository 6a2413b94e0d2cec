"""`compare`: two models measured on the same photos, side by side, and the release gate.

`compare(new, old)` labels the same photos with both models: the photos given, or else the
held-out split that both runs share. For each model it measures accuracy and per-class
precision and recall with bootstrap 95% intervals, and counts the photos it called unsure
or neither. It then runs McNemar's exact test on the photos that only one of the two got
right. `release_gate` turns a comparison into a verdict: NEW may replace OLD unless it is
significantly worse overall, some class's recall drops by more than a tolerance, or it
leaves a larger share of the photos unanswered (unsure or neither). `pawnet compare` prints
both. Nothing is written.
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
from pawnet.inference.bundle import Bundle, resolve
from pawnet.inference.predictor import Prediction, Predictor, load
from pawnet.reporting.evaluate import compute_metrics, photos_to_measure
from pawnet.reporting.intervals import Intervals, McNemar, bootstrap, mcnemar
from pawnet.reporting.text import aligned
from pawnet.run_folder import RunFolder
from pawnet.trust.verdict import NEITHER, UNSURE

log = logging.getLogger(__name__)

TOLERANCE = 0.02  # the largest recall drop of any class that the gate lets through
MAX_UNANSWERED_RISE = 0.02  # the largest rise of the share of unsure or neither answers
ALPHA = 0.05  # McNemar p-values below this make a difference significant
ROUNDING = 1e-9  # a drop equal to the tolerance up to float error (1.0 - 0.98) still passes
SKIPPED_SHOWN = 5
WHO = {"new": "NEW", "old": "OLD", "both": "both"}  # which model could not read a photo


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

    @property
    def unanswered(self) -> int:
        """Photos labelled unsure or neither."""
        return self.unsure + self.neither


@dataclass(frozen=True)
class Comparison:
    """NEW and OLD on the same photos: `new` and `old` (`Side`), the `classes` (NEW's
    order; OLD's answers are aligned by name), the photos (`source`, `paths`, `truth`),
    the ones skipped as unreadable (`path`, `model`: "new", "old" or "both", `error`),
    and McNemar's test (`only_first` is the photos only NEW got right)."""

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


def _check_folder(photos: str | Path) -> None:
    """Raises DataError unless PHOTOS is a folder: before the models load, which can take
    minutes when they are converted for their runtime."""
    path = Path(photos)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise DataError(f"PHOTOS {one_line(path)} {what}. Try: a folder with a folder of "
                        "photos per class, or no PHOTOS for the split both runs held out")


def _bundles(new: str, old: str) -> tuple[Bundle, Bundle]:
    """Both bundles, once they say their classes match (their order may differ)."""
    bundles = resolve(new), resolve(old)
    classes = [list(bundle.spec.class_names) for bundle in bundles]
    if set(classes[0]) != set(classes[1]):
        raise DataError(
            f"{one_line(new)} and {one_line(old)} have different classes: "
            f"{', '.join(classes[0])} against {', '.join(classes[1])}. Try: compare "
            "models trained on the same class names")
    return bundles


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
    """(paths, labels, description) of the photos both runs put in `split`, matched by
    content (a split depends only on it and the seed, wherever the folder was), less any
    either run had in another split (by content or path) and any they label differently.
    A photo is read from NEW's path, or OLD's when NEW's is gone (gone from both: the models
    cannot read it, so it is skipped and counted)."""
    key = _split_key(split)
    for model, run in zip((new, old), runs, strict=True):
        if run is None:
            raise _no_manifest(model, new, old)
    manifests = [read_manifest(RunFolder(run).manifest) for run in runs]
    seen: list[Photo] = [p for m in manifests for p in m if p.split != key]
    seen_paths, seen_hashes = {p.path for p in seen}, {p.sha256 for p in seen}
    held = [{p.sha256: p for p in m if p.split == key} for m in manifests]
    common = [(p, held[1][p.sha256]) for p in held[0].values() if p.sha256 in held[1]]
    chosen = [p if Path(p.path).exists() or not Path(q.path).exists() else q
              for p, q in common if p.sha256 not in seen_hashes and p.label == q.label
              and p.path not in seen_paths and q.path not in seen_paths]
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


def _warn_if_trained_on(photos: list[Photo], models: tuple[str, str],
                        runs: tuple[Path | None, Path | None]) -> None:
    """A warning for each run that trained or validated on some of the given photos, by
    content (a copy of its folder) or by path: its figures on them are optimistic."""
    for model, run in dict.fromkeys(zip(models, runs, strict=True)):  # once for NEW == OLD
        if run is None:
            continue
        used = [p for p in read_manifest(RunFolder(run).manifest) if p.split in ("train", "val")]
        hashes, paths = {p.sha256 for p in used}, {str(Path(p.path).resolve()) for p in used}
        overlap = sum(p.sha256 in hashes or str(Path(p.path).resolve()) in paths for p in photos)
        if overlap:
            log.warning(f"{overlap} of the {len(photos)} photos were in {model}'s training or "
                        "validation split, so its figures on them are optimistic. Try: "
                        "photos neither model trained on, or no PHOTOS")


def _photos(new: str, old: str, runs: tuple[Path | None, Path | None],
            photos: str | Path | None, split: str) -> tuple[list[str], list[str], str]:
    """(paths, labels, description) of the photos to compare on."""
    if photos is None:
        return shared_split(new, old, runs, split)
    chosen, source = photos_to_measure(new, None, photos, split)
    _warn_if_trained_on(chosen, (new, old), runs)
    return [p.path for p in chosen], [p.label for p in chosen], source


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
        The `Comparison`; `release_gate` judges it, `format_comparison` prints it,
        `to_json()`.

    Raises:
        DataError: PHOTOS not a folder, no photos in common, classes that differ, or no
            readable photo.
        BundleError: a model cannot be loaded.

    >>> passed, reason = release_gate(compare("runs/candidate", "runs/current"))
    """
    new, old = str(new), str(old)
    _split_key(split)  # the photos are checked before the models load
    if photos is not None:
        _check_folder(photos)
    with logs.verbosity(verbose):
        bundles = _bundles(new, old)
        paths, labels, source = _photos(new, old, tuple(b.run_dir for b in bundles), photos,
                                        split)
        unknown = sorted(set(labels) - set(bundles[0].spec.class_names))
        if unknown:
            raise DataError(f"{source} has classes the models do not know: "
                            f"{', '.join(unknown)}; they know "
                            f"{', '.join(bundles[0].spec.class_names)}. Try: photos in "
                            "folders with those names")
        predictors = load(bundles[0], runtime=runtime), load(bundles[1], runtime=runtime)
        log.info(f"Comparing {new} with {old} on {len(paths)} photos: {source}")
        answers = [predictor.predict(paths) for predictor in predictors]
    return _measure((new, old), predictors, answers, (paths, labels), source)


def _skipped(path: str, new_error: str | None, old_error: str | None) -> dict[str, str]:
    """A photo that NEW, OLD or both could not read, and why."""
    if new_error and old_error:
        error = new_error if new_error == old_error else f"NEW: {new_error}; OLD: {old_error}"
        return {"path": path, "model": "both", "error": error}
    return {"path": path, "model": "new" if new_error else "old",
            "error": new_error or old_error or ""}


def _measure(models: tuple[str, str], predictors: tuple[Predictor, Predictor],
             answers: list[list[Prediction]], photos: tuple[list[str], list[str]],
             source: str) -> Comparison:
    """Both models' figures and McNemar's test on the photos both could read."""
    paths, labels = photos
    failed = [i for i, pair in enumerate(zip(*answers, strict=True))
              if any(p.error for p in pair)]
    kept = sorted(set(range(len(paths))) - set(failed))
    if not kept:
        raise DataError(f"none of the {len(paths)} photos of {source} could be read")
    classes = predictors[0].classes
    truth = np.array([classes.index(labels[i]) for i in kept])
    sides = [_side(model, predictor, [answer[i] for i in kept], classes, truth)
             for model, predictor, answer in zip(models, predictors, answers, strict=True)]
    return Comparison(new=sides[0], old=sides[1], classes=classes, source=source,
                      paths=[paths[i] for i in kept], truth=truth,
                      skipped=[_skipped(paths[i], answers[0][i].error, answers[1][i].error)
                               for i in failed],
                      mcnemar=mcnemar(sides[0].right, sides[1].right))


def check_gate(tolerance: float, alpha: float,
               max_unanswered_rise: float = MAX_UNANSWERED_RISE) -> None:
    """Raises ConfigError unless 0 <= `tolerance` <= 1, 0 < `alpha` <= 1 and
    0 <= `max_unanswered_rise` <= 1."""
    if not 0 <= tolerance <= 1 or not 0 < alpha <= 1 or not 0 <= max_unanswered_rise <= 1:
        raise ConfigError(f"the gate needs 0 <= tolerance <= 1, 0 < alpha <= 1 and 0 <= "
                          f"max_unanswered_rise <= 1; received tolerance={tolerance}, "
                          f"alpha={alpha}, max_unanswered_rise={max_unanswered_rise}. Try: "
                          "--tolerance 0.02 --alpha 0.05 --max-unanswered-rise 0.02")


def _unanswered(c: Comparison, max_rise: float) -> tuple[bool, str]:
    """Whether NEW's share of unsure or neither answers exceeds OLD's by <= `max_rise`; why."""
    new, old = c.new.unanswered, c.old.unanswered
    rise = (new - old) / c.n
    if rise > max_rise + ROUNDING:
        return False, (f"unsure or neither rises from {old} to {new} of {c.n} photos "
                       f"({rise:.3f} > max rise {max_rise:.3f})")
    return True, (f"unsure or neither {new} vs {old} of {c.n} photos"
                  + (f" (rise {rise:.3f} <= {max_rise:.3f})" if rise > 0 else ""))


def release_gate(comparison: Comparison, tolerance: float = TOLERANCE, alpha: float = ALPHA,
                 max_unanswered_rise: float = MAX_UNANSWERED_RISE) -> tuple[bool, str]:
    """Whether NEW may replace OLD, and why in one line: it may unless McNemar's test says
    it is right significantly less often (p < `alpha`), some class's recall drops by more
    than `tolerance` (a fraction; on the measured recalls, so a class of n photos moves in
    steps of 1/n), or the share of photos NEW calls unsure or neither exceeds OLD's by more
    than `max_unanswered_rise`. Classes absent from the photos are not judged.

    Raises:
        ConfigError: `tolerance` or `max_unanswered_rise` not in 0..1, `alpha` not in (0, 1].
    """
    check_gate(tolerance, alpha, max_unanswered_rise)
    c, test = comparison, comparison.mcnemar
    accuracies = f"{c.new.intervals.accuracy.value:.4f} vs {c.old.intervals.accuracy.value:.4f}"
    evidence = (f"McNemar p={test.p_value:.3g} on {test.only_first + test.only_second} "
                "photos they disagree on")
    reasons = []
    if test.p_value < alpha and test.only_first < test.only_second:
        reasons.append(f"NEW is significantly worse ({accuracies}, {evidence})")
    drops = {i: -d for i in range(len(c.classes)) if (d := c.difference("recall", i)) is not None}
    for i, drop in sorted(drops.items(), key=lambda item: -item[1]):
        if drop > tolerance + ROUNDING:
            reasons.append(f"recall of {one_line(c.classes[i])} drops {drop:.3f} on "
                           f"{c.support[i]} photos (> tolerance {tolerance:.3f})")
    answered, unanswered = _unanswered(c, max_unanswered_rise)
    if not answered:
        reasons.append(unanswered)
    if reasons:
        return False, "; ".join(reasons)
    worst = max(drops.items(), key=lambda item: item[1], default=None)
    recall = ("no class's recall drops" if worst is None or worst[1] <= 0 else
              f"largest recall drop {worst[1]:.3f} ({one_line(c.classes[worst[0]])}) <= "
              f"tolerance {tolerance:.3f}")
    return True, (f"NEW is not significantly worse ({accuracies}, {evidence}; alpha "
                  f"{alpha:g}); {recall}; {unanswered}")


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
    lines += [f"  skipped {one_line(s['path'])} (unreadable by {WHO[s['model']]}): "
              f"{one_line(s['error'])}" for s in c.skipped[:SKIPPED_SHOWN]]
    if len(c.skipped) > SKIPPED_SHOWN:
        lines.append(f"  ... and {len(c.skipped) - SKIPPED_SHOWN} more (--json lists them)")
    lines.append(aligned([("", "NEW (95% interval)", "OLD (95% interval)", "NEW-OLD"),
                          *_rows(c)]))
    test = c.mcnemar
    lines.append(f"McNemar: only NEW right on {test.only_first}, only OLD right on "
                 f"{test.only_second}; exact p={test.p_value:.3g} on the "
                 f"{test.only_first + test.only_second} photos they disagree on")
    return "\n".join(lines)
