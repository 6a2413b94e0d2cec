"""What a run records as it trains, without Keras: `history.csv` and `curves.png`, its
TensorBoard scalars, and the state `--resume` continues from (`pawnet.training.callbacks`
feeds them from Keras' epochs; the transfer head writes its iterations directly)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from pawnet.errors import ConfigError
from pawnet.reporting.plots import plot_curves
from pawnet.run_folder import RunFolder
from pawnet.storage import atomic_write_text


class History:
    """Rewrites `history.csv` after every row and `curves.png` after every row that is at
    least `PLOT_INTERVAL` seconds after the last drawing, and at the end (atomically).
    Drawing takes a few tenths of a second: too slow to repeat after sub-second epochs."""

    PLOT_INTERVAL = 5.0

    def __init__(self, run_dir: Path, rows: list[dict[str, float]] | None = None):
        self.csv_path = RunFolder(run_dir).history
        self.png_path = RunFolder(run_dir).curves
        self.rows = list(rows or [])
        self._plotted_at = time.monotonic()  # the first drawing waits PLOT_INTERVAL too

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        self._write_csv()
        if time.monotonic() - self._plotted_at >= self.PLOT_INTERVAL:
            self._plot()

    def write(self, rows: list[dict[str, float]]) -> None:
        """Record the rows of a whole fit at once, and draw."""
        self.rows.extend(rows)
        self._write_csv()
        self.finish()

    def finish(self) -> None:
        if self.rows:
            self._plot()

    def _write_csv(self) -> None:
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv_path, buffer.getvalue())

    def _plot(self) -> None:
        plot_curves(self.rows, self.png_path)
        self._plotted_at = time.monotonic()


def resume_state(folder: Path) -> dict | None:
    """The early-stopping state saved with the last checkpoint in `folder`, or None."""
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None


def require_tensorboard() -> None:
    """Raises:
        ConfigError: the tensorboard package, which TensorFlow's summaries need, is missing.
    """
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package, which is not "
                          "installed. Try: pip install 'pawnet[tensorboard]'")


def write_scalars(run_dir: Path, enabled: bool, name: str, rows: list[dict[str, float]]) -> None:
    """History rows of a fit that ran outside Keras as TensorBoard scalars, laid out like
    Keras' callback (`RUN_DIR/tensorboard/name/{train,validation}`), when asked."""
    if not enabled:
        return
    require_tensorboard()
    import tensorflow as tf

    folder = RunFolder(run_dir).tensorboard / name
    for split, prefix in (("train", ""), ("validation", "val_")):
        writer = tf.summary.create_file_writer(str(folder / split))
        with writer.as_default():
            for row in rows:
                for metric in ("loss", "accuracy"):
                    if prefix + metric in row:
                        tf.summary.scalar(f"epoch_{metric}", row[prefix + metric],
                                          step=int(row["epoch"]) - 1)
        writer.close()
