import json
import shutil

import numpy as np
import pytest
from conftest import real_photos

import pawnet
from pawnet.bundle import load_bundle
from pawnet.callbacks import last_checkpoint
from pawnet.errors import BundleError
from pawnet.images import load_pixels


def _copy_bundle(trained_run, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(trained_run / "bundle", dest)
    return dest


def test_round_trip_gives_identical_predictions(trained_run):
    import keras

    original = keras.models.load_model(last_checkpoint(trained_run / "checkpoints"))
    original.load_weights(trained_run / "checkpoints" / "best.weights.h5")
    model, spec = load_bundle(trained_run)
    pixels = np.stack([load_pixels(p, spec.image_size) for p in real_photos("cat", 6, "test")])
    np.testing.assert_array_equal(model.predict_on_batch(pixels),
                                  original.predict_on_batch(pixels))


def test_bundle_holds_no_augmentation_layers(trained_run):
    model, _ = load_bundle(trained_run)
    names = " ".join(layer.__class__.__name__ for layer in model.layers)
    assert "Random" not in names
    assert model.layers[1].__class__.__name__ == "Rescaling"  # scaling lives in the model


def test_bundle_leaves_the_optimizer_state_behind(trained_run):
    import io
    import zipfile

    import h5py

    def groups(path):
        with zipfile.ZipFile(path) as archive:
            return set(h5py.File(io.BytesIO(archive.read("model.weights.h5"))).keys())

    checkpoint = h5py.File(last_checkpoint(trained_run / "checkpoints") / "model.weights.h5")
    assert "optimizer" in set(checkpoint.keys())  # resume needs it
    assert "optimizer" not in groups(trained_run / "bundle" / "model.keras")


def test_run_folder_and_bundle_folder_both_load(trained_run):
    assert pawnet.load(trained_run).classes == pawnet.load(trained_run / "bundle").classes


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: (b / "bundle.json").write_text("{oops"), "bundle.json is damaged"),
        (lambda b: (b / "bundle.json").write_text(json.dumps(
            {**json.loads((b / "bundle.json").read_text()), "format_version": 99})),
         "bundle format 99.*upgrade pawnet"),
        (lambda b: (b / "model.keras").unlink(), "model.keras is missing"),
        (lambda b: (b / "model.keras").write_bytes(b"garbage"), "model.keras is damaged"),
        (lambda b: (b / "bundle.json").write_text(json.dumps(
            {**json.loads((b / "bundle.json").read_text()), "class_names": ["a", "b", "c"],
             "output": "softmax"})), "inconsistent"),
    ],
)
def test_damaged_bundle_is_a_clear_error(trained_run, tmp_path, damage, message):
    bundle = _copy_bundle(trained_run, tmp_path)
    damage(bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no model at"):
        load_bundle(tmp_path / "nothing")
    with pytest.raises(BundleError, match="not a pawnet run or bundle"):
        load_bundle(tmp_path)
