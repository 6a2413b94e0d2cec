"""The EfficientNet-Lite LiteRT model written from the checkpoints equals the Keras model."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import real_photos

from pawnet.data.images import load_pixels
from pawnet.models import lite_tflite


@pytest.mark.integration
@pytest.mark.parametrize(("variants", "size"), [(("lite0",), 224), (("lite0", "lite2"), 96)],
                         ids=["lite0", "joined"])
def test_model_equals_the_keras_backbone_on_real_photos(variants, size, tmp_path):
    from pawnet.inference.runtimes import LiteRTRuntime
    from pawnet.models.pretrained import load_backbone
    from pawnet.models.registry import get_model_spec

    path = tmp_path / "backbone.tflite"
    path.write_bytes(lite_tflite.build(variants, size))
    paths = real_photos("cat", 3) + real_photos("dog", 2)  # 5: the runtime pads to 8
    pixels = np.stack([load_pixels(p, size) for p in paths]).astype(np.float32)
    got = LiteRTRuntime(path, num_threads=1)(pixels)
    keras_model = load_backbone(get_model_spec("efficientnet-" + "+".join(variants)), size)
    want = np.asarray(keras_model.predict(pixels, verbose=0))
    assert got.shape == (5, 1280 * len(variants))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_weights_are_aligned_for_xnnpack(tmp_path):
    from ai_edge_litert import schema_py_generated as schema

    data = lite_tflite.build(("lite0",), 32)
    model = schema.Model.GetRootAs(data, 0)
    for i in range(1, model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            offset = buffer._tab.Vector(buffer._tab.Offset(4))
            assert offset % lite_tflite._AlignedBuffer.ALIGNMENT == 0
