"""`Figures`: what an evaluation measured, the one object every renderer reads.

The text for terminals, `report.md`, `report.html` and `report.json` are all drawn from
it, so they cannot disagree. It holds no model and no photos: `Report` (reporting/report.py)
adds what writing the report folder needs, and the renderers stay below it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass(kw_only=True)
class Figures:
    """An evaluation's figures, field for field and in order as `report.json` holds them.

    `roc_auc` and `log_loss` exist for two classes only (`roc_auc` is None when one class
    is absent from the photos; 0.0 is a real value). `out` and `heatmaps` are set once the
    report is written: its folder, and, when the model has feature maps to weigh, the
    heat-map grid's file name (`heatmaps`), their `heatmap_method` and `heatmap_resolution`.
    """

    model: str
    tta: bool
    source: str
    n: int
    accuracy: float
    classes: list[str]
    per_class: dict[str, dict[str, Any]]  # precision, recall, f1, support
    # bootstrap 95% intervals: method, rounds, level, accuracy, per_class (precision, recall),
    # each {value, low, high}; None only in figures made without photos
    intervals: dict[str, Any] | None = None
    confusion_matrix: list[list[int]]  # rows: true classes, columns: predicted ones
    expected_calibration_error: float
    roc_auc: float | None = None
    log_loss: float | None = None
    failed: list[dict[str, str]]  # unreadable photos: path, error
    temperature: float
    expected_calibration_error_uncalibrated: float
    reliability: list[dict[str, Any]]
    risk_coverage: dict[str, Any]  # curve, and at: accuracy at a few coverages
    verdicts: dict[str, Any]  # answered, unsure, neither, reasons, answered_accuracy
    misclassified: list[dict[str, Any]]  # most confident first
    least_confident_correct: list[dict[str, Any]]
    out: Path | None = None
    heatmaps: str | None = None
    heatmap_method: str | None = None
    heatmap_resolution: list[int] | None = None  # [rows, columns] of each map

    def heatmap_note(self) -> str | None:
        """How the heat-maps were drawn ("layer-cam, 28×28 cells"), once they were."""
        if self.heatmap_method is None or self.heatmap_resolution is None:
            return None
        rows, cols = self.heatmap_resolution
        return f"{self.heatmap_method}, {rows}×{cols} cells"

    def to_json(self) -> dict[str, Any]:
        """The content of `report.json` (a copy): every figure, `roc_auc` and `log_loss`
        with two classes only, `out` and the `heatmap*` keys once written."""
        data = {f.name: copy.deepcopy(getattr(self, f.name))
                for f in dataclasses.fields(Figures)}
        if len(self.classes) != 2:
            del data["roc_auc"], data["log_loss"]
        if self.out is not None:
            data["out"] = str(self.out)
        for key in ("out", "heatmaps", "heatmap_method", "heatmap_resolution"):
            if data[key] is None:
                del data[key]
        return data
