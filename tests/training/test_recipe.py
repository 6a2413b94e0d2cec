import numpy as np
import pytest

from pawnet.config import resolve_config
from pawnet.data.scan import Photo
from pawnet.training.recipe import augmentation_used, class_weights, compile_model, targets


def _photos(n_cat: int, n_dog: int) -> list[Photo]:
    return ([Photo(f"c{i}", "cat", "train", f"c{i}") for i in range(n_cat)]
            + [Photo(f"d{i}", "dog", "train", f"d{i}") for i in range(n_dog)])


def test_class_weights_only_when_imbalanced():
    assert class_weights(_photos(50, 55), ["cat", "dog"]) is None
    weights = class_weights(_photos(20, 80), ["cat", "dog"])
    assert weights == pytest.approx({0: 2.5, 1: 0.625})


def test_targets_fit_the_output_kind():
    photos = _photos(1, 2)
    np.testing.assert_array_equal(targets(photos, ["cat", "dog"], binary=True),
                                  [[0.0], [1.0], [1.0]])
    np.testing.assert_array_equal(targets(photos, ["cat", "dog", "fox"], binary=False),
                                  [[1, 0, 0], [0, 1, 0], [0, 1, 0]])


def test_augmentation_used_is_what_training_really_applies():
    assert augmentation_used(resolve_config(model="tutorial-a-cnn", augment="flip,zoom")) == [
        "flip", "zoom"]
    # a pretrained model's head trains on features of plain photos ...
    assert augmentation_used(resolve_config(augment="flip,zoom")) == []
    # ... unless augmented views or fine-tuning use the augmentation
    assert augmentation_used(resolve_config(augment="flip", feature_views=2)) == ["flip"]
    assert augmentation_used(resolve_config(augment="flip", fine_tune=2)) == ["flip"]


@pytest.mark.parametrize(("units", "loss"), [(1, "BinaryCrossentropy"),
                                              (3, "CategoricalCrossentropy")])
def test_compile_picks_loss_optimizer_and_schedule(units, loss):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])
    cfg = resolve_config(model="tutorial-a-cnn", weight_decay=0.1, label_smoothing=0.1,
                         lr=0.01, epochs=4)
    compile_model(model, cfg, steps_per_epoch=10)
    assert type(model.loss).__name__ == loss
    assert type(model.optimizer).__name__ == "AdamW"
    schedule = model.optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "CosineDecay"
    # one epoch of warm-up to the peak, then cosine decay over the other three
    assert {k: schedule["config"][k] for k in ("warmup_target", "warmup_steps", "decay_steps")
            } == {"warmup_target": 0.01, "warmup_steps": 10, "decay_steps": 30}
    constant = resolve_config(model="tutorial-a-cnn", lr_schedule="constant", lr=0.01)
    compile_model(model, constant, steps_per_epoch=10, lr=0.003)
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.003)
