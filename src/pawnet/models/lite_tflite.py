"""The frozen EfficientNet-Lite feature extractor as a LiteRT (TFLite) model, written straight
from the ImageNet checkpoint with the LiteRT package's own flatbuffer schema: no TensorFlow,
no converter.

The same network as `lite_onnx` (and `efficientnet_lite.build_backbone(..., folded=True)`
cut at its pooled features): each convolution with its batch norm folded in and ReLU6 fused,
TensorFlow's "same" padding (TFLite's own), raw 0-255 RGB pixels in (NHWC), features out.
LiteRT runs it on XNNPACK, which is about 2.5x faster than ONNX Runtime on these depthwise
networks on a CPU (docs/decisions.md). Outputs agree with the Keras model to about 1e-5
(tests/models/test_lite_tflite.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pawnet.models.efficientnet_lite import (
    HEAD_FILTERS,
    RESCALE_OFFSET,
    RESCALE_SCALE,
    STEM_FILTERS,
    blocks,
    get_variant,
)
from pawnet.models.lite_onnx import _folded, checkpoint_state


class _AlignedBuffer:
    """A constant's bytes, 16-byte aligned in the file as the TFLite converter writes them:
    XNNPACK leaves an operator whose weights are not aligned to the slow reference kernels."""

    ALIGNMENT = 16

    def __init__(self, data: bytes):
        self.data = data

    def Pack(self, builder) -> int:  # the name the schema's object API calls
        from ai_edge_litert import schema_py_generated as s

        builder.StartVector(1, len(self.data), self.ALIGNMENT)
        builder.head -= len(self.data)
        builder.Bytes[builder.head:builder.head + len(self.data)] = self.data
        vector = builder.EndVector(len(self.data))
        s.BufferStart(builder)
        s.BufferAddData(builder, vector)
        return s.BufferEnd(builder)


class _Graph:
    """Tensors, buffers and operators of one TFLite subgraph, in the schema's object API."""

    def __init__(self, side: int):
        from ai_edge_litert import schema_py_generated as schema

        self.s = schema
        self.side = side
        self.tensors: list = []
        self.buffers = [schema.BufferT()]  # buffer 0: no data
        self.operators: list = []
        self.codes: dict[int, int] = {}

    def tensor(self, name: str, shape: list[int], data: np.ndarray | None = None,
               dtype: str = "float32") -> int:
        s = self.s
        t = s.TensorT()
        t.name, t.shape, t.hasRank = name, list(shape), True  # XNNPACK skips unranked ones
        t.type = s.TensorType.FLOAT32 if dtype == "float32" else s.TensorType.INT32
        if data is None:
            t.buffer = 0
            t.shapeSignature = [-1, *shape[1:]]  # a batch of any size
        else:
            self.buffers.append(_AlignedBuffer(np.ascontiguousarray(data, dtype).tobytes()))
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], output: int, options_type: int = 0,
           options=None) -> int:
        s = self.s
        if code not in self.codes:
            self.codes[code] = len(self.codes)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[code], inputs, [output]
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)
        return output

    def conv(self, x: int, side: int, name: str, w: np.ndarray, b: np.ndarray, *, stride: int,
             depthwise: bool, relu6: bool) -> tuple[int, int]:
        """A convolution (torch OIHW weights, or (C, 1, k, k) depthwise) with its bias, "same"
        padding and ReLU6 fused when asked; (output tensor, output side)."""
        s = self.s
        out_side = -(-side // stride)
        act = s.ActivationFunctionType.RELU6 if relu6 else s.ActivationFunctionType.NONE
        if depthwise:
            options = s.DepthwiseConv2DOptionsT()
            options.depthMultiplier = 1
            kind = s.BuiltinOptions.DepthwiseConv2DOptions
            code = s.BuiltinOperator.DEPTHWISE_CONV_2D
            kernel = w.transpose(1, 2, 3, 0)  # (C, 1, h, w) -> (1, h, w, C)
        else:
            options = s.Conv2DOptionsT()
            kind, code = s.BuiltinOptions.Conv2DOptions, s.BuiltinOperator.CONV_2D
            kernel = w.transpose(0, 2, 3, 1)  # OIHW -> OHWI
        options.padding, options.fusedActivationFunction = s.Padding.SAME, act
        options.strideW = options.strideH = stride
        options.dilationWFactor = options.dilationHFactor = 1
        y = self.tensor(name, [1, out_side, out_side, len(b)])
        inputs = [x, self.tensor(name + "/w", list(kernel.shape), kernel),
                  self.tensor(name + "/b", [len(b)], b)]
        return self.op(code, inputs, y, kind, options), out_side

    def binary(self, code: int, kind: int, options, a: int, b: int, name: str,
               shape: list[int]) -> int:
        return self.op(code, [a, b], self.tensor(name, shape), kind, options)


def _backbone(g: _Graph, x: int, variant: str) -> int:
    """One variant's layers on the rescaled pixels `x`; its pooled (N, 1280) features."""
    state, p, side = checkpoint_state(variant), f"{variant}/", g.side

    def conv(x, side, name, torch_conv, torch_bn, stride=1, depthwise=False, relu6=True):
        w, b = _folded(state, torch_conv, torch_bn)
        return g.conv(x, side, p + name, w, b, stride=stride, depthwise=depthwise, relu6=relu6)

    x, side = conv(x, side, "stem", "_conv_stem", "_bn0", stride=2)
    channels = STEM_FILTERS
    for i, block in enumerate(blocks(variant)):
        t, shortcut, y = f"_blocks.{i}.", x, x
        if block.expand != 1:
            y, _ = conv(y, side, block.prefix + "expand", t + "_expand_conv", t + "_bn0")
        y, side = conv(y, side, block.prefix + "dw", t + "_depthwise_conv", t + "_bn1",
                       stride=block.stride, depthwise=True)
        y, _ = conv(y, side, block.prefix + "project", t + "_project_conv", t + "_bn2",
                    relu6=False)
        channels = block.out_filters
        x = y if not block.residual else g.binary(
            g.s.BuiltinOperator.ADD, g.s.BuiltinOptions.AddOptions, g.s.AddOptionsT(), y,
            shortcut, p + block.prefix + "add", [1, side, side, channels])
    x, _ = conv(x, side, "head", "_conv_head", "_bn1")
    reducer = g.s.ReducerOptionsT()
    reducer.keepDims = False
    axes = g.tensor(p + "axes", [2], np.array([1, 2]), dtype="int32")
    return g.op(g.s.BuiltinOperator.MEAN, [x, axes], g.tensor(p + "pool", [1, HEAD_FILTERS]),
                g.s.BuiltinOptions.ReducerOptions, reducer)


def build(variants: Sequence[str], image_size: int | None = None) -> bytes:
    """The serialized TFLite model: pixels (N, s, s, 3) float32 0-255 -> features (N, 1280
    per variant), from the checkpoints in the variants' pip packages.

    Raises:
        ConfigError: an unknown variant.
        WeightsError, CheckpointError: a checkpoint missing or damaged.
    """
    import flatbuffers

    side = image_size or get_variant(variants[-1]).image_size
    g = _Graph(side)
    s = g.s
    pixels = g.tensor("pixels", [1, side, side, 3])
    shape = [1, side, side, 3]
    scaled = g.binary(s.BuiltinOperator.MUL, s.BuiltinOptions.MulOptions, s.MulOptionsT(),
                      pixels, g.tensor("scale", [1], np.array([RESCALE_SCALE])), "scaled",
                      shape)
    x = g.binary(s.BuiltinOperator.ADD, s.BuiltinOptions.AddOptions, s.AddOptionsT(), scaled,
                 g.tensor("offset", [1], np.array([RESCALE_OFFSET])), "rescaled", shape)
    parts = [_backbone(g, x, v) for v in variants]
    out = parts[0]
    if len(parts) > 1:
        options = s.ConcatenationOptionsT()
        options.axis = 1
        out = g.op(s.BuiltinOperator.CONCATENATION, parts,
                   g.tensor("features", [1, HEAD_FILTERS * len(parts)]),
                   s.BuiltinOptions.ConcatenationOptions, options)
    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs = g.tensors, [pixels], [out]
    graph.operators, graph.name = g.operators, "main"
    model = s.ModelT()
    model.version, model.description = 3, "pawnet: EfficientNet-" + "+".join(variants)
    model.subgraphs, model.buffers = [graph], g.buffers
    model.operatorCodes = []
    for code in g.codes:  # in the order their indexes were given
        opcode = s.OperatorCodeT()
        opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, code, 1
        model.operatorCodes.append(opcode)
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
