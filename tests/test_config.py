import dataclasses

import pytest

from pawnet.config import FIELDS, Config, resolve_config
from pawnet.errors import ConfigError


def test_defaults_and_overrides():
    cfg = resolve_config(epochs="3", lr="0.01", augment="flip, zoom")
    assert (cfg.epochs, cfg.lr, cfg.augment) == (3, 0.01, ["flip", "zoom"])
    assert cfg.val_fraction == Config().val_fraction


def test_presets_set_the_model_and_what_is_given_wins():
    assert resolve_config().model == "efficientnet-lite0"
    best = resolve_config(preset="best")
    assert best.model == "efficientnet-lite1+lite2" and best.image_size == 260
    assert resolve_config(preset="best", model="tutorial-a-cnn").model == "tutorial-a-cnn"
    assert resolve_config({"preset": "best"}, image_size=224).image_size == 224
    with pytest.raises(ConfigError, match="preset must be one of fast, best"):
        resolve_config(preset="huge")


def test_yaml_file_with_flag_taking_priority(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nbatch-size: 16\naugment: [flip, shear]\nshear: 0.3\n")
    cfg = resolve_config(path, epochs=7)
    assert (cfg.epochs, cfg.batch_size, cfg.augment, cfg.shear) == (7, 16, ["flip", "shear"], 0.3)


def test_saved_yaml_round_trips():
    cfg = resolve_config(epochs=4, augment="none", image_size=96)
    assert resolve_config(__import__("yaml").safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epoch": 3}, "'epoch' is not a pawnet setting. Similar: epochs"),
        ({"epochs": "three"}, "epochs must be int, received: 'three'"),
        ({"epochs": 2.5}, "epochs must be int"),
        ({"val_fraction": 1.5}, "val_fraction must be between"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leaves almost nothing to train on"),
        ({"augment": "flip,zooom"}, "unknown augmentation 'zooom'.*Did you mean 'zoom'"),
        ({"cache": "gpu"}, "cache must be one of auto, memory, disk"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(**settings)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        resolve_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold 'key: value' lines"):
        resolve_config(bad)


def test_the_models_own_defaults_are_folded_in():
    cfg = resolve_config(model="pawnet-cnn")
    assert (cfg.image_size, cfg.epochs, cfg.batch_size, cfg.lr) == (96, 40, 64, 2e-3)
    assert (cfg.weight_decay, cfg.augment) == (0.05, ["crop", "flip"])  # its recipe
    assert resolve_config(model="pawnet-cnn", image_size=64, augment="flip").image_size == 64
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        resolve_config(model="vgg")


def test_old_data_key_still_means_photos(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("data: /some/photos\nepochs: 2\n")
    assert resolve_config(path).photos == "/some/photos"


def test_every_setting_documents_itself():
    for f in dataclasses.fields(Config):
        assert f.metadata["help"].strip(), f.name
    assert set(FIELDS) == {f.name for f in dataclasses.fields(Config)}


def test_a_null_in_a_file_means_the_models_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: tutorial-a-cnn\nimage_size: null\nepochs: none\n")
    cfg = resolve_config(path)
    assert (cfg.image_size, cfg.epochs) == (150, 10)
    assert resolve_config({"image_size": None}) == resolve_config(image_size=None)
