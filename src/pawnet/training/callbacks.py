"""Training extras, as Keras callbacks: history and curves, and state for `--resume`."""

from __future__ import annotations

import json
from pathlib import Path

import keras

from pawnet.run_folder import RunFolder
from pawnet.storage import Output, atomic_path, atomic_write_text, committed
from pawnet.training.history import History, require_tensorboard

# Keras' unzipped model format, the resume checkpoint `checkpoints/last/`
CHECKPOINT_OUTPUT = Output("checkpoint", r"config\.json|metadata\.json|model\.weights\.h5|assets",
                           r"config\.json")


class HistoryRecorder(keras.callbacks.Callback):
    """Keras' epochs into the run's `History` (history.csv and curves.png)."""

    def __init__(self, run_dir: Path, rows: list[dict[str, float]] | None = None):
        super().__init__()
        self.record = History(run_dir, rows)

    @property
    def rows(self) -> list[dict[str, float]]:
        return self.record.rows

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.record.add(row)

    def on_train_end(self, logs=None):
        self.record.finish()


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

    def on_epoch_end(self, epoch, logs=None):
        with atomic_path(self.folder / "last", CHECKPOINT_OUTPUT) as tmp:
            self.model.save(tmp, zipped=False)
        state = {
            "epoch": epoch + 1,
            "best": float(self.early_stopping.best),
            "wait": int(self.early_stopping.wait),
        }
        atomic_write_text(self.folder / "state.json", json.dumps(state) + "\n")


def tensorboard(run_dir: Path, enabled: bool, name: str = "") -> list[keras.callbacks.Callback]:
    """Keras' TensorBoard callback writing to `RUN_DIR/tensorboard[/name]`, when asked."""
    if not enabled:
        return []
    require_tensorboard()
    return [keras.callbacks.TensorBoard(log_dir=str(RunFolder(run_dir).tensorboard / name),
                                        write_graph=False)]

