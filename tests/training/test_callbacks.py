import json

import keras
import numpy as np
import pytest
from helpers import copy_photos
from PIL import Image

from pawnet.run_folder import read_history
from pawnet.training.callbacks import (
    HistoryRecorder,
    ResumableEarlyStopping,
    ResumeCheckpoint,
    last_checkpoint,
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


@pytest.mark.integration
@pytest.mark.parametrize(("settings", "unasked"), [
    ({"model": "tutorial-d-conv16", "epochs": 1, "image_size": 32, "batch_size": 8},
     "trained_run"),
    ({"model": "efficientnet-lite0", "epochs": 2, "image_size": 64, "batch_size": 8},
     "transfer_run"),
], ids=["scratch", "transfer"])
def test_tensorboard_logs_are_written_when_asked(tmp_path, settings, unasked, request):
    import pawnet

    photos = copy_photos(tmp_path / "photos", 6)
    run = pawnet.train(photos, out=str(tmp_path / "run"), tensorboard=True, **settings)
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert {e.parent.name for e in events} == {"train", "validation"}
    assert all(e.stat().st_size > 0 for e in events)
    # the session's run of the same kind (conftest.py) was not asked for logs: it has none
    assert not (request.getfixturevalue(unasked) / "tensorboard").exists()


def test_tensorboard_without_its_package_is_refused_before_training(tmp_path, monkeypatch):
    import importlib.util

    import pawnet
    from pawnet.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the tensorboard package.*pawnet\[tensorboard\]"):
        pawnet.train(copy_photos(tmp_path / "photos", 4), out=str(tmp_path / "run"),
                     model="pawnet-cnn", epochs=1, image_size=32, tensorboard=True)
    assert not (tmp_path / "run" / "history.csv").exists()
