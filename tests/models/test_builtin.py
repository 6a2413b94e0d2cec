import numpy as np
import pytest
from helpers import CVTRICKS, real_photos

import pawnet
from pawnet.models.builtin import CatDogVerdict


def test_verdict_compares_class_means_and_gates_on_mass():
    probs = np.zeros((4, 1000), "float32")
    probs[0, 281], probs[0, 500] = 0.9, 0.1      # a cat
    probs[1, 151], probs[1, 281] = 0.9, 0.01     # a dog, a little cat mass
    probs[2, 500] = 1.0                           # neither
    probs[3, 151:160], probs[3, 281] = 0.05, 0.3  # a cat: 0.3 in one cat class beats
                                                  # 0.45 spread over 9 of 118 dog classes
    out = np.asarray(CatDogVerdict()(probs))
    assert out.argmax(axis=1).tolist() == [0, 1, 2, 0]
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    # P(cat) = mean cat probability / (mean cat + mean dog), gated by the mass
    assert out[1, 0] == pytest.approx((0.01 / 5) / (0.01 / 5 + 0.9 / 118), abs=1e-3)


@pytest.mark.integration
def test_builtin_works_by_name_without_training():
    predictor = pawnet.load("imagenet-catdog")
    assert predictor.classes == ["cat", "dog", "neither"]
    cats = predictor.predict(real_photos("cat", 12, "test"))
    dogs = predictor.predict(real_photos("dog", 12, "test"))
    assert sum(r.label == "cat" for r in cats) >= 11
    assert sum(r.label == "dog" for r in dogs) >= 11


@pytest.mark.integration
def test_non_photos_are_neither(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, pixels in enumerate([np.full((224, 224, 3), 128, np.uint8),
                                rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                                np.tile(np.arange(224, dtype=np.uint8), (224, 1))[..., None]
                                .repeat(3, 2)]):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    results = pawnet.load("imagenet-catdog").predict(paths)
    assert [r.label for r in results].count("neither") >= 2


@pytest.mark.integration
def test_evaluate_builtin_on_a_folder(tmp_path):
    report = pawnet.evaluate("imagenet-catdog", CVTRICKS)
    assert report.write(tmp_path / "report") == tmp_path / "report"
    assert report.classes == ["cat", "dog", "neither"]
    assert report.n == 400
    assert report.accuracy >= 0.97  # measured 0.990 (neither counted wrong)
    assert np.array(report.confusion_matrix)[:, 2].sum() <= 4  # few called neither
    assert "roc_auc" not in report.to_json()  # three classes
