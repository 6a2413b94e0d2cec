import importlib

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

