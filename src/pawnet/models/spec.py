"""What a trainable architecture is: a builder plus the training defaults that suit it, and
the output convention every pawnet classifier follows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pawnet.errors import ConfigError

if TYPE_CHECKING:
    import keras

KERAS_PREFIX = "keras:"  # `--model keras:NAME`: a keras.applications backbone (`keras_apps`)


@dataclass(frozen=True)
class ModelSpec:
    """An architecture and the training defaults that suit it.

    `builder(num_classes, image_size)` returns a `keras.Model` that takes raw 0-255 RGB
    pixels and outputs class probabilities (see `classifier_head`). A model with
    `backbones` is trained by transfer learning from those pretrained feature extractors;
    the others are trained from scratch.
    """

    name: str
    builder: Callable[[int, int], keras.Model]
    description: str
    image_size: int
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 32
    backbones: tuple[str, ...] = ()  # pretrained feature extractors, e.g. ("lite0", "lite2")
    recipe: dict[str, Any] = field(default_factory=dict)  # other Config defaults that suit it

    @property
    def pretrained(self) -> bool:
        return bool(self.backbones)

    def defaults(self) -> dict[str, Any]:
        """The `Config` values this model brings when the user gives none."""
        return {"image_size": self.image_size, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, **self.recipe}

    def build(self, num_classes: int, image_size: int | None = None) -> keras.Model:
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, received: {num_classes}")
        return self.builder(num_classes, image_size or self.image_size)


def classifier_head(x, num_classes: int, *, softmax: bool = False):
    """Output layer: one sigmoid unit for two classes, else (or if asked) one softmax unit
    each; in float32 also under mixed precision, so probabilities keep their precision."""
    import keras

    if num_classes == 2 and not softmax:
        return keras.layers.Dense(1, activation="sigmoid", name="predictions",
                                  dtype="float32")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions",
                              dtype="float32")(x)


def output_kind(model: keras.Model) -> str:
    """"sigmoid" (one unit: P(second class)) or "softmax" (one unit per class), of a Keras
    model or of a model described without Keras (`keras_file.FrozenTransfer`)."""
    if hasattr(model, "output_kind"):
        return model.output_kind
    return "sigmoid" if model.outputs[0].shape[-1] == 1 else "softmax"
