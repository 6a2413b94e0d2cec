"""The model card: what pawnet knows about a model and measured of it, for a person to read.

`build_card` makes it as data, from an evaluation's `Figures`, the model's bundle
(`bundle.json`, `provenance.json`) and, for a training run, its `data.json` and manifest;
no sentence in it is written by hand for one model. `confusion_sheet` gets the photos of
the largest confusions drawn into one small JPEG (reporting/plots.py) before the card is
built, which shows it only when there is one. `card_markdown` (reporting/text.py) renders
the card as `MODEL_CARD.md`, and `report.html` the same `Card` as its "Model card" section.
The same evaluation gives the same card, but for its date (and the stamp that checks it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from pawnet.data.splits import read_manifest
from pawnet.errors import PawnetError, one_line
from pawnet.inference.bundle import CARD_SHEET, Bundle, read_json
from pawnet.reporting.figures import Figures
from pawnet.reporting.intervals import Interval
from pawnet.run_folder import RunFolder

MAX_PAIRS = 4  # confused pairs (true -> predicted) shown
PER_PAIR = 4  # example photos per pair, most confident first
FEW_PHOTOS = 30  # a class measured on fewer photos is named under Limits
WIDE = 0.10  # ... and so is one whose recall interval is wider than this
ASPECT_WORDS = {"stretch": "stretched to a square, its aspect ratio not kept"}


@dataclass(frozen=True)
class Table:
    head: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Picture:
    file: str  # beside the card
    alt: str


Block = str | Table | Bullets | Picture  # a str is a paragraph; `code` in backticks


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    blocks: list[Block]


@dataclass(frozen=True)
class Card:
    """A model card: its sections, and `made`, the one line that changes between writings."""

    title: str
    sections: list[Section]
    made: str


def build_card(figures: Figures, bundle: Bundle, *, command: str, today: str,
               held_out: bool = False, sheet: bool = False) -> Card:
    """The model card of `bundle`, from the evaluation `figures` that `command` made on
    `today` (an ISO date); `held_out`: measured on the run's own held-out test split, as
    the bundle answers by default; `sheet`: `confusion_sheet` drew the confusions' photos
    (`CARD_SHEET`, beside the card), which the card then shows."""
    spec = bundle.spec
    sections = [_intended_use(figures, bundle), _training_data(bundle),
                _performance(figures, held_out), _calibration(figures, bundle),
                _answers(figures), _confusions(_confused_pairs(figures), sheet),
                Section("limits", "Limits", [Bullets(_limits(figures, bundle, held_out))])]
    return Card(f"Model card: {spec.model_name} ({', '.join(spec.class_names)})", sections,
                f"Made on {today} by `{one_line(command)}`.")


def _photos(n: int) -> str:
    return f"{n} photo" if n == 1 else f"{n} photos"


def _code(names: list[str]) -> str:
    return ", ".join(f"`{one_line(n)}`" for n in names)


def _intended_use(figures: Figures, bundle: Bundle) -> Section:
    from pawnet import __version__

    spec, size = bundle.spec, bundle.spec.image_size
    rows = [
        ["model", (f"`{one_line(figures.model)}`: " if figures.model != spec.model_name
                   else "") + f"{spec.model_name}, {spec.output} output"],
        ["input", f"a photo decoded to 8-bit RGB (EXIF rotation applied), resized to "
                  f"{size}x{size} px ({spec.resize_method}, "
                  f"{ASPECT_WORDS.get(spec.aspect, spec.aspect)})"],
        ["answer", "its most probable class" + (
            f", when the calibrated probability is at least {spec.min_confidence:.3f}"
            if spec.min_confidence > 0 else "")],
        ["`unsure`", f"no class likely enough: the top probability is below "
                     f"{spec.min_confidence:.3f}" if spec.min_confidence > 0 else "never "
                     "for lack of confidence (minimum confidence 0)"],
        ["`neither`", f"unlike the training photos: OOD score above {spec.ood_threshold:.4f}"
         if spec.ood_threshold is not None else "never: this model has no OOD score"],
        ["too small", f"`unsure` when the shorter side is below {spec.min_side} px"
         if spec.min_side else "never: no size limit"],
        ["trained with", _trained_with(bundle.provenance)],
        ["card by", f"pawnet {__version__}"],
        ["bundle fingerprint", f"`{bundle.fingerprint}`"],
    ]
    classes = _code(spec.class_names)
    scope = (f"It is for photos of {classes} only. A photo of anything else should come "
             "back `neither`; how often it does was not measured here (see Limits)."
             if spec.ood_threshold is not None else
             f"It is for photos of {classes} only. It has no OOD score: a photo of anything "
             "else still gets one of these classes.")
    return Section("intended-use", "Intended use", [
        f"Sorts a photo into one of {len(spec.class_names)} classes, in this order: "
        f"{classes}.", Table(["", ""], rows), scope])


def _trained_with(record: dict[str, Any]) -> str:
    versions = _part(record, "versions")
    text = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "python")
    if record.get("created"):
        text += f" on {record['created']}"
    return text or "not recorded"


def _part(record: dict[str, Any], key: str) -> dict[str, Any]:
    """`record[key]` when it is a dict (a JSON object), else an empty one."""
    found = record.get(key)
    return found if isinstance(found, dict) else {}


def _scan(run: RunFolder | None) -> dict[str, Any]:
    """The run's `data.json` (what the scan of its photos found); empty when unreadable."""
    try:
        found = read_json(run.data) if run else {}
    except PawnetError:
        return {}
    return found if isinstance(found, dict) else {}


def _training_data(bundle: Bundle) -> Section:
    record = bundle.provenance
    data = _part(record, "data")
    if not data:
        why = (f"`{one_line(record['builtin'])}` is built into pawnet; its training data is "
               "not recorded" if record.get("builtin") else "not recorded in the bundle")
        return Section("training-data", "Training data", [f"Not known: {why}."])
    run = RunFolder(bundle.run_dir) if bundle.run_dir else None
    scan = _scan(run)
    layout = f" ({scan['layout']})" if scan.get("layout") else ""
    given = ", ".join(map(one_line, _part(scan, "splits")))
    rows = [["source folder", f"`{one_line(data.get('root', '?'))}`{layout}"],
            ["data fingerprint", f"`{data.get('fingerprint', '?')}`"],
            ["split seed", f"{data.get('split_seed', '?')} (validation fraction "
                           f"{data.get('val_fraction', '?')}, test fraction "
                           f"{data.get('test_fraction', '?')}"
                           + (f"; the folder's own {given} splits kept)" if given else ")")],
            ["labels", _label_decisions(scan, run)]]
    if scan:
        rows.append(["left out", f"{len(scan.get('skipped', []))} unreadable or non-photo "
                                 f"files, {len(scan.get('duplicates', []))} groups of "
                                 "duplicates (listed in the run's `data.json`)"])
    counts = _part(data, "counts")
    splits = [s for s in ("train", "val", "test") if _part(counts, s)]
    table = Table(["class", *splits, "total"], [
        [f"`{one_line(c)}`", *(str(counts[s].get(c, 0)) for s in splits),
         str(sum(counts[s].get(c, 0) for s in splits))] for c in bundle.spec.class_names])
    return Section("training-data", "Training data", [Table(["", ""], rows),
                                                      "Photos per class and split:", table])


def _label_decisions(scan: dict[str, Any], run: RunFolder | None) -> str:
    """What decided the labels: the folders, and a labels file's corrections, as the run's
    `data.json` and its manifest's `label_source` column record them."""
    labels = scan.get("labels") if isinstance(scan.get("labels"), dict) else None
    try:
        sources = Counter(p.label_source for p in read_manifest(run.manifest)) if run else {}
    except PawnetError:
        sources = {}
    others = {s: n for s, n in sorted(sources.items()) if s != "folder"}
    if not labels and not others:
        return "every photo labelled by its folder (no labels file)"
    text = f"{sources.get('folder', 0)} photos labelled by their folder"
    text += "".join(f", {n} by `{one_line(s)}`" for s, n in others.items())
    if labels:
        text += (f"; {labels.get('relabelled', 0)} relabelled and "
                 f"{len(labels.get('excluded', []))} excluded by "
                 f"`{one_line(labels.get('file', '?'))}`")
    return text


def _with_interval(intervals: dict | None, *keys: str, value: float) -> str:
    """A figure with its bootstrap interval from `report.json`'s intervals, or alone."""
    found = intervals
    for key in keys:
        found = found.get(key) if isinstance(found, dict) else None
    return str(Interval(**found)) if isinstance(found, dict) else f"{value:.3f}"


def _performance(figures: Figures, held_out: bool) -> Section:
    unread = f" ({len(figures.failed)} unreadable left out)" if figures.failed else ""
    where = (f"Measured on {_photos(figures.n)}{unread}: the run's own held-out test split "
             f"(`{one_line(figures.source)}`), used neither for training nor for fitting "
             "calibration and thresholds." if held_out else
             f"Measured on {_photos(figures.n)}{unread} of `{one_line(figures.source)}`. This "
             "card describes that evaluation only: the bundle's own card comes from `pawnet "
             "evaluate RUN`, on the run's held-out test split.")
    iv = figures.intervals
    rows = [[f"`{one_line(c)}`",
             _with_interval(iv, "per_class", c, "precision", value=m["precision"]),
             _with_interval(iv, "per_class", c, "recall", value=m["recall"]),
             f"{m['f1']:.3f}", str(m["support"])] for c, m in figures.per_class.items()]
    how = (f" In brackets: 95% bootstrap intervals ({iv['rounds']} resamples of the photos)."
           if iv else "")
    return Section("performance", "Performance", [
        where,
        f"Accuracy {_with_interval(iv, 'accuracy', value=figures.accuracy)}.{how}",
        Table(["class", "precision", "recall", "F1", "photos"], rows)])


def _calibration(figures: Figures, bundle: Bundle) -> Section:
    metrics = _part(bundle.provenance, "metrics")
    n_val = sum(_part(_part(_part(bundle.provenance, "data"), "counts"), "val").values())
    # an older bundle records no metrics: its temperature alone says whether it was fitted
    scaled = "temperature" in metrics or figures.temperature != 1.0
    where = ("none fitted: the probabilities are the model's own" if not scaled else
             "where it was fitted is not recorded" if "temperature" not in metrics else
             f"fitted on the {n_val} validation photos" if n_val else "fitted at training")
    rows = [["temperature", f"{figures.temperature:.3f} ({where})"]]
    if "val_ece" in metrics and "val_ece_uncalibrated" in metrics:
        rows.append(["error, validation photos", f"{metrics['val_ece_uncalibrated']:.4f} "
                                                 f"before, {metrics['val_ece']:.4f} after"])
    rows.append(["error, photos measured", (f"{figures.expected_calibration_error_uncalibrated:.4f}"
                 " before, " if scaled else "") + f"{figures.expected_calibration_error:.4f}"
                 + (" after" if scaled else "")])
    return Section("calibration", "Calibration", [
        ("The probabilities are temperature-scaled (`softmax(log(p) / T)`). " if scaled
         else "") + "The expected calibration error is the gap between how sure the model is "
        "and how often it is right, averaged over confidence bins"
        + ("; before and after scaling:" if scaled else ":"),
        Table(["", ""], rows)])


def _answers(figures: Figures) -> Section:
    v, n = figures.verdicts, figures.n
    accuracy = v.get("answered_accuracy")
    rows = [["answered", str(v["answered"]), f"{v['answered'] / n:.1%}"],
            ["`unsure`", str(v["unsure"]), f"{v['unsure'] / n:.1%}"],
            ["`neither`", str(v["neither"]), f"{v['neither'] / n:.1%}"],
            *[[f"why not answered: {kind}", str(count), f"{count / n:.1%}"]
              for kind, count in v.get("reasons", {}).items()]]
    return Section("answers", "Answers on the photos measured", [
        f"The accuracy of the answered photos is "
        f"{'-' if accuracy is None else f'{accuracy:.4f}'} (of all photos, counting each "
        f"one's most probable class: {figures.accuracy:.4f}).",
        Table(["answer", "photos", "share"], rows)])


def _confused_pairs(figures: Figures) -> list[dict[str, Any]]:
    """The largest confusions, most photos first, each with its most confident examples."""
    matrix = np.array(figures.confusion_matrix)
    classes = figures.classes
    pairs = sorted(((int(matrix[i, j]), i, j) for i in range(len(classes))
                    for j in range(len(classes)) if i != j and matrix[i, j] > 0),
                   key=lambda pair: (-pair[0], pair[1], pair[2]))[:MAX_PAIRS]
    return [{"true": classes[i], "predicted": classes[j], "count": count,
             "share": count / max(1, int(matrix[i].sum())),
             "examples": [m for m in figures.misclassified  # most confident first
                          if m["true"] == classes[i] and m["predicted"] == classes[j]
                          ][:PER_PAIR]}
            for count, i, j in pairs]


def _confusions(pairs: list[dict[str, Any]], sheet: bool) -> Section:
    if not pairs:
        return Section("confusions", "Largest confusions", ["No photo was misclassified."])
    rows = [[str(rank), f"`{one_line(p['true'])}`", f"`{one_line(p['predicted'])}`",
             str(p["count"]), f"{p['share']:.1%}",
             ", ".join(f"{one_line(m['path'].rsplit('/', 1)[-1])} ({m['confidence']:.2f})"
                       for m in p["examples"])] for rank, p in enumerate(pairs, 1)]
    table = Table(["", "true", "predicted as", "photos", "of the true class",
                   "examples (confidence)"], rows)
    if not sheet:  # none of the examples could be read any more
        return Section("confusions", "Largest confusions", [table])
    return Section("confusions", "Largest confusions", [
        table, f"The examples, one row per pair in this order, most confident first "
        f"(`{CARD_SHEET}`):", Picture(CARD_SHEET, "the largest confusions' example photos")])


def _limits(figures: Figures, bundle: Bundle, held_out: bool) -> list[str]:
    spec, v = bundle.spec, figures.verdicts
    data = _part(bundle.provenance, "data")
    root = f"`{one_line(data['root'])}`" if data.get("root") else ""
    source = (f"Measured on photos from one source, {root or 'its training folder'} (its "
              "held-out test split)" if held_out else f"Measured on one source, "
              f"`{one_line(figures.source)}`" + (f" (trained on {root})" if root else ""))
    model = f"`pawnet predict {one_line(figures.model)} FOLDER --format csv`"
    items = [f"Photos whose shorter side is below {spec.min_side} px are never judged: they "
             "come back `unsure` (too small)." if spec.min_side else
             "No size limit: even a tiny photo gets an answer, however blurry.",
             f"{source}. Other sources, cameras and photo sizes were never measured.",
             *_uncertain_classes(figures),
             "How often photos of other things come back `neither` was not measured: every "
             f"photo evaluated shows one of the classes. To measure it: {model} on a folder "
             "of photos of other things, and count the `neither` rows." if spec.ood_threshold
             is not None else "Photos of other things were not measured; with no OOD score "
             "the model gives each of them one of its classes.",
             "Measured with test-time augmentation (`--tta`): by default `pawnet predict` "
             "judges one view and may answer differently." if figures.tta else
             "No test-time augmentation: each photo judged once, as `pawnet predict` does."]
    if v.get("min_confidence") is not None and v["min_confidence"] != spec.min_confidence:
        items.append(f"Measured with minimum confidence {v['min_confidence']:.3f}, not the "
                     f"bundle's {spec.min_confidence:.3f}.")
    if figures.failed:
        items.append(f"{_photos(len(figures.failed)).capitalize()} could not be read, not counted.")
    return items


def _uncertain_classes(figures: Figures) -> list[str]:
    """A line per class measured on few photos or with a wide recall interval, or one line
    saying there is none."""
    def width(c: str) -> float:
        found = _part(_part(_part(figures.intervals or {}, "per_class"), c), "recall")
        low, high = found.get("low"), found.get("high")
        return high - low if low is not None and high is not None else 0.0

    per_class = figures.per_class
    absent = [f"`{one_line(c)}` was not measured: no photo of it." for c, m in per_class.items()
              if not m["support"]]
    wide = [c for c, m in per_class.items()
            if 0 < m["support"] < FEW_PHOTOS or width(c) > WIDE]
    if not wide and not absent:
        return [f"Every class was measured on at least {FEW_PHOTOS} photos; the widest "
                f"recall interval spans {max(map(width, per_class)):.3f}."]
    def recall(c: str) -> str:
        return _with_interval(figures.intervals, "per_class", c, "recall",
                         value=per_class[c]["recall"])

    return absent + [f"`{one_line(c)}` was measured on {_photos(per_class[c]['support'])}: its "
                     f"recall {recall(c)} is uncertain (fewer than {FEW_PHOTOS} photos, or an "
                     f"interval wider than {WIDE})." for c in wide]


def confusion_sheet(figures: Figures) -> bytes | None:
    """The example photos of the largest confusions as one JPEG: a row per pair (as the
    card ranks them), its caption above and its most confident photos first; None when no
    photo was misclassified, or none of them can be read any more."""
    from pawnet.reporting.plots import photo_sheet

    return photo_sheet([(f"{rank}. {p['true']} -> {p['predicted']} ({p['count']})",
                         [m["path"] for m in p["examples"]])
                        for rank, p in enumerate(_confused_pairs(figures), 1)], PER_PAIR)
