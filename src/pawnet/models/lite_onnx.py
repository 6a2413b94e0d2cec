"""The frozen EfficientNet-Lite feature extractor as an ONNX graph, written straight from the
ImageNet checkpoint with NumPy: no TensorFlow, no Keras model, no tf2onnx.

It is the network `efficientnet_lite.build_backbone(..., folded=True)` builds, cut at its
pooled features: the same blocks (`efficientnet_lite.blocks`), each batch norm folded into
the convolution before it, TensorFlow's "same" padding written out per convolution, raw
0-255 RGB pixels (NHWC, like the Keras model) in. Several variants side by side give their
features concatenated, like `pretrained._joined`. Outputs agree with the Keras model to about
1e-5 (tests/models/test_lite_onnx.py); training extracts features with it, and the bundle
still saves the Keras model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from pawnet.models.efficientnet_lite import (
    BN_EPSILON,
    RESCALE_OFFSET,
    RESCALE_SCALE,
    blocks,
    get_variant,
)
from pawnet.models.efficientnet_lite_weights import _checked_checkpoint
from pawnet.models.torch_checkpoint import load_state_dict
from pawnet.trust.ood import NEIGHBOURS

OPSET = 17
CONVERSION = 1  # bump when the graph changes, so cached files and features are remade


@functools.lru_cache(maxsize=3)
def checkpoint_state(variant: str) -> dict[str, np.ndarray]:
    """The variant's ImageNet state dict, read from its pip package once per process."""
    return load_state_dict(_checked_checkpoint(variant)[0])


def graph_key(variants: Sequence[str], image_size: int) -> str:
    """Names the exact weights, input size and conversion: keys the cached ONNX file and
    the cached features of these backbones."""
    shas = "-".join(_checked_checkpoint(v)[1][:12] for v in variants)
    return f"{'+'.join(variants)}-{image_size}px-g{CONVERSION}-{shas}"


class _Graph:
    """Nodes and initializers of one ONNX graph, named as they are added."""

    def __init__(self):
        self.nodes: list = []
        self.weights: list = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], name: str, *, extra_outputs: int = 0,
           **attrs) -> str:
        """Add a node; its first output is `name` (others, unused, `name:1`, ...)."""
        from onnx import helper

        outputs = [name] + [f"{name}:{i}" for i in range(1, extra_outputs + 1)]
        self.nodes.append(helper.make_node(kind, inputs, outputs, name=name, **attrs))
        return name


def _same_pads(side: int, kernel: int, stride: int) -> tuple[int, list[int]]:
    """TensorFlow's "same" padding as explicit ONNX pads: (output side, pads)."""
    out = math.ceil(side / stride)
    total = max((out - 1) * stride + kernel - side, 0)
    before = total // 2
    return out, [before, before, total - before, total - before]


def _folded(state: dict, conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """A torch conv's kernel (OIHW, as ONNX wants it) with the batch norm after it folded in."""
    kernel = state[f"{conv}.weight"].astype(np.float32)
    scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + BN_EPSILON)
    bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    return (kernel * scale[:, None, None, None]).astype(np.float32), bias.astype(np.float32)


def _backbone(g: _Graph, x: str, variant: str, side: int, state: dict) -> str:
    """One variant's layers on NCHW input `x`; returns its pooled (N, 1280) features."""
    p = f"{variant}/"

    def conv(x: str, side: int, name: str, torch_conv: str, torch_bn: str, *, kernel: int = 1,
             stride: int = 1, groups: int = 1, relu: bool = True) -> tuple[str, int]:
        w, b = _folded(state, torch_conv, torch_bn)
        out, pads = _same_pads(side, kernel, stride)
        y = g.op("Conv", [x, g.const(p + name + "/w", w), g.const(p + name + "/b", b)],
                 p + name, kernel_shape=[kernel, kernel], strides=[stride, stride],
                 pads=pads, group=groups)
        if relu:
            y = g.op("Clip", [y, "zero", "six"], p + name + "/relu6")
        return y, out

    x, side = conv(x, side, "stem", "_conv_stem", "_bn0", kernel=3, stride=2)
    for i, block in enumerate(blocks(variant)):
        t, shortcut, y = f"_blocks.{i}.", x, x
        if block.expand != 1:
            y, _ = conv(y, side, block.prefix + "expand", t + "_expand_conv", t + "_bn0")
        channels = block.in_filters * block.expand
        y, side = conv(y, side, block.prefix + "dw", t + "_depthwise_conv", t + "_bn1",
                       kernel=block.kernel, stride=block.stride, groups=channels)
        y, _ = conv(y, side, block.prefix + "project", t + "_project_conv", t + "_bn2",
                    relu=False)
        x = g.op("Add", [y, shortcut], p + block.prefix + "add") if block.residual else y
    x, _ = conv(x, side, "head", "_conv_head", "_bn1")
    pooled = g.op("GlobalAveragePool", [x], p + "pool")
    return g.op("Flatten", [pooled], p + "features", axis=1)


def build(variants: Sequence[str], image_size: int | None = None) -> bytes:
    """The serialized ONNX model: pixels (N, s, s, 3) float32 0-255 -> features (N, 1280 per
    variant), from the checkpoints in the variants' pip packages.

    Raises:
        ConfigError: an unknown variant.
        WeightsError, CheckpointError: a checkpoint missing or damaged.
    """
    side = image_size or get_variant(variants[-1]).image_size
    g = _Graph()
    features = g.op("Identity", [_features(g, variants, side)], "features")
    return _serialized(g, variants, side, features, 1280 * len(variants))


def build_classifier(variants: Sequence[str], image_size: int, kernel: np.ndarray,
                     bias: np.ndarray, ood=None) -> bytes:
    """The whole frozen transfer model (`keras_file.FrozenTransfer`) as ONNX: pixels ->
    class probabilities (sigmoid or softmax), then the OOD score column when `ood` (a
    `trust.ood.OodScore`) is given, computed as `models.ood.NeighbourDistance` does."""
    g = _Graph()
    features = _features(g, variants, image_size)
    logits = g.op("Add", [g.op("MatMul", [features, g.const("kernel", kernel)], "matmul"),
                          g.const("bias", bias)], "logits")
    out = g.op("Sigmoid" if kernel.shape[1] == 1 else "Softmax", [logits], "classes",
               **({} if kernel.shape[1] == 1 else {"axis": -1}))
    width = kernel.shape[1]
    if ood is not None:
        out = g.op("Concat", [out, _ood_score(g, features, ood)], "with_ood", axis=1)
        width += 1
    out = g.op("Identity", [out], "outputs")
    return _serialized(g, variants, image_size, out, width)


def _ood_score(g: _Graph, features: str, ood) -> str:
    """1 - cosine similarity of the centred features to the k-th nearest bank row."""
    centred = g.op("Sub", [features, g.const("ood/mean", ood.mean.astype(np.float32))],
                   "ood/centred")
    squares = g.op("ReduceSum", [g.op("Mul", [centred, centred], "ood/sq"),
                                 g.const("ood/axis", np.array([1], np.int64))], "ood/sum",
                   keepdims=1)
    norms = g.op("Sqrt", [g.op("Max", [squares, g.const("ood/eps", np.array(1e-24, np.float32))],
                               "ood/max")], "ood/norm")
    similarity = g.op("MatMul", [g.op("Div", [centred, norms], "ood/unit"),
                                 g.const("ood/bank", np.ascontiguousarray(ood.bank.T))],
                      "ood/similarity")
    k = min(NEIGHBOURS, len(ood.bank))
    nearest = g.op("TopK", [similarity, g.const("ood/k", np.array([k], np.int64))],
                   "ood/nearest", extra_outputs=1)  # and the indices
    kth = g.op("Slice", [nearest, g.const("ood/start", np.array([k - 1], np.int64)),
                         g.const("ood/stop", np.array([k], np.int64)),
                         g.const("ood/axes", np.array([1], np.int64))], "ood/kth")
    return g.op("Sub", [g.const("ood/one", np.array(1.0, np.float32)), kth], "ood/score")


def _features(g: _Graph, variants: Sequence[str], side: int) -> str:
    """The pooled features of every variant, concatenated, on the graph's NHWC pixels."""
    g.const("zero", np.array(0.0, np.float32))
    g.const("six", np.array(6.0, np.float32))
    nchw = g.op("Transpose", ["pixels"], "nchw", perm=[0, 3, 1, 2])
    scaled = g.op("Mul", [nchw, g.const("scale", np.array(RESCALE_SCALE, np.float32))],
                  "scaled")
    x = g.op("Add", [scaled, g.const("offset", np.array(RESCALE_OFFSET, np.float32))],
             "rescaled")
    parts = [_backbone(g, x, v, side, checkpoint_state(v)) for v in variants]
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, "joined", axis=1)


def _serialized(g: _Graph, variants: Sequence[str], side: int, output: str,
                width: int) -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        g.nodes, "efficientnet_" + "_".join(variants),
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", side, side, 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", width])], g.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pawnet")
    model.ir_version = 8
    return model.SerializeToString()
