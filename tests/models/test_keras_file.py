"""The `.keras` file written without TensorFlow is the model Keras builds: same layers, same
weights, same outputs on real photos."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
from helpers import real_photos

from pawnet.data.images import load_pixels
from pawnet.models.keras_file import FrozenTransfer, _snake
from pawnet.trust.ood import OodScore


def _frozen(variants: tuple[str, ...], size: int, units: int, ood: bool) -> FrozenTransfer:
    rng = np.random.default_rng(0)
    dim = 1280 * len(variants)
    bank = rng.normal(size=(40, dim)).astype(np.float32)
    score = OodScore(rng.normal(size=dim).astype(np.float32),
                     bank / np.linalg.norm(bank, axis=1, keepdims=True), 0.5)
    return FrozenTransfer("efficientnet-" + "+".join(variants), variants, size,
                          (rng.normal(size=(dim, units)) * 0.05).astype(np.float32),
                          rng.normal(size=units).astype(np.float32),
                          score if ood else None)


def test_weights_are_named_like_keras_names_them():
    assert _snake("Conv2D") == "conv2d"
    assert _snake("DepthwiseConv2D") == "depthwise_conv2d"
    assert _snake("GlobalAveragePooling2D") == "global_average_pooling2d"
    assert _snake("NeighbourDistance") == "neighbour_distance"
    assert _snake("ReLU") == "re_lu"
    assert _snake("InputLayer") == "input_layer"


def test_writing_needs_no_tensorflow(tmp_path):
    code = ("import sys; import numpy as np; "
            "from pawnet.models.keras_file import FrozenTransfer; "
            "FrozenTransfer('efficientnet-lite0', ('lite0',), 64, np.zeros((1280, 1), 'f4'), "
            f"np.zeros(1, 'f4')).save(r'{tmp_path / 'm.keras'}'); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json",
                                              "model.weights.h5"]


@pytest.mark.integration
@pytest.mark.parametrize(("variants", "size", "units", "ood"), [
    (("lite0",), 224, 1, True), (("lite1", "lite2"), 96, 3, True), (("lite0",), 64, 3, False),
], ids=["lite0-sigmoid-ood", "joined-softmax-ood", "no-ood"])
def test_keras_loads_the_model_keras_builds(tmp_path, variants, size, units, ood):
    import keras

    from pawnet.models.ood import with_ood
    from pawnet.models.pretrained import build_head, compose, load_backbone
    from pawnet.models.registry import get_model_spec

    frozen = _frozen(variants, size, units, ood)
    frozen.save(tmp_path / "model.keras")
    got = keras.saving.load_model(tmp_path / "model.keras", compile=False)

    backbone = load_backbone(get_model_spec(frozen.model_name), size)
    head = build_head(2 if units == 1 else units, backbone)
    head.get_layer("predictions").set_weights([frozen.kernel, frozen.bias])
    want = compose(backbone, head, frozen.model_name)
    want = with_ood(want, frozen.ood) if ood else want

    assert got.name == want.name
    assert [layer.name for layer in got.layers] == [layer.name for layer in want.layers]
    assert len(got.weights) == len(want.weights)
    paths = real_photos("cat", 2) + real_photos("dog", 2)
    pixels = np.stack([load_pixels(p, size) for p in paths]).astype(np.float32)
    np.testing.assert_allclose(got.predict(pixels, verbose=0), want.predict(pixels, verbose=0),
                               atol=1e-5)
    # its ONNX twin, which `pawnet train` puts in the runtime cache, computes the same
    import onnxruntime as ort

    twin = ort.InferenceSession(frozen.onnx(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(twin.run(None, {"pixels": pixels})[0],
                               want.predict(pixels, verbose=0), atol=1e-5)
