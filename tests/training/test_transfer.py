import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_runtimes_agree, copy_photos, real_photos

import pawnet
from pawnet import features
from pawnet.data.images import load_pixels
from pawnet.data.splits import read_manifest
from pawnet.training import transfer

# the settings of the session's `transfer_run` (conftest.py)
SMALL = {"model": "efficientnet-lite0", "image_size": 64, "batch_size": 8, "epochs": 5}


@pytest.fixture
def photos(tmp_path):
    return copy_photos(tmp_path / "photos", 10)


@pytest.mark.integration
def test_transfer_run_saves_one_model_from_pixels_to_probabilities(transfer_run):
    run = transfer_run
    predictor = pawnet.load(run)
    assert predictor.spec.model_name == "efficientnet-lite0"
    assert predictor.model.input.shape[1:] == (64, 64, 3)
    names = [layer.name for layer in predictor.model.layers]
    assert any("efficientnet" in n for n in names) and "head" in names
    provenance = json.loads((run / "bundle" / "provenance.json").read_text())
    # the saved model reproduces, from raw pixels, the head's accuracy on cached features
    val = [p for p in read_manifest(run / "manifest.csv") if p.split == "val"]
    results = predictor.predict([p.path for p in val])
    accuracy = np.mean([r.top_class == p.label for r, p in zip(results, val, strict=True)])
    assert provenance["metrics"]["val_accuracy"] == pytest.approx(accuracy)
    assert_runtimes_agree(run, [p.path for p in val])


@pytest.mark.integration
def test_features_on_the_fast_runtime_match_keras(photos):
    from pawnet.inference.runtimes import KerasRuntime
    from pawnet.models.pretrained import load_backbone
    from pawnet.models.registry import get_model_spec

    backbone = load_backbone(get_model_spec("efficientnet-lite0"), 64)
    paths = [str(p) for p in real_photos("cat", 5) + real_photos("dog", 5)]
    runtime = features.backbone_runtime(backbone, "test-lite0-64")
    assert runtime.name == "onnx"
    fast = features.extract_features(runtime, paths, 64, 4)
    slow = features.extract_features(KerasRuntime(backbone), paths, 64, 4)
    assert fast.shape == (10, 1280)
    np.testing.assert_allclose(fast, slow, atol=1e-4)


@pytest.mark.integration
def test_features_are_computed_once_per_photo(photos, tmp_path, monkeypatch, own_features):
    pawnet.train(photos, out=str(tmp_path / "a"), **SMALL)
    calls = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features",
                        lambda *a, **k: calls.append((len(a[1]), k["desc"])) or real(*a, **k))
    pawnet.train(photos, out=str(tmp_path / "b"), **SMALL)
    assert calls == []
    before = {p.path for p in read_manifest(tmp_path / "b" / "manifest.csv")}
    copy_photos(photos, 2, offset=10)
    run = pawnet.train(photos, out=str(tmp_path / "c"), **SMALL)
    new = [p for p in read_manifest(run / "manifest.csv") if p.path not in before]
    # only the new photos in train or val, and the shrunk copies of those in val
    assert sum(n for n, desc in calls if "shrunk" not in desc) == sum(
        p.split in ("train", "val") for p in new) > 0
    new_val = sum(p.split == "val" for p in new)
    assert all(n == new_val for n, desc in calls if "shrunk" in desc)


@pytest.mark.integration
def test_a_frozen_lite_run_never_starts_tensorflow(photos, tmp_path):
    code = ("import sys, pawnet; "
            f"run = pawnet.train(r'{photos}', out=r'{tmp_path / 'run'}', **{SMALL!r}); "
            "print('tensorflow' in sys.modules, (run / 'bundle' / 'model.keras').is_file())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split()[-2:] == ["False", "True"]
    assert pawnet.load(tmp_path / "run").predict([str(p) for p in photos.rglob("*.jpg")][:2])


@pytest.mark.integration
def test_a_run_repeats_whatever_the_cache_holds(photos, tmp_path, fresh_cache):
    cold = pawnet.train(photos, out=str(tmp_path / "cold"), **SMALL)  # converts, extracts
    warm = pawnet.train(photos, out=str(tmp_path / "warm"), **SMALL)  # all from the cache
    history = [(run / "history.csv").read_text().splitlines() for run in (cold, warm)]
    assert len(history[0]) > 1
    assert history[0] == history[1]


@pytest.mark.integration
def test_augmented_feature_views_add_rows(photos, tmp_path, monkeypatch):
    calls = []
    real = transfer.extract_features
    monkeypatch.setattr(transfer, "extract_features",
                        lambda *a, **k: calls.append(k.get("augment")) or real(*a, **k))
    pawnet.train(photos, out=str(tmp_path / "run"), feature_views=2, **SMALL)
    assert sum(a is not None for a in calls) == 2


@pytest.mark.integration
def test_fine_tuning_changes_top_block_but_not_batch_norm(photos, tmp_path):
    import keras

    run = pawnet.train(photos, out=str(tmp_path / "run"), fine_tune=1, fine_tune_epochs=1,
                       **SMALL)
    from pawnet.models.efficientnet_lite_weights import load_pretrained

    original = load_pretrained("lite0", image_size=64)
    tuned = keras.models.load_model(run / "bundle" / "model.keras")
    backbone = next(layer for layer in tuned.layers if isinstance(layer, keras.Model)
                    and layer.name.startswith("efficientnet"))
    changed = {layer.name for layer in backbone.layers if layer.weights and not all(
        np.array_equal(a, b) for a, b in zip(layer.get_weights(),
                                             original.get_layer(layer.name).get_weights(),
                                             strict=True))}
    assert "head_conv" in changed and "block15_project_conv" in changed
    assert not any(name.endswith("_bn") for name in changed)
    assert "block0_dwconv" not in changed
    history = (run / "history.csv").read_text().strip().splitlines()
    assert len(history) >= 3  # head epochs, then the fine-tuning epoch


@pytest.mark.integration
def test_resume_of_a_transfer_run_reuses_cached_features(transfer_run, tmp_path, monkeypatch):
    run = shutil.copytree(transfer_run, tmp_path / "run")
    calls = []
    monkeypatch.setattr(transfer, "extract_features", lambda *a, **k: calls.append(1))
    pawnet.train(resume=str(run), epochs=SMALL["epochs"] + 1)  # a finished run, trained on
    assert calls == []
    assert (run / "bundle" / "model.keras").exists()
    assert (run / "previous" / "1" / "bundle" / "model.keras").exists()


@pytest.mark.integration
def test_three_classes_with_transfer(tmp_path):
    root = copy_photos(tmp_path / "p", 6)
    copy_photos(tmp_path / "extra", 6, classes=("cat",), split="test")
    (tmp_path / "extra" / "cat").rename(root / "kitten")
    run = pawnet.train(root, out=str(tmp_path / "run"), **SMALL)
    predictor = pawnet.load(run)
    assert predictor.classes == ["cat", "dog", "kitten"]
    [result] = predictor.predict(real_photos("dog", 1, "test"))
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_unfreeze_top_blocks_keeps_batch_norm_frozen():
    from pawnet.models.efficientnet_lite_weights import load_pretrained

    backbone = load_pretrained("lite0", image_size=32)
    opened = transfer.unfreeze_top_blocks(backbone, 2)
    assert {n.split("_")[0] for n in opened} == {"block14", "block15", "head"}
    assert not any(n.endswith("bn") for n in opened)
    pixels = load_pixels(real_photos("cat", 1)[0], 32)[None].astype("float32")
    a = backbone(pixels, training=True)
    b = backbone(pixels, training=False)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)  # BN in inference


@pytest.mark.integration
def test_two_backbones_side_by_side_train_one_head_on_both(photos, tmp_path):
    run = pawnet.train(photos, out=str(tmp_path / "run"),  # 32 px: its conversions are shorter
                       **{**SMALL, "model": "efficientnet-lite0+lite2", "image_size": 32})
    predictor = pawnet.load(run)
    backbone = next(layer for layer in predictor.model.layers if layer.name != "head"
                    and hasattr(layer, "layers"))
    assert {layer.name for layer in backbone.layers} >= {"efficientnet_lite0",
                                                         "efficientnet_lite2"}
    assert predictor.model.get_layer("head").input.shape[-1] == 2 * 1280
    provenance = json.loads((run / "bundle" / "provenance.json").read_text())
    val = [p for p in read_manifest(run / "manifest.csv") if p.split == "val"]
    results = predictor.predict([p.path for p in val])
    accuracy = np.mean([r.top_class == p.label for r, p in zip(results, val, strict=True)])
    assert provenance["metrics"]["val_accuracy"] == pytest.approx(accuracy)
    assert_runtimes_agree(run, [p.path for p in val])


def test_two_backbones_cannot_be_fine_tuned(photos, tmp_path):
    with pytest.raises(pawnet.ConfigError, match=r"cannot be fine-tuned.*--fine-tune 0"):
        pawnet.train(photos, out=str(tmp_path / "run"),
                     **{**SMALL, "model": "efficientnet-lite0+lite2"}, fine_tune=1)
