"""Training extras, as Keras callbacks: history and curves, and state for `--resume`."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import keras

from pawnet.errors import ConfigError
from pawnet.reporting.plots import plot_curves
from pawnet.run_folder import RunFolder
from pawnet.storage import Output, atomic_path, atomic_write_text, committed

# Keras' unzipped model format, the resume checkpoint `checkpoints/last/`
CHECKPOINT_OUTPUT = Output("checkpoint", r"config\.json|metadata\.json|model\.weights\.h5|assets",
                           r"config\.json")


class HistoryRecorder(keras.callbacks.Callback):
    """Rewrites `history.csv` after every epoch and `curves.png` after every epoch that is
    at least `PLOT_INTERVAL` seconds after the last drawing, and at the end (atomically).
    Drawing takes a few tenths of a second: too slow to repeat after sub-second epochs."""

    PLOT_INTERVAL = 5.0

    def __init__(self, run_dir: Path, rows: list[dict[str, float]] | None = None):
        super().__init__()
        self.csv_path = RunFolder(run_dir).history
        self.png_path = RunFolder(run_dir).curves
        self.rows = list(rows or [])
        self._plotted_at = time.monotonic()  # the first drawing waits PLOT_INTERVAL too

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.rows.append(row)
        self._write_csv()
        if time.monotonic() - self._plotted_at >= self.PLOT_INTERVAL:
            self._plot()

    def write(self, rows: list[dict[str, float]]) -> None:
        """Record rows of a fit that ran outside Keras (the transfer head), then draw."""
        self.rows.extend(rows)
        self._write_csv()
        self.on_train_end()

    def _write_csv(self) -> None:
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv_path, buffer.getvalue())

    def on_train_end(self, logs=None):
        if self.rows:
            self._plot()

    def _plot(self):
        plot_curves(self.rows, self.png_path)
        self._plotted_at = time.monotonic()


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that can start from a saved best value and wait count."""

    def __init__(self, *args, state: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_state = state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if "best" in self._resume_state:
            self.best = self._resume_state["best"]
            self.wait = self._resume_state["wait"]


def last_checkpoint(folder: Path) -> Path | None:
    """The model saved after the last finished epoch, or None. It is a folder in Keras'
    unzipped format, which writes weights straight to disk (the zipped format builds the
    whole file in memory first, at every epoch)."""
    last = committed(folder / "last")
    return last if last is not None and (last / "config.json").is_file() else None


class ResumeCheckpoint(keras.callbacks.Callback):
    """After every epoch, saves the full model (weights and optimizer state) and the
    early-stopping state, so `--resume` continues exactly after the last finished epoch,
    also after Ctrl-C or a kill.
    """

    def __init__(self, folder: Path, early_stopping: keras.callbacks.EarlyStopping):
        super().__init__()
        self.folder = folder
        self.early_stopping = early_stopping

    @staticmethod
    def load_state(folder: Path) -> dict | None:
        try:
            return json.loads((folder / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def on_epoch_end(self, epoch, logs=None):
        with atomic_path(self.folder / "last", CHECKPOINT_OUTPUT) as tmp:
            self.model.save(tmp, zipped=False)
        state = {
            "epoch": epoch + 1,
            "best": float(self.early_stopping.best),
            "wait": int(self.early_stopping.wait),
        }
        atomic_write_text(self.folder / "state.json", json.dumps(state) + "\n")


def require_tensorboard() -> None:
    """Raises:
        ConfigError: the tensorboard package, which TensorFlow's summaries need, is missing.
    """
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package, which is not "
                          "installed. Try: pip install 'pawnet[tensorboard]'")


def tensorboard(run_dir: Path, enabled: bool, name: str = "") -> list[keras.callbacks.Callback]:
    """Keras' TensorBoard callback writing to `RUN_DIR/tensorboard[/name]`, when asked."""
    if not enabled:
        return []
    require_tensorboard()
    return [keras.callbacks.TensorBoard(log_dir=str(RunFolder(run_dir).tensorboard / name),
                                        write_graph=False)]


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
