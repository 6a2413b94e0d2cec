"""`Report`: what `pawnet.evaluate` computed, and `Report.write`, the one step that writes it.

Computing writes nothing; writing is asked for (the CLI always does): `report.json`,
`report.md`, `report.html`, the plots, the misclassified photos with their
heat-maps and the model card (`MODEL_CARD.md`, reporting/card.py), into `RUN_DIR/eval`
(then `eval2`, ...) or a folder of the caller's choice; the card into the run's bundle too
when the report measured the run's own held-out test split, replacing only a card pawnet
wrote there and nobody has edited since (`stamp_card`, `is_own_card`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pawnet.errors import BundleError, PawnetError, one_line
from pawnet.inference.bundle import BUNDLE_OUTPUT, CARD, CARD_SHEET, Bundle
from pawnet.inference.predictor import Predictor
from pawnet.reporting.card import Card, build_card, confusion_sheet
from pawnet.reporting.explain import blend
from pawnet.reporting.figures import Figures
from pawnet.reporting.html import write_html
from pawnet.reporting.plots import (
    plot_confusion,
    plot_grid,
    plot_reliability,
    plot_risk_coverage,
    plot_roc,
)
from pawnet.reporting.text import card_markdown, markdown
from pawnet.run_folder import RunFolder
from pawnet.storage import (
    MARKER,
    Output,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_output_folder,
    next_run_dir,
    read_text_file,
)

log = logging.getLogger(__name__)

MAX_MISCLASSIFIED_SHOWN = 64
EVALUATION_OUTPUT = Output("evaluation", r"report\.(json|md|html)|[a-z_]+\.png"
                           r"|MODEL_CARD\.md|MODEL_CARD_confusions\.jpg", r"report\.json")
CARD_STAMP = ("<!-- written by pawnet evaluate, sha256 {digest}: replaced by the next "
              "evaluation only while unedited -->")
_STAMP = re.compile(re.escape(CARD_STAMP).replace(re.escape("{digest}"), "([0-9a-f]{16})"))


def check_out_folder(out: str | Path | None) -> None:
    """Refuse a report folder `out` that holds anything but an earlier report; the CLI
    asks before minutes of work, not after (None: the default folder, always free).

    Raises:
        ConfigError: `out` is a file, a link, or a folder of the user's.
    """
    if out is not None:
        check_output_folder(out, EVALUATION_OUTPUT)


@dataclasses.dataclass(kw_only=True)
class Report(Figures):
    """An evaluation: its figures (`report.accuracy`, `report.per_class`, ...; `to_json()`
    is `report.json`) and what writing its folder needs: the predictor, the photos
    evaluated, their probabilities (rows in the order of `paths`, columns in the order of
    `classes`) and their true classes (indices into `classes`). Unreadable photos are in
    `failed`, not in `paths`. `command` is the `pawnet evaluate` command that measures the
    same (the card names it), and `held_out` says the photos were the run's own test split,
    judged as the bundle judges by default: its card then goes into the bundle too, at
    `bundle_card` once written."""

    predictor: Predictor = dataclasses.field(repr=False, compare=False)
    paths: list[str] = dataclasses.field(repr=False, compare=False)
    probabilities: np.ndarray = dataclasses.field(repr=False, compare=False)
    truth: np.ndarray = dataclasses.field(repr=False, compare=False)
    command: str = dataclasses.field(default="", repr=False, compare=False)
    held_out: bool = dataclasses.field(default=False, repr=False, compare=False)
    bundle_card: Path | None = dataclasses.field(default=None, repr=False, compare=False)

    def write(self, out: str | Path | None = None) -> Path:
        """Write the report folder, whole or not at all: `report.json`, `report.md`,
        `report.html`, the plots (confusion, ROC, reliability, risk-coverage), the
        misclassified photos, with their heat-maps when the model allows it, and
        the model card (`MODEL_CARD.md` and `MODEL_CARD_confusions.jpg`). A `held_out`
        report puts the card into the run's bundle too (a bundle that cannot be written,
        or that holds a file of the user's, gets a warning, not an error).

        Args:
            out: the folder. Defaults to `RUN_DIR/eval` (then `eval2`, ...), or
                `runs/evaluate` for a bare bundle or a built-in model. An existing folder
                is replaced only when it is an earlier report (never a folder of the
                user's).

        Returns:
            The folder; from now on `report.out` too (and "out" in `to_json()`).

        Raises:
            ConfigError: `out` holds something that is not an earlier report.
        """
        check_out_folder(out)
        run_dir = self.predictor.bundle.run_dir
        folder = Path(out) if out else next_run_dir(
            RunFolder(run_dir).reports if run_dir else Path("runs") / "evaluate")
        written = dataclasses.replace(self, out=folder, heatmaps=None, heatmap_method=None,
                                      heatmap_resolution=None)
        bundle = self.predictor.bundle
        sheet = confusion_sheet(self)  # first: the card shows it only when there is one
        card = build_card(self, bundle, command=self.command or f"pawnet evaluate {self.model}",
                          today=datetime.now(UTC).date().isoformat(), held_out=self.held_out,
                          sheet=sheet is not None)
        text = stamp_card(card_markdown(card))
        with atomic_path(folder, EVALUATION_OUTPUT) as tmp:
            _write_folder(written, tmp, card, text, sheet)
        self.out, self.heatmaps = written.out, written.heatmaps
        self.heatmap_method, self.heatmap_resolution = (written.heatmap_method,
                                                        written.heatmap_resolution)
        if self.held_out:
            self.bundle_card = _card_into_bundle(bundle, text, sheet)
        return folder


def stamp_card(text: str) -> str:
    """A card's Markdown with its last line, the stamp by which pawnet knows the file as
    its own and unedited: an HTML comment (hidden when rendered) holding a digest of the
    text above it."""
    return text + CARD_STAMP.format(digest=_text_digest(text)) + "\n"


def is_own_card(path: Path) -> bool:
    """Whether `path` is a card pawnet wrote and nobody has edited since."""
    try:
        text = read_text_file(path)
    except (OSError, ValueError):
        return False
    body, _, last = text.rstrip("\n").rpartition("\n")
    found = _STAMP.fullmatch(last)
    return found is not None and found.group(1) == _text_digest(body + "\n")


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_card(bundle: Bundle, card: str, sheet: bytes | None) -> Path | None:
    """Put a model card (`MODEL_CARD.md`, stamped, and its sheet of photos when there is
    one) into a training run's bundle folder, each file atomically, the sheet first; the
    model's own files are never touched, and a sheet left from an earlier card goes. Only
    a card pawnet wrote and nobody edited is replaced, and its sheet only beside one.

    Returns:
        The card's path; None for a model that is not a run's bundle (a built-in model, a
        bundle folder on its own), which gets no card.

    Raises:
        BundleError: the folder holds a file of the user's (a `MODEL_CARD.md` pawnet did
            not write, or one edited since, included); nothing in it was touched.
        OSError: the bundle folder cannot be written.
    """
    if bundle.path is None or bundle.run_dir is None:
        return None
    _check_card_place(bundle.path)
    if sheet is not None:
        atomic_write_bytes(bundle.path / CARD_SHEET, sheet)
    atomic_write_text(bundle.path / CARD, card)
    if sheet is None:
        (bundle.path / CARD_SHEET).unlink(missing_ok=True)
    return bundle.path / CARD


def _check_card_place(folder: Path) -> None:
    """Refuse a bundle `folder` where the card would replace, or sit beside, a file of the
    user's."""
    where = "so the new card is in the report folder only. Try: move"
    if not BUNDLE_OUTPUT.owns(folder):
        foreign = sorted(p.name for p in folder.iterdir()
                         if p.name != MARKER and not re.fullmatch(BUNDLE_OUTPUT.names, p.name))
        named = ", ".join(map(one_line, foreign[:3])) + (" ..." if len(foreign) > 3 else "")
        raise BundleError(f"{one_line(folder)} holds files pawnet did not write there "
                          f"({named or 'a marker of another kind'}), {where} them out of "
                          "the bundle folder, then evaluate again")
    card, sheet = folder / CARD, folder / CARD_SHEET
    if card.is_symlink() or (card.exists() and not is_own_card(card)):
        raise BundleError(f"{one_line(card)} was not written by pawnet, or was edited since, "
                          f"and is kept, {where} it out of the bundle folder, then evaluate "
                          "again")
    if not card.exists() and (sheet.exists() or sheet.is_symlink()):
        raise BundleError(f"{one_line(sheet)} is not beside a card pawnet wrote and is kept, "
                          f"{where} it out of the bundle folder, then evaluate again")


def _card_into_bundle(bundle: Bundle, text: str, sheet: bytes | None) -> Path | None:
    """The card into the run's bundle (its path; None for a bundle that gets none). A
    bundle holding files of the user's, or that cannot be written, keeps what it has, with
    a warning: the report folder has the new card."""
    try:
        return write_card(bundle, text, sheet)
    except PawnetError as exc:
        log.warning(str(exc))
    except OSError as exc:
        log.warning(f"the model card could not be written into {one_line(bundle.path)} "
                    f"({one_line(exc.strerror or exc)}); it is in the report folder. Try: "
                    "make the bundle folder writable, then evaluate again")
    return None


def _write_folder(report: Report, folder: Path, card: Card, text: str,
                  sheet: bytes | None) -> None:
    """Every file of the report into `folder` (`text`: the card's Markdown); the JSON and
    Markdown name the heat-map grid when there is one."""
    folder.mkdir(parents=True, exist_ok=True)
    if sheet is not None:
        atomic_write_bytes(folder / CARD_SHEET, sheet)
    atomic_write_text(folder / CARD, text)
    plot_roc(report.truth, report.probabilities, report.classes, folder / "roc.png")
    plot_confusion(np.array(report.confusion_matrix), report.classes, folder / "confusion.png")
    plot_reliability(report.reliability, folder / "reliability.png")
    plot_risk_coverage(report.risk_coverage["curve"], folder / "risk_coverage.png")
    shown = report.misclassified[:MAX_MISCLASSIFIED_SHOWN]
    images, heat = _misclassified(report, shown, folder)
    unsure = [report.predictor.decode(m["path"]) for m in report.least_confident_correct]
    atomic_write_text(folder / "report.json", json.dumps(report.to_json(), indent=2) + "\n")
    atomic_write_text(folder / "report.md", markdown(report))
    write_html(report, folder, report.predictor.bundle,
               list(zip(images, heat or [None] * len(images), strict=True)), unsure, card)


def _misclassified(report: Report, shown: list[dict], folder: Path
                   ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Draw the grids of the misclassified photos shown, and of their heat-maps; returns
    their pixels and heat-maps (None when the model has no feature maps to weigh), and
    notes the heat-map grid's file name, method and resolution in the report."""
    if not shown:
        return [], None
    predictor = report.predictor
    images = np.stack([predictor.decode(m["path"]) for m in shown])
    captions = [f"{m['true']}→{m['predicted']} {m['confidence']:.2f}" for m in shown]
    plot_grid(images, captions, folder / "misclassified.png",
              title="misclassified (true→predicted, confidence)")
    found = _heat_maps(predictor, images, shown)
    if found is None:
        return list(images), None
    maps, method, resolution = found
    report.heatmaps = "misclassified_heatmaps.png"
    report.heatmap_method, report.heatmap_resolution = method, resolution
    heat = [blend(image, cam) for image, cam in zip(images, maps, strict=True)]
    plot_grid(np.stack(heat), captions, folder / report.heatmaps,
              title=f"where the model looked for the class it predicted "
                    f"({report.heatmap_note()})")
    return list(images), heat


def _heat_maps(predictor: Predictor, images: np.ndarray, shown: list[dict]
               ) -> tuple[list[np.ndarray], str, list[int]] | None:
    """The heat-maps of the misclassified photos for the class predicted over them, a few
    photos of one class per call, with their method and resolution; None for a model with
    no convolutional feature maps."""
    from pawnet.errors import ConfigError
    from pawnet.reporting.heatmap import batches, heat_maps

    index = [predictor.classes.index(m["predicted"]) for m in shown]
    maps: list = [None] * len(shown)
    try:
        for chunk in batches(index):
            found = heat_maps(predictor.model, images[chunk], index[chunk[0]])
            for i, cam in zip(chunk, found.maps, strict=True):
                maps[i] = cam
    except ConfigError:
        return None
    return maps, found.method, found.resolution
