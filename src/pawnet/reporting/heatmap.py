"""Heat-maps: which part of a photo drove a model's answer, for every model pawnet trains or
ships.

Layer-CAM (Jiang et al., 2021) weights each activation of a convolutional layer by the
positive part of the class score's gradient at that very position, and sums over channels.
It is taken at the layer whose maps are 1/8 of the input's side (28x28 for 224 px), where a
subject a twentieth of the photo still covers several cells; Grad-CAM at the last layer
(7x7) blurs it (measured in docs/decisions.md). One forward pass records the feature maps
of every network inside the model, nested ones included (joined backbones,
keras.applications backbones, the built-in model), and one backward pass gives their
gradients. The maps of joined backbones add up, each in proportion to its part of the
class score, since each is its branch's share of the score spread over the photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pawnet.errors import ConfigError

METHODS = ("layer-cam", "grad-cam")
METHOD, STRIDE = "layer-cam", 8
# Photos per call: on joined backbones four take half the time per photo of one, eight no
# less than four at 1.7x the memory (docs/decisions.md).
BATCH = 4


@dataclass(frozen=True)
class HeatMaps:
    """Heat-maps of a batch of photos and the model's class outputs for them."""

    maps: np.ndarray  # (N, h, w), each scaled to 0..1
    outputs: np.ndarray  # (N, units): the class outputs (no OOD column)
    method: str

    @property
    def resolution(self) -> list[int]:
        """[rows, columns] of the maps, before they are resized to a photo."""
        return [int(self.maps.shape[1]), int(self.maps.shape[2])]


def batches(index: list[int]) -> list[list[int]]:
    """Positions of photos, grouped by the class they explain, `BATCH` at most a group."""
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(index):
        by_class.setdefault(c, []).append(i)
    return [group[start : start + BATCH] for group in by_class.values()
            for start in range(0, len(group), BATCH)]


def _graph(layer) -> Any:
    """The functional graph of a nested network (a Sequential's is built inside it), or
    None for a plain layer or a subclassed model."""
    import keras

    if not isinstance(layer, keras.Model):
        return None
    graph = getattr(layer, "_functional", None) or layer
    return graph if hasattr(graph, "_run_through_graph") else None


def _image_graph(model) -> Any:
    """The model's functional graph when it takes one input (the photo), else None."""
    graph = _graph(model)
    return graph if graph is not None and len(model.inputs) == 1 else None


def _side(layer) -> int | None:
    """The side of a layer's 4-D output (feature maps), else None; padding and cropping
    layers only reshape the maps before them, so they have none of their own."""
    import keras

    if isinstance(layer, keras.layers.InputLayer | keras.layers.ZeroPadding2D
                  | keras.layers.Cropping2D):
        return None
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # a layer used more than once
        return None
    return shape[1] if len(shape) == 4 and shape[1] and shape[2] else None


def feature_layers(model, stride: int = STRIDE) -> list:
    """Per convolutional network in `model`: its last layer whose maps are about
    1/`stride` of the input's side (in a network with no maps that coarse, its coarsest).

    A nested network that ends in maps (a stem, a stage) is part of the network around
    it; one that ends in features or classes (a backbone, a branch of joined backbones)
    is a network of its own."""
    graph = _image_graph(model)
    if graph is None:
        return []
    input_side = model.inputs[0].shape[1]
    found: list = []

    def pick(last_by_side: dict[int, Any]) -> None:
        if last_by_side:
            coarse_enough = [s for s in last_by_side if input_side / s >= 0.85 * stride]
            found.append(last_by_side[max(coarse_enough or [min(last_by_side)])])

    def walk(network, last_by_side: dict[int, Any]) -> None:
        for layer in network.layers:
            side = _side(layer)
            if (inner := _graph(layer)) is not None:
                if side is not None:
                    walk(inner, last_by_side)
                else:
                    own: dict[int, Any] = {}
                    walk(inner, own)
                    pick(own)
            elif side is not None and 1 < side < input_side:
                last_by_side[side] = layer

    top: dict[int, Any] = {}
    walk(graph, top)
    pick(top)
    return found


def check_explainable(model, stride: int = STRIDE) -> list:
    """The layers whose maps `heat_maps` weighs (see `feature_layers`).

    Raises:
        ConfigError: the model is not a functional or Sequential Keras model with one
            input, or has no convolutional feature maps.
    """
    if _image_graph(model) is None:
        raise ConfigError(f"{model.name} is not a network of Keras layers with one image "
                          "input, so there is no map of where it looked. Try: a model "
                          "pawnet trains, or a functional or Sequential Keras model")
    layers = feature_layers(model, stride)
    if not layers:
        raise ConfigError(f"{model.name} has no convolutional feature maps, so there is no "
                          "map of where it looked. Try: a convolutional model such as "
                          "efficientnet-lite0")
    return layers


def _run(network, inputs, wanted: list, record: dict) -> Any:
    """Run a functional graph layer by layer, keeping the outputs of the `wanted` layers and of
    the class outputs ("predictions") in `record`, nested networks run the same way."""

    def operation(op):
        if (inner := _graph(op)) is not None:
            return lambda *args, **kwargs: _run(inner, list(args), wanted, record)

        def call(*args, **kwargs):
            out = op(*args, **kwargs)
            if any(op is layer for layer in wanted):
                record[id(op)] = out
            if op.name == "predictions":
                record["predictions"] = out
            return out

        return call

    outputs = network._run_through_graph(inputs, operation_fn=operation)
    if isinstance(outputs, list | tuple) and len(outputs) == 1:
        return outputs[0]
    return outputs


def _score(out, class_index):
    """Each photo's score for the class explained (a tensor; below 0: its most probable)."""
    import tensorflow as tf

    if out.shape[-1] == 1:  # sigmoid: P(class 1); class 0's score is its negative
        first = tf.where(class_index < 0, out[:, 0] < 0.5, tf.equal(class_index, 0))
        return tf.where(first, -out[:, 0], out[:, 0])
    chosen = tf.where(class_index < 0, tf.argmax(out, axis=-1), class_index)
    return tf.gather(out, chosen, axis=1, batch_dims=1)


def _traced(model, layers: list):
    """The forward and backward pass as one TensorFlow graph, traced once per model (and
    input shape): much faster per photo than running the layers eagerly."""
    import tensorflow as tf

    @tf.function(autograph=False, reduce_retracing=True)
    def step(images, class_index):
        record: dict = {}
        with tf.GradientTape() as tape:
            tape.watch(images)
            out = _run(_graph(model), [images], layers, record)
            out = record.get("predictions", out)
            score = _score(out, class_index)
        found = [record[id(layer)] for layer in layers if id(layer) in record]
        return found, tape.gradient(score, found), out

    return step


_TRACED = "_pawnet_heat_map_steps"  # the model's attribute: {stride: traced step}


def _check_class(model, class_index: int | None) -> None:
    """Raises:
        ConfigError: `class_index` is not one of the model's classes.
    """
    if class_index is None:
        return
    named = [layer for layer in _all_layers(model) if layer.name == "predictions"]
    units = (named[0] if named else model).output.shape[-1]
    if not 0 <= class_index < max(units, 2):  # one sigmoid unit answers for two classes
        raise ConfigError(f"class {class_index} is not one of {model.name}'s "
                          f"{max(units, 2)} classes. Try: 0 to {max(units, 2) - 1}")


def _all_layers(network) -> list:
    """Every layer of a network, those of nested networks included."""
    found = []
    for layer in network.layers:
        inner = _graph(layer)
        found += [layer, *_all_layers(inner)] if inner is not None else [layer]
    return found


def weigh(maps: np.ndarray, grads: np.ndarray, method: str) -> np.ndarray:
    """One network's heat-maps `(N, h, w)` from its maps and their gradients, each cell
    its share of the class score per unit of area (so that networks' maps add up)."""
    maps, grads = maps.astype(np.float32), grads.astype(np.float32)  # float16 underflows
    if method == "grad-cam":
        weighted = maps * grads.mean(axis=(1, 2), keepdims=True)
    else:
        weighted = maps * np.maximum(grads, 0.0)
    area = maps.shape[1] * maps.shape[2]
    return np.maximum(weighted.sum(axis=-1), 0.0) * area


def maps_and_gradients(model, pixels: np.ndarray, class_index: int | None = None, *,
                       stride: int = STRIDE) -> tuple[list[tuple[np.ndarray, np.ndarray]],
                                                      np.ndarray]:
    """Per network of the model, its feature maps `(N, h, w, k)` about 1/`stride` of the
    input's side and the gradients of the class score over them, for images `(N, s, s, 3)`
    uint8 and a class (default: each image's most probable); and the class outputs.

    Raises:
        ConfigError: the model has no convolutional feature maps, or its class outputs do
            not depend on them.
    """
    import tensorflow as tf

    _check_class(model, class_index)
    traced = model.__dict__.get(_TRACED)
    if traced is None:  # kept on the model, so that it goes with the model
        traced = {}
        object.__setattr__(model, _TRACED, traced)  # past Keras' tracking of attributes
    if stride not in traced:
        traced[stride] = _traced(model, check_explainable(model, stride))
    found, grads, out = traced[stride](tf.convert_to_tensor(pixels, tf.float32),
                                       tf.constant(-1 if class_index is None else class_index,
                                                   tf.int64))
    pairs = [(a.numpy(), g.numpy()) for a, g in zip(found, grads, strict=True)
             if g is not None]
    if not pairs:
        raise ConfigError(f"the class outputs of {model.name} do not depend on its feature "
                          "maps, so there is no map of where it looked. Try: a "
                          "convolutional model such as efficientnet-lite0")
    return pairs, np.asarray(out)


def heat_maps(model, pixels: np.ndarray, class_index: int | None = None, *,
              method: str = METHOD, stride: int = STRIDE) -> HeatMaps:
    """Heat-maps of images `(N, s, s, 3)` uint8 for a class (default: each image's most
    probable), at the resolution of the feature maps used, scaled to 0..1.

    Args:
        method: "layer-cam" (weights per position, the default) or "grad-cam" (per channel).
        stride: which feature maps: those about 1/`stride` of the input's side.

    Raises:
        ConfigError: an unknown method, or a model with no convolutional feature maps.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown heat-map method '{method}'. Try: one of "
                          f"{', '.join(METHODS)}")
    pairs, outputs = maps_and_gradients(model, pixels, class_index, stride=stride)
    return HeatMaps(combine([weigh(a, g, method) for a, g in pairs]), outputs, method)


def combine(cams: list[np.ndarray]) -> np.ndarray:
    """Networks' maps `(N, h, w)` added up at the finest resolution among them, each photo's
    scaled to 0..1."""
    rows, cols = max(c.shape[1] for c in cams), max(c.shape[2] for c in cams)
    total = sum(np.stack([resize(m, (cols, rows)) for m in c]) if c.shape[1:] != (rows, cols)
                else c for c in cams)
    peak = total.reshape(len(total), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, total / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def resize(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One heat-map resized (bilinear) to `size` = (width, height), never below 0."""
    from PIL import Image

    image = Image.fromarray(cam.astype(np.float32), mode="F")
    return np.maximum(np.asarray(image.resize(size, Image.Resampling.BILINEAR)), 0.0)
