"""The EfficientNet-Lite ONNX graph written from the checkpoints equals the Keras model."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import real_photos

from pawnet.data.images import load_pixels
from pawnet.models import lite_onnx


def _run(model: bytes, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": pixels.astype(np.float32)})[0]


def test_same_padding_matches_tensorflow():
    # TensorFlow pads the end more when the total is odd: 224 -> 112 with a 3x3 stride 2
    assert lite_onnx._same_pads(224, 3, 2) == (112, [0, 0, 1, 1])
    assert lite_onnx._same_pads(7, 5, 2) == (4, [2, 2, 2, 2])
    assert lite_onnx._same_pads(56, 5, 1) == (56, [2, 2, 2, 2])


def test_key_names_variants_size_and_weights():
    key = lite_onnx.graph_key(("lite0",), 224)
    assert key.startswith("lite0-224px-g")
    assert key != lite_onnx.graph_key(("lite0",), 96)
    assert key != lite_onnx.graph_key(("lite1",), 224)


@pytest.mark.integration
@pytest.mark.parametrize(("variants", "size"), [(("lite0",), 224), (("lite0", "lite2"), 96)],
                         ids=["lite0", "joined"])
def test_graph_equals_the_keras_backbone_on_real_photos(variants, size):
    from pawnet.models.pretrained import load_backbone
    from pawnet.models.registry import get_model_spec

    paths = real_photos("cat", 3) + real_photos("dog", 3)
    pixels = np.stack([load_pixels(p, size) for p in paths])
    got = _run(lite_onnx.build(variants, size), pixels)
    keras_model = load_backbone(get_model_spec("efficientnet-" + "+".join(variants)), size)
    want = np.asarray(keras_model.predict(pixels.astype(np.float32), verbose=0))
    assert got.shape == (6, 1280 * len(variants))
    np.testing.assert_allclose(got, want, atol=1e-4)
