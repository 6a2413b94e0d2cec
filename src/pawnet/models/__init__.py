"""The model registry: one decorated builder per architecture.

```python
@register("my-net", description="...", image_size=128)
def my_net(num_classes: int, image_size: int) -> keras.Model: ...
```

`pawnet models` lists the registry and the tests walk it, so a new architecture is one
function and needs no other edit.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import keras

from pawnet.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture and the training defaults that suit it."""

    name: str
    builder: Callable[[int, int], keras.Model]
    description: str
    image_size: int
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 32
    backbone: str | None = None  # pretrained feature extractor: trained by transfer learning
    recipe: dict = field(default_factory=dict)  # other Config defaults that suit this model

    def build(self, num_classes: int, image_size: int | None = None) -> keras.Model:
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, received: {num_classes}")
        return self.builder(num_classes, image_size or self.image_size)


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, description: str, image_size: int, **defaults) -> Callable:
    """Decorator that adds a builder `(num_classes, image_size) -> keras.Model` to the registry."""

    def decorator(builder: Callable[[int, int], keras.Model]) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, description, image_size, **defaults)
        return builder

    return decorator


def list_models() -> list[ModelSpec]:
    """All registered architectures, in registration order."""
    return list(_REGISTRY.values())


def get_model_spec(name: str) -> ModelSpec:
    """Look up an architecture by name.

    Raises:
        ConfigError: unknown name; the message lists similar and available names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown model '{name}'.{hint} Available: {', '.join(_REGISTRY)} "
            "(see `pawnet models`)"
        ) from None


def classifier_head(x, num_classes: int, *, softmax: bool = False):
    """Output layer: one sigmoid unit for two classes, else (or if asked) one softmax unit each."""
    if num_classes == 2 and not softmax:
        return keras.layers.Dense(1, activation="sigmoid", name="predictions")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)


# Importing these modules registers their architectures, from-scratch ones first.
from pawnet.models import scratch  # noqa: E402,F401,I001
from pawnet.models import pretrained  # noqa: E402,F401
