"""The frozen Lite backbone: written once per cache, and a damaged cache remade; the feature
store."""

from __future__ import annotations

import json

import numpy as np

from pawnet import features
from pawnet.models.registry import get_model_spec
from pawnet.storage import cache_dir


def test_the_backbone_is_written_once_and_a_damaged_record_remade(fresh_cache, monkeypatch):
    spec = get_model_spec("efficientnet-lite0")
    first = features.frozen_backbone(spec, 32)
    record = next((cache_dir() / "runtimes").glob("backbone-*.json"))
    assert first.runtime.name == "onnx"
    assert first.runtime.photos_per_call == json.loads(record.read_text())["photos_per_call"]
    assert first.dim == 1280 and first.key.startswith("lite0-32px-")

    built = []
    real = features.OnnxRuntime.fastest_call_size
    monkeypatch.setattr(features.OnnxRuntime, "fastest_call_size",
                        lambda *a: built.append(1) or real(*a))
    again = features.frozen_backbone(spec, 32)
    assert built == [] and again.key == first.key  # from the cache
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(again.runtime(images), first.runtime(images))

    record.write_text("{not json")
    features.frozen_backbone(spec, 32)
    assert built and "photos_per_call" in json.loads(record.read_text())


def test_the_store_round_trips_reads_the_earlier_layout_and_ignores_damage(fresh_cache):
    store = features.FeatureStore("key")
    rows = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    store.features = {f"sha{i}": row for i, row in enumerate(rows)}
    store.save()
    again = features.FeatureStore("key")
    assert list(again.features) == ["sha0", "sha1", "sha2"]
    np.testing.assert_array_equal(np.stack(list(again.features.values())), rows)

    np.savez(store.path, sha9=rows[0])  # one array per photo, as earlier versions wrote
    np.testing.assert_array_equal(features.FeatureStore("key").features["sha9"], rows[0])
    store.path.write_bytes(b"PK\x03\x04 not a zip")
    assert features.FeatureStore("key").features == {}
