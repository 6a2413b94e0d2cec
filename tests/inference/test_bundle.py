import json
import shutil

import numpy as np
import pytest
from helpers import real_photos

import pawnet
from pawnet.data.images import load_pixels
from pawnet.errors import BundleError
from pawnet.inference.bundle import resolve
from pawnet.training.callbacks import last_checkpoint


def _copy_bundle(trained_run, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(trained_run / "bundle", dest)
    return dest


def test_round_trip_gives_identical_predictions(trained_run):
    import keras

    original = keras.models.load_model(last_checkpoint(trained_run / "checkpoints"))
    original.load_weights(trained_run / "checkpoints" / "best.weights.h5")
    bundle = resolve(trained_run)
    pixels = np.stack([load_pixels(p, bundle.spec.image_size)
                       for p in real_photos("cat", 6, "test")])
    saved = bundle.model.predict_on_batch(pixels)
    np.testing.assert_array_equal(saved[:, :-1], original.predict_on_batch(pixels))
    assert bundle.spec.ood_threshold is not None and saved.shape[1] == 2  # then the OOD score


def test_bundle_holds_no_augmentation_layers(trained_run):
    model = resolve(trained_run).model
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


def test_resolve_knows_the_run_and_its_provenance(trained_run, tmp_path):
    bundle = resolve(trained_run / "bundle")
    assert bundle.path == trained_run / "bundle"
    assert bundle.run_dir == trained_run  # its split manifest is there
    counts = bundle.provenance["data"]["counts"]
    assert sum(sum(per_class.values()) for per_class in counts.values()) == 32  # 16 a class
    alone = _copy_bundle(trained_run, tmp_path)
    assert resolve(alone).run_dir is None


def _edit(bundle, **changes):
    data = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**data, **changes}))


@pytest.mark.parametrize(("key", "value"), [("resize_method", "lanczos"),
                                            ("aspect", "crop"), ("input_range", [-1, 1]),
                                            ("channels", "BGR")])
def test_preprocessing_this_pawnet_cannot_do_is_refused(trained_run, tmp_path, key, value):
    bundle = _copy_bundle(trained_run, tmp_path)
    _edit(bundle, **{key: value})
    with pytest.raises(BundleError, match=f"asks for {key} .*cannot do.*upgrade pawnet"):
        resolve(bundle)


def test_the_predictor_decodes_with_the_bundles_resize_method(trained_run, monkeypatch):
    from pawnet.data import images

    predictor = pawnet.load(trained_run)
    photo = real_photos("dog", 1, "test")[0]
    plain = predictor.decode(photo)
    monkeypatch.setitem(images.RESIZE_METHODS, "bilinear", images.Image.Resampling.NEAREST)
    assert np.abs(predictor.decode(photo).astype(int) - plain).max() > 0


def _edit(bundle, **values):
    spec = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**spec, **values}))


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
        (lambda b: (b / "bundle.json").write_text(json.dumps(
            {**json.loads((b / "bundle.json").read_text()), "image_size": 64})),
         "model takes .* but bundle.json says image_size 64"),
        (lambda b: _edit(b, image_size=0), r"image_size must be a whole number .* not 0"),
        (lambda b: _edit(b, image_size="32"), r"image_size must be .* not '32'"),
        (lambda b: _edit(b, class_names="ab"), "class_names must be a list of non-empty"),
        (lambda b: _edit(b, class_names=["cat", ""]), "class_names must be a list"),
        (lambda b: _edit(b, class_names=["cat", "cat"]), "lists 'cat' more than once"),
        (lambda b: _edit(b, model_name=7), "model_name must be a non-empty string"),
        (lambda b: _edit(b, output="relu"), "output must be sigmoid or softmax"),
        (lambda b: _edit(b, class_names=["a", "b", "c"]), "3 classes with sigmoid output"),
        (lambda b: (b / "provenance.json").write_text("[1, 2]"),
         "provenance.json is damaged .*found list"),
    ],
)
def test_damaged_bundle_is_a_clear_error(trained_run, tmp_path, damage, message):
    bundle = _copy_bundle(trained_run, tmp_path)
    damage(bundle)
    with pytest.raises(BundleError, match=message):
        pawnet.load(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no model at"):
        resolve(tmp_path / "nothing")
    with pytest.raises(BundleError, match="not a pawnet run or bundle"):
        resolve(tmp_path)
