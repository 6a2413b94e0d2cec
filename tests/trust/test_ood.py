"""'neither': the OOD score in the model, its threshold from validation photos, and what it
says about real photos that are not cats or dogs (`pawnet.trust.ood`, `pawnet.models.ood`,
`pawnet.training.trust`)."""

import io
import json

import numpy as np
import pytest
from helpers import CVTRICKS, SHARED_DATA, real_photos
from PIL import Image

import pawnet
from pawnet.trust import ood

OOD = SHARED_DATA / "ood"
OOD_PHOTOS = SHARED_DATA / "ood_photos"


def _non_pets(per_class: int) -> list:
    return [p for kind in ("airplane", "automobile", "ship", "truck")
            for p in sorted((OOD / kind).glob("*.jpg"))[:per_class]]


def _shrunk(paths: list, side: int = 32) -> list[bytes]:
    """Photos made side x side, as JPEG bytes: what a 32-px photo of a cat looks like."""
    out = []
    for path in paths:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize((side, side)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def test_the_score_is_the_distance_to_the_kth_nearest_training_photo_after_centring():
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.normal(size=(50, 8)), np.zeros((50, 8))], axis=1) + 3.0
    fitted = ood.fit(train, train[:10] + 0.01, seed=0, frozen=True)
    assert np.allclose(np.linalg.norm(fitted.bank, axis=1), 1)
    np.testing.assert_allclose(fitted.mean, train.mean(axis=0), rtol=1e-5)
    assert ood.scores(train[:3], fitted.bank, fitted.mean, neighbours=1) == pytest.approx(
        0, abs=1e-5)
    far = (fitted.mean + np.r_[np.zeros(8), rng.normal(size=8)])[None]  # where none varies
    assert fitted(far)[0] > fitted(train[:1])[0] and fitted(far)[0] > fitted.threshold
    many, val = rng.normal(size=(100, 4)), rng.normal(size=(5, 4))
    picked = ood.fit(many, val, seed=1, frozen=False, size=10)
    assert picked.bank.shape == (10, 4)
    assert np.array_equal(picked.bank, ood.fit(many, val, seed=1, frozen=False, size=10).bank)


def test_leave_one_out_scores_each_row_against_the_others_in_blocks():
    rng = np.random.default_rng(2)
    unit = ood.normalised(rng.normal(size=(300, 8)))
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1)
    want = 1 - np.sort(similarity, axis=1)[:, -ood.NEIGHBOURS]
    np.testing.assert_allclose(ood.leave_one_out(unit), want, atol=1e-6)


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
    fitted = ood.fit(train_features, train_features[:5], seed=0, frozen=False)
    wrapped = with_ood(model, fitted)
    out = wrapped.predict(x[:7], verbose=0)
    np.testing.assert_allclose(out[:, :1], model.predict(x[:7], verbose=0), atol=1e-6)
    np.testing.assert_allclose(out[:, 1], fitted(train_features[:7]), atol=1e-5)
    wrapped.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("ood_score"), NeighbourDistance)
    np.testing.assert_allclose(loaded.predict(x[:7], verbose=0), out, atol=1e-6)


def test_every_reason_names_its_cause_with_the_numbers():
    from pawnet.trust.verdict import reason_kind, verdict

    classes = ["cat", "dog"]
    probs = np.array([0.3, 0.7])
    assert verdict(classes, probs) == ("dog", None)
    assert verdict(classes, probs, size=(32, 32), min_side=48, ood_score=0.9,
                   ood_threshold=0.5) == ("unsure", "too small (32x32)")
    label, reason = verdict(classes, probs, size=(500, 375), min_side=48, ood_score=0.9,
                            ood_threshold=0.5)
    assert (label, reason) == ("neither", "unlike the training photos (score 0.9 > 0.5)")
    label, reason = verdict(classes, probs, ood_score=0.1, ood_threshold=0.5,
                            min_confidence=0.8)
    assert (label, reason) == ("unsure", "no class likely enough (0.7 < 0.8)")
    assert reason_kind(reason) == "no class likely enough" and reason_kind(None) is None


def test_the_too_small_cut_is_where_shrunk_accuracy_falls_away():
    from pawnet.trust.verdict import choose_min_side, sides_to_try

    sides, ceiling = sides_to_try([300] * 90 + [40] * 10, 224)
    assert ceiling == 40 and sides == [16, 24, 32]  # never above what training photos were
    sides, ceiling = sides_to_try([500] * 100, 224)
    assert ceiling == 224 and sides[-1] == 128
    accuracy = {16: 0.5, 24: 0.6, 32: 0.75, 48: 0.9, 64: 0.96, 96: 0.98, 128: 0.99}
    asked = []
    found, measured = choose_min_side(sides, ceiling, 0.99,
                                      lambda s: asked.append(s) or accuracy[s])
    assert found == 64 and len(asked) <= 3 and measured[64] == 0.96
    assert choose_min_side([16, 24], 32, 0.9, lambda s: 0.5)[0] == 32  # none: the ceiling


@pytest.fixture(scope="module")
def pets_run(tmp_path_factory):
    """The default model (Lite0 transfer learning) trained on cvtricks/train's 1,000 photos."""
    return pawnet.train(CVTRICKS / "train", out=str(tmp_path_factory.mktemp("pets") / "run"),
                        test_fraction=0.0)


def test_everyday_photos_are_neither_and_real_pets_are_answered(pets_run):
    predictor = pawnet.load(pets_run)
    assert predictor.spec.ood_threshold is not None
    [umbrella] = predictor.predict([OOD_PHOTOS / "000000000036.jpg"])  # a woman, a parasol
    assert umbrella.label == "neither", umbrella
    assert umbrella.reason.startswith("unlike the training photos (score ")
    everyday = predictor.predict(sorted(OOD_PHOTOS.glob("*.jpg")))
    flagged = sum(r.label in ("neither", "unsure") for r in everyday)
    assert flagged >= 0.9 * len(everyday), flagged
    pets = real_photos("cat", 50, "test") + real_photos("dog", 50, "test")
    labels = [r.label for r in predictor.predict(pets)]
    assert labels.count("neither") + labels.count("unsure") <= 3, labels
    from sklearn.datasets import load_sample_images

    scenes = []
    for image in load_sample_images().images:  # a palace and a flower, shipped with sklearn
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        scenes.append(buffer.getvalue())
    assert [r.label for r in predictor.predict(scenes)] == ["neither", "neither"]


def test_a_photo_far_smaller_than_the_training_photos_is_too_small(pets_run):
    predictor = pawnet.load(pets_run)
    assert 32 < predictor.spec.min_side <= 128
    small = predictor.predict(_shrunk(real_photos("cat", 5, "test")))
    assert {(r.label, r.reason) for r in small} == {("unsure", "too small (32x32)")}
    cifar = predictor.predict(_non_pets(5))  # 32-px vehicles: too small, not neither
    assert {r.reason for r in cifar} == {"too small (32x32)"}


@pytest.mark.integration
def test_a_model_trained_on_small_photos_answers_small_photos(tmp_path):
    """Four classes of 32-px photos (CIFAR-10 vehicles): every size the model saw is judged,
    and the default answers most of the held-out photos, more accurately than all of them."""
    photos = tmp_path / "vehicles"
    for kind in ("airplane", "automobile", "ship", "truck"):
        (photos / kind).mkdir(parents=True)
        for path in sorted((OOD / kind).glob("*.jpg"))[:60]:
            (photos / kind / path.name).write_bytes(path.read_bytes())
    run = pawnet.train(photos, out=str(tmp_path / "run"), image_size=96, val_fraction=0.3,
                       test_fraction=0.2)
    predictor = pawnet.load(run)
    assert predictor.spec.min_side <= 32
    report = pawnet.evaluate(run)
    verdicts = report.verdicts
    assert verdicts["reasons"]["too small"] == 0
    assert verdicts["answered"] >= 0.75 * report.n, verdicts
    assert verdicts["answered_accuracy"] >= report.accuracy, verdicts


def test_the_verdict_travels_to_evaluate_the_cli_and_the_bundle(pets_run, tmp_path):
    from helpers import invoke

    spec = json.loads((pets_run / "bundle" / "bundle.json").read_text())
    metrics = json.loads((pets_run / "bundle" / "provenance.json").read_text())["metrics"]
    assert spec["format_version"] == 4 and spec["ood_threshold"] == metrics["ood_threshold"]
    assert spec["min_side"] == metrics["min_side"] > 0 and 0 <= spec["min_confidence"] <= 1
    report = pawnet.evaluate(pets_run, CVTRICKS / "test")
    report.write(tmp_path / "eval")
    verdicts = report.verdicts
    assert verdicts["answered"] + verdicts["unsure"] + verdicts["neither"] == report.n
    assert sum(verdicts["reasons"].values()) == verdicts["unsure"] + verdicts["neither"]
    assert verdicts["neither"] <= 0.02 * report.n
    assert "answered" in (tmp_path / "eval" / "report.md").read_text()
    assert "no class likely enough" in (tmp_path / "eval" / "report.html").read_text()
    photos = [str(OOD_PHOTOS / "000000000036.jpg"), str(OOD / "truck" / "0000.jpg")]
    rows = json.loads(invoke("predict", pets_run, *photos, "--json").stdout)
    assert [row["label"] for row in rows] == ["neither", "unsure"]
    assert rows[0]["reason"].startswith("unlike the training photos")
    assert rows[1]["reason"] == "too small (32x32)"
    table = invoke("predict", pets_run, *photos).stdout
    assert "too small (32x32)" in table and "unlike the training photos" in table
    csv_rows = invoke("predict", pets_run, *photos, "--format", "csv").stdout.splitlines()
    assert csv_rows[0].split(",")[-2:] == ["reason", "error"]
    assert "too small (32x32)" in csv_rows[2]
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
