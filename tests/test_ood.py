"""'neither': the OOD score in the model, its threshold from validation photos, and what it
says about real photos that are not cats or dogs (`pawnet.ood`, `pawnet.models.ood`,
`pawnet.training.ood`)."""

import io
import json

import numpy as np
import pytest
from conftest import CVTRICKS, SHARED_DATA, real_photos
from PIL import Image

import pawnet
from pawnet import ood

OOD = SHARED_DATA / "ood"


def _non_pets(per_class: int) -> list:
    return [p for kind in ("airplane", "automobile", "ship", "truck")
            for p in sorted((OOD / kind).glob("*.jpg"))[:per_class]]


def _shrunk(paths: list, side: int = 32) -> list[bytes]:
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def test_the_score_is_the_distance_to_the_kth_nearest_training_photo():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 16))
    bank = ood.feature_bank(train, seed=0)
    assert np.allclose(np.linalg.norm(bank, axis=1), 1)
    assert ood.scores(train[:3] * 7, bank, neighbours=1) == pytest.approx(0, abs=1e-6)
    far = -bank.mean(axis=0, keepdims=True)
    assert ood.scores(far, bank)[0] > ood.scores(train[:1], bank)[0]
    many = rng.normal(size=(100, 4))
    picked = ood.feature_bank(many, seed=1, size=10)
    assert picked.shape == (10, 4)
    assert np.array_equal(picked, ood.feature_bank(many, seed=1, size=10))  # reproducible


def test_the_threshold_lets_at_most_the_rate_of_validation_photos_through():
    scores = np.linspace(0, 1, 1000)
    found = ood.threshold(scores, rate=0.01)
    assert (scores > found).mean() <= 0.01
    assert ood.threshold(np.array([0.3]), rate=0.01) == 0.3


def test_the_layer_in_the_model_computes_the_numpy_score_and_survives_saving(tmp_path):
    import keras

    from pawnet.models.ood import NeighbourDistance, with_ood

    rng = np.random.default_rng(1)
    inputs = keras.Input((8,))
    features = keras.layers.Dense(6, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid",
                                                   name="predictions")(features))
    x = rng.normal(size=(20, 8)).astype("float32")
    train_features = keras.Model(inputs, features).predict(x, verbose=0)
    bank = ood.feature_bank(train_features, seed=0)
    wrapped = with_ood(model, bank)
    out = wrapped.predict(x[:7], verbose=0)
    np.testing.assert_allclose(out[:, :1], model.predict(x[:7], verbose=0), atol=1e-6)
    np.testing.assert_allclose(out[:, 1], ood.scores(train_features[:7], bank), atol=1e-5)
    wrapped.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("ood_score"), NeighbourDistance)
    np.testing.assert_allclose(loaded.predict(x[:7], verbose=0), out, atol=1e-6)


@pytest.fixture(scope="module")
def pets_run(tmp_path_factory):
    """The default model (Lite0 transfer learning) trained on cvtricks/train's 1,000 photos."""
    return pawnet.train(CVTRICKS / "train", out=str(tmp_path_factory.mktemp("pets") / "run"),
                        test_fraction=0.0)


def test_photos_that_are_not_pets_are_neither_and_real_pets_are_not(pets_run):
    predictor = pawnet.load(pets_run, min_confidence=0)
    assert predictor.spec.ood_threshold is not None
    pets = real_photos("cat", 50, "test") + real_photos("dog", 50, "test")
    not_pets = _non_pets(25)
    pet_labels = [r.label for r in predictor.predict(pets)]
    other_labels = [r.label for r in predictor.predict(not_pets)]
    assert pet_labels.count("neither") <= 3, pet_labels.count("neither")
    assert other_labels.count("neither") >= 0.6 * len(not_pets), other_labels.count("neither")
    # a small photo of a real cat or dog is still one: it is not called neither for its size
    small = [r.label for r in predictor.predict(_shrunk(pets))]
    assert small.count("neither") <= 0.15 * len(pets), small.count("neither")
    from sklearn.datasets import load_sample_images

    scenes = []
    for image in load_sample_images().images:  # a palace and a flower, shipped with sklearn
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        scenes.append(buffer.getvalue())
    assert [r.label for r in predictor.predict(scenes)] == ["neither", "neither"]


def test_the_verdict_travels_to_evaluate_the_cli_and_the_bundle(pets_run, tmp_path):
    from conftest import invoke

    spec = json.loads((pets_run / "bundle" / "bundle.json").read_text())
    metrics = json.loads((pets_run / "bundle" / "provenance.json").read_text())["metrics"]
    assert spec["format_version"] == 3 and spec["ood_threshold"] == metrics["ood_threshold"]
    assert 0 <= spec["min_confidence"] <= 1
    report = pawnet.evaluate(pets_run, CVTRICKS / "test", out=tmp_path / "eval")
    verdicts = report["verdicts"]
    assert verdicts["answered"] + verdicts["unsure"] + verdicts["neither"] == report["n"]
    assert verdicts["neither"] <= 0.02 * report["n"]
    assert "answered" in (tmp_path / "eval" / "report.md").read_text()
    photos = [str(p) for p in _non_pets(2)]
    rows = json.loads(invoke("predict", pets_run, *photos, "--json").stdout)
    for row in rows:
        assert (row["label"] == "neither") == (row["ood_score"] > spec["ood_threshold"])
    assert [row["label"] for row in rows].count("neither") >= 4
    result = invoke("predict", pets_run, photos[0], "--min-confidence", "2")
    assert result.exit_code == 2 and "--min-confidence" in result.output


def test_a_bundle_without_an_ood_score_still_loads_and_never_says_neither(trained_run,
                                                                          tmp_path):
    import shutil

    import keras

    bundle = tmp_path / "bundle"
    shutil.copytree(trained_run / "bundle", bundle)
    model = keras.models.load_model(bundle / "model.keras")
    inner = keras.Model(model.inputs[0], model.get_layer("predictions").output)
    inner.save(bundle / "model.keras")
    spec = json.loads((bundle / "bundle.json").read_text())
    del spec["ood_threshold"], spec["min_confidence"]
    (bundle / "bundle.json").write_text(json.dumps({**spec, "format_version": 2}))
    [result] = pawnet.load(bundle, runtime="keras").predict(real_photos("cat", 1, "test"))
    assert result.ood_score is None and result.label in ("cat", "dog")
