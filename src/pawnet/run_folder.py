"""The layout of a run folder, known here only.

```
runs/train/
  config.yaml      the resolved settings        manifest.csv   path, label, split, sha256,
                                                               label_source
  data.json        skipped files, duplicates    history.csv    one row per epoch
  curves.png       loss and accuracy curves     checkpoints/   last/, best.weights.h5
  bundle/          the model bundle (pawnet.inference.bundle)
  eval/, eval2/    reports (pawnet evaluate)    export/FORMAT  exports (pawnet export)
  explain/         heat-maps (pawnet explain)   previous/N/    a finished run's bundle and
                                                               reports, set aside by --resume
```
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from pawnet.storage import read_text_file

BUNDLE = "bundle"
REPORTS = "eval"  # then eval2, eval3, ...
SUPERSEDED = (BUNDLE, f"{REPORTS}*", "export", "explain")  # what describes a run's model


@dataclass(frozen=True)
class RunFolder:
    """Where each file of the run at `path` lives (whether or not it exists yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / "config.yaml")
    manifest = property(lambda self: self.path / "manifest.csv")
    data = property(lambda self: self.path / "data.json")
    history = property(lambda self: self.path / "history.csv")
    curves = property(lambda self: self.path / "curves.png")
    checkpoints = property(lambda self: self.path / "checkpoints")
    bundle = property(lambda self: self.path / BUNDLE)
    reports = property(lambda self: self.path / REPORTS)
    explain = property(lambda self: self.path / "explain")
    previous = property(lambda self: self.path / "previous")
    tensorboard = property(lambda self: self.path / "tensorboard")

    def export(self, name: str) -> Path:
        return self.path / "export" / name

    def report_files(self) -> list[Path]:
        """Every `report.json` that `pawnet evaluate` wrote in the run's report folders."""
        return [p for p in self.path.glob(f"{REPORTS}*/report.json") if p.is_file()]

    def is_run(self) -> bool:
        return self.config.is_file() and self.manifest.is_file()


def _row(row: dict) -> dict[str, float] | None:
    """A `history.csv` row as numbers (the epoch an int); None when it is damaged (a field
    too many, or not a number)."""
    if None in row:
        return None
    try:
        numbers = {k: float(v) for k, v in row.items() if v}
    except ValueError:
        return None
    epoch = numbers.get("epoch", math.nan)
    if not math.isfinite(epoch):
        return None
    return {**numbers, "epoch": int(epoch)}


def read_history(path: str | Path, upto_epoch: int | None = None) -> list[dict[str, float]]:
    """The undamaged rows of a `history.csv` (epochs count from 1), up to `upto_epoch` if
    given; none when it is missing or unreadable. Needs no Keras, and never waits on a
    pipe named like it."""
    try:
        reader = csv.DictReader(io.StringIO(read_text_file(path), newline=""))
        rows = [row for row in map(_row, reader) if row is not None]
    except (OSError, ValueError, csv.Error):
        return []
    return [r for r in rows if upto_epoch is None or r["epoch"] <= upto_epoch]
