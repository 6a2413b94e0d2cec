import numpy as np
import pytest

from pawnet.errors import ConfigError
from pawnet.models.registry import get_model_spec, list_models

SPECS = list_models()


def test_registry_has_every_tutorial_architecture_and_a_default():
    names = {s.name for s in SPECS}
    assert {"tutorial-a-cnn", "tutorial-b-vgg16", "tutorial-c-3conv", "tutorial-d-conv16",
            "tutorial-d-conv32", "tutorial-d-2conv", "pawnet-cnn"} <= names
    assert all(s.description.strip() for s in SPECS)


# Transfer models share one head builder, so three classes are tried once, on Lite0. They
# build full-size pretrained backbones with their ImageNet weights: integration tests.
CASES = [pytest.param(spec, n, id=f"{spec.name}-{n}",
                      marks=[pytest.mark.integration] if spec.pretrained else [])
         for spec in SPECS for n in (2, 3)
         if n == 2 or not spec.pretrained or spec.name == "efficientnet-lite0"]


@pytest.mark.parametrize(("spec", "num_classes"), CASES)
def test_every_model_builds_and_trains_a_step(spec, num_classes):
    model = spec.build(num_classes, image_size=32)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    binary = model.outputs[0].shape[-1] == 1
    # plain SGD: a step in graph mode like Adam's, at a quarter of the tracing time (training
    # with pawnet's own optimizer is what the integration tests do)
    if binary:
        y = np.array([[0.0], [1.0], [1.0], [1.0]], dtype="float32")  # unbalanced: nonzero grad
        model.compile("sgd", "binary_crossentropy")
    else:
        y = np.eye(num_classes, dtype="float32")[[0, 1, 0, 1]]
        model.compile("sgd", "categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    out = model.predict_on_batch(x)
    assert out.shape == (4, 1 if binary else num_classes)
    softmax_always = spec.name.startswith(("tutorial-c", "tutorial-d"))  # as in tutorials
    assert binary == (num_classes == 2 and not softmax_always)
    if not binary:
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_model_suggests_names():
    with pytest.raises(ConfigError, match="Did you mean: tutorial-a-cnn"):
        get_model_spec("tutorial-a-cn")
