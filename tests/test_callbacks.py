import json

import keras
import numpy as np
import pytest
from PIL import Image

from pawnet.training.callbacks import (
    HistoryRecorder,
    ResumableEarlyStopping,
    ResumeCheckpoint,
    last_checkpoint,
    read_history,
)


def _fit(tmp_path, epochs: int, callbacks):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x, y = np.random.default_rng(0).normal(size=(2, 16, 3)).astype("float32")
    model.fit(x, y[:, :1], validation_data=(x, y[:, :1]), epochs=epochs, callbacks=callbacks,
              verbose=0)
    return model


def test_history_is_written_after_every_epoch_with_curves(tmp_path):
    _fit(tmp_path, 3, [HistoryRecorder(tmp_path)])
    rows = read_history(tmp_path / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"loss", "val_loss", "lr"} <= set(rows[0])
    with Image.open(tmp_path / "curves.png") as img:
        assert img.width > 400
    assert [r["epoch"] for r in read_history(tmp_path / "history.csv", upto_epoch=2)] == [1, 2]
    assert read_history(tmp_path / "missing.csv") == []


def test_resume_checkpoint_saves_model_optimizer_and_early_stopping(tmp_path):
    early = ResumableEarlyStopping(monitor="val_loss", patience=5)
    _fit(tmp_path, 2, [early, ResumeCheckpoint(tmp_path, early)])
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 2 and state["wait"] == early.wait
    assert state["best"] == pytest.approx(early.best)
    saved = keras.models.load_model(last_checkpoint(tmp_path))
    assert int(saved.optimizer.iterations.numpy()) == 2  # one batch of 16 per epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "state.json"]


def test_early_stopping_continues_from_a_saved_state(tmp_path):
    def epochs_run(wait: int) -> int:  # val_loss (>= 0) never beats the saved best of -1
        early = ResumableEarlyStopping(monitor="val_loss", patience=3,
                                       state={"best": -1.0, "wait": wait})
        return len(_fit(tmp_path, 10, [early]).history.epoch)

    assert epochs_run(wait=2) < epochs_run(wait=0) < 10


def test_last_checkpoint_needs_a_complete_save(tmp_path):
    assert last_checkpoint(tmp_path) is None
    (tmp_path / "last").mkdir()
    assert last_checkpoint(tmp_path) is None  # no config.json: not a finished save
    (tmp_path / "last" / "config.json").write_text("{}")
    assert last_checkpoint(tmp_path) == tmp_path / "last"
