import importlib

import keras
import numpy as np
import pytest

from pawnet.errors import ConfigError
from pawnet.models import efficientnet_lite as el
from pawnet.models.efficientnet_lite_weights import checkpoint_path
from pawnet.models.torch_checkpoint import load_state_dict


def _need_checkpoint(variant: str) -> None:
    importlib.import_module(el.VARIANTS[variant].module)


def test_image_sizes_and_class_ranges():
    assert [el.image_size(v) for v in ("lite0", "lite1", "lite2")] == [224, 240, 260]
    assert list(el.IMAGENET_CAT_CLASSES) == [281, 282, 283, 284, 285]
    assert el.IMAGENET_DOG_CLASSES[0] == 151 and el.IMAGENET_DOG_CLASSES[-1] == 268
    with pytest.raises(ConfigError, match="lite3"):
        el.image_size("lite3")


ARCHITECTURES = [("lite0", 16, 320), ("lite1", 21, 320), ("lite2", 21, 352)]


@pytest.mark.parametrize(("variant", "blocks", "last_width"), ARCHITECTURES)
def test_architecture_matches_checkpoint(variant, blocks, last_width):
    _need_checkpoint(variant)
    model = el.build_backbone(variant, include_top=True)
    state = load_state_dict(checkpoint_path(variant))
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    assert n_blocks == blocks
    assert model.get_layer("head_conv").input.shape[-1] == last_width
    n_params = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert model.count_params() == n_params
    assert model.output.shape == (None, 1000)
    assert el.build_backbone(variant).output.shape == (None, 1280)


def test_folding_batch_norm_keeps_the_outputs():
    keras.utils.set_random_seed(0)
    model = el.build_backbone("lite0", include_top=True, image_size=64)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # batch norm with statistics far from the identity
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2, var.shape)])
    folded = el.fold_batch_norm(model, "lite0")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    pixels = rng.integers(0, 256, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(folded.predict(pixels, verbose=0),
                               model.predict(pixels, verbose=0), rtol=1e-4, atol=1e-4)
    features = el.fold_batch_norm(el.features(model), "lite0")
    assert features.output.shape == (None, 1280)
