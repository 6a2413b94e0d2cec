"""A frozen EfficientNet-Lite transfer model written as a Keras `.keras` file without
TensorFlow: the config of the model `pretrained.compose` (+ `ood.with_ood`) builds, and its
weights folded from the checkpoints, so `pawnet train` never waits for TensorFlow to start.

Keras reads the file like any other (tests/models/test_keras_file.py loads it and compares it
with the model Keras builds). The config holds what each layer's `from_config` needs, in the
order Keras lists the layers; the weights sit where Keras' loader looks for them: under each
layer's class name, numbered per model (`layers/functional/layers/conv2d_3/vars/0`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from pawnet.models.efficientnet_lite import (
    HEAD_FILTERS,
    RESCALE_OFFSET,
    RESCALE_SCALE,
    STEM_FILTERS,
    blocks,
)
from pawnet.models.lite_onnx import _folded, _same_pads, checkpoint_state
from pawnet.models.pretrained import HEAD_DROPOUT, keras_name
from pawnet.storage import atomic_path
from pawnet.trust.ood import NEIGHBOURS, OodScore

FUNCTIONAL = "keras.src.models.functional"
Shape = list


def _snake(name: str) -> str:
    """Keras' `naming.to_snake_case`, which names a layer's place in the weights file."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _tensor(layer: str, shape: Shape) -> dict:
    return {"class_name": "__keras_tensor__",
            "config": {"shape": shape, "dtype": "float32", "keras_history": [layer, 0, 0]}}


class _Model:
    """The layers of one functional model: their configs, and their weights in the order
    Keras' saver walks them."""

    def __init__(self, name: str, trainable: bool = False):
        self.name, self.trainable = name, trainable
        self.output = ""  # the layer whose output is the model's
        self.entries: list[dict] = []
        self.weights: list[tuple[str, str, list[np.ndarray]]] = []  # (class, name, values)

    def input(self, name: str, shape: Shape) -> tuple[str, Shape]:
        self.entries.append({"module": "keras.layers", "class_name": "InputLayer",
                             "config": {"batch_shape": shape, "dtype": "float32",
                                        "name": name},
                             "registered_name": None, "name": name, "inbound_nodes": []})
        self.weights.append(("InputLayer", name, []))
        return name, shape

    def layer(self, cls: str, name: str, config: dict, inputs: list[tuple[str, Shape]],
              out: Shape, values: Sequence[np.ndarray] = (), module: str = "keras.layers",
              registered: str | None = None, kwargs: dict | None = None) -> tuple[str, Shape]:
        args = [_tensor(*inputs[0])] if len(inputs) == 1 else [[_tensor(*i) for i in inputs]]
        self.entries.append({
            "module": module, "class_name": cls,
            "config": {"name": name, "trainable": self.trainable, "dtype": "float32",
                       **config},
            "registered_name": registered, "name": name,
            "inbound_nodes": [{"args": args, "kwargs": kwargs or {}}]})
        self.weights.append((cls, name, list(values)))
        return name, out

    def nested(self, model: _Model, inputs: list[tuple[str, Shape]], out: Shape,
               outputs: str, kwargs: dict | None = None) -> tuple[str, Shape]:
        args = [_tensor(*inputs[0])]
        self.entries.append({
            "module": FUNCTIONAL, "class_name": "Functional", "config": model.config(outputs),
            "registered_name": "Functional", "name": model.name,
            "inbound_nodes": [{"args": args, "kwargs": kwargs or {}}]})
        self.weights.append(("Functional", model.name, [model]))
        return model.name, out

    def config(self, output: str) -> dict:
        return {"name": self.name, "trainable": self.trainable, "layers": self.entries,
                "input_layers": [self.entries[0]["name"], 0, 0],
                "output_layers": [output, 0, 0]}

    def write_weights(self, group) -> None:
        """Under `group`, as Keras' saver lays them out."""
        group.create_group("vars").attrs["name"] = self.name
        layers = group.create_group("layers")
        used: dict[str, int] = {}
        for cls, name, values in self.weights:
            key = _snake(cls)
            if key in used:
                used[key] += 1
                key = f"{key}_{used[key]}"
            else:
                used[key] = 0
            place = layers.create_group(key)
            if values and isinstance(values[0], _Model):
                values[0].write_weights(place)
                continue
            found = place.create_group("vars")
            found.attrs["name"] = name
            for i, value in enumerate(values):
                found.create_dataset(str(i), data=np.ascontiguousarray(value, np.float32))


def _conv_config(filters: int, kernel: int, stride: int) -> dict:
    return {"filters": filters, "kernel_size": [kernel, kernel], "strides": [stride, stride],
            "padding": "same", "use_bias": True}


def _backbone(variant: str, side: int) -> _Model:
    """The folded network cut at its pooled features, as `fold_batch_norm` + `features`."""
    state = checkpoint_state(variant)
    m = _Model(f"efficientnet_{variant}")
    x = m.input("pixels", [None, side, side, 3])
    x = m.layer("Rescaling", "rescale", {"scale": RESCALE_SCALE, "offset": RESCALE_OFFSET},
                [x], x[1])

    def unit(x, name: str, torch_conv: str, torch_bn: str, filters: int, kernel: int = 1,
             stride: int = 1, depthwise: bool = False, relu: str | None = None):
        kernel_oihw, bias = _folded(state, torch_conv, torch_bn)
        out_side, _ = _same_pads(x[1][1], kernel, stride)
        shape = [None, out_side, out_side, filters]
        if depthwise:
            config = {"kernel_size": [kernel, kernel], "strides": [stride, stride],
                      "padding": "same", "use_bias": True, "depth_multiplier": 1}
            x = m.layer("DepthwiseConv2D", name, config, [x], shape,
                        [kernel_oihw.transpose(2, 3, 0, 1), bias])
        else:
            x = m.layer("Conv2D", name, _conv_config(filters, kernel, stride), [x], shape,
                        [kernel_oihw.transpose(2, 3, 1, 0), bias])
        return m.layer("ReLU", relu, {"max_value": 6.0}, [x], shape) if relu else x

    x = unit(x, "stem_conv", "_conv_stem", "_bn0", STEM_FILTERS, 3, 2, relu="stem_relu")
    for i, block in enumerate(blocks(variant)):
        t, p, shortcut = f"_blocks.{i}.", block.prefix, x
        wide = block.in_filters * block.expand
        if block.expand != 1:
            x = unit(x, p + "expand_conv", t + "_expand_conv", t + "_bn0", wide,
                     relu=p + "expand_relu")
        x = unit(x, p + "dwconv", t + "_depthwise_conv", t + "_bn1", wide, block.kernel,
                 block.stride, depthwise=True, relu=p + "dw_relu")
        x = unit(x, p + "project_conv", t + "_project_conv", t + "_bn2", block.out_filters)
        if block.residual:
            x = m.layer("Add", p + "add", {}, [x, shortcut], x[1])
    x = unit(x, "head_conv", "_conv_head", "_bn1", HEAD_FILTERS, relu="head_relu")
    m.layer("GlobalAveragePooling2D", "avg_pool", {"keepdims": False}, [x],
            [None, HEAD_FILTERS])
    return m


def _joined(variants: Sequence[str], side: int) -> tuple[_Model, str]:
    """(the feature extractor, its output layer) as `pretrained._joined` builds it."""
    if len(variants) == 1:
        return _backbone(variants[0], side), "avg_pool"
    m = _Model("efficientnet_" + "_".join(variants))
    pixels = m.input("pixels", [None, side, side, 3])
    parts = [m.nested(_backbone(v, side), [pixels], [None, HEAD_FILTERS], "avg_pool")
             for v in variants]
    m.layer("Concatenate", "features", {"axis": -1}, parts,
            [None, HEAD_FILTERS * len(variants)])
    return m, "features"


def _head(dim: int, kernel: np.ndarray, bias: np.ndarray) -> _Model:
    m = _Model("head", trainable=True)
    x = m.input("features", [None, dim])
    x = m.layer("Dropout", "head_dropout", {"rate": HEAD_DROPOUT}, [x], x[1],
                kwargs={"training": False})
    units = kernel.shape[1]
    activation = "sigmoid" if units == 1 else "softmax"
    m.layer("Dense", "predictions", {"units": units, "activation": activation}, [x],
            [None, units], [kernel, bias])
    return m


def transfer_model_config(variants: Sequence[str], image_size: int, model_name: str,
                          kernel: np.ndarray, bias: np.ndarray,
                          ood: OodScore | None) -> _Model:
    """The model `compose(backbone, head, model_name)` and then `with_ood` would build."""
    m = _Model(keras_name(model_name), trainable=True)
    pixels = m.input("pixels", [None, image_size, image_size, 3])
    backbone, output = _joined(variants, image_size)
    dim = HEAD_FILTERS * len(variants)
    features = m.nested(backbone, [pixels], [None, dim], output,
                        kwargs={"training": False, "mask": None})
    classes = m.nested(_head(dim, kernel, bias), [features], [None, kernel.shape[1]],
                       "predictions", kwargs={"mask": None})
    m.output = classes[0]
    if ood is not None:
        config = {"bank_size": len(ood.bank), "dim": dim, "neighbours":
                  min(NEIGHBOURS, len(ood.bank)), "centred": True}
        distance = m.layer("NeighbourDistance", "ood_score", config, [features], [None, 1],
                           [ood.bank.T, ood.mean], module="pawnet.models.ood",
                           registered="pawnet>NeighbourDistance")
        m.output = m.layer("Concatenate", "outputs_and_ood_score", {"axis": -1},
                           [classes, distance], [None, kernel.shape[1] + 1])[0]
    return m


def dense_outputs(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What the head's Dense layer outputs on features `x`: sigmoid or softmax
    probabilities."""
    z = (x @ kernel + bias).astype(np.float64)
    if z.shape[1] == 1:
        return (1 / (1 + np.exp(-z))).astype(np.float32)
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class FrozenTransfer:
    """A transfer model whose backbones stayed as pretrained, described without Keras: the
    Lite variants, the input size, the head's Dense weights and the OOD score once fitted.
    `save` writes it as the `.keras` file Keras would; `output_kind` as `spec.output_kind`."""

    model_name: str
    variants: tuple[str, ...]
    image_size: int
    kernel: np.ndarray
    bias: np.ndarray
    ood: OodScore | None = None

    @property
    def output_kind(self) -> str:
        return "sigmoid" if self.kernel.shape[1] == 1 else "softmax"

    def with_ood(self, score: OodScore) -> FrozenTransfer:
        return dataclasses.replace(self, ood=score)

    def outputs(self, features: np.ndarray) -> np.ndarray:
        """The model's outputs computed from its backbone's features, in NumPy."""
        found = dense_outputs(features, self.kernel, self.bias)
        if self.ood is None:
            return found
        return np.concatenate([found, self.ood(features)[:, None]], axis=1)

    def onnx(self) -> bytes:
        """The same model for ONNX Runtime, written from the checkpoints
        (`lite_onnx.build_classifier`)."""
        from pawnet.models.lite_onnx import build_classifier

        return build_classifier(self.variants, self.image_size, self.kernel, self.bias,
                                self.ood)

    def save(self, path: str | Path) -> None:
        write_transfer_model(path, transfer_model_config(
            self.variants, self.image_size, self.model_name, self.kernel, self.bias,
            self.ood))


def write_transfer_model(path: str | Path, model: _Model) -> None:
    """The `.keras` file of `model` (from `transfer_model_config`), written atomically."""
    import h5py

    top = {"module": FUNCTIONAL, "class_name": "Functional",
           "config": model.config(model.output), "registered_name": "Functional",
           "build_config": {"input_shape": None}}
    weights = io.BytesIO()
    with h5py.File(weights, "w") as h5:
        model.write_weights(h5)
    metadata = {"keras_version": importlib.metadata.version("keras"),
                "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr("metadata.json", json.dumps(metadata))
        archive.writestr("config.json", json.dumps(top))
        archive.writestr("model.weights.h5", weights.getvalue())
