"""The model registry: every architecture `pawnet train --model NAME` knows, and the
built-in models that need no training.

It is built from explicit tables: each zoo module lists its models in `MODELS`. A new
architecture is one builder function plus one row there; `pawnet models` and the tests
walk the registry, so nothing else needs an edit.
"""

from __future__ import annotations

import difflib
import functools
from typing import TYPE_CHECKING

from pawnet.errors import ConfigError
from pawnet.models import pretrained, scratch
from pawnet.models.spec import KERAS_PREFIX, ModelSpec

if TYPE_CHECKING:
    from pawnet.models.builtin import BuiltinModel


def _by_name(models: tuple) -> dict:
    table = {model.name: model for model in models}
    if len(table) != len(models):
        raise ValueError(f"a model name is registered twice: {[m.name for m in models]}")
    return table


_ARCHITECTURES: dict[str, ModelSpec] = _by_name((*scratch.MODELS, *pretrained.MODELS))


@functools.cache
def _builtins() -> dict[str, BuiltinModel]:
    from pawnet.models import builtin  # its models are Keras layers: Keras loads with it

    return _by_name(builtin.MODELS)


def list_models() -> list[ModelSpec]:
    """All trainable architectures, from-scratch ones first."""
    return list(_ARCHITECTURES.values())


def get_model_spec(name: str) -> ModelSpec:
    """Look up an architecture by name.

    Raises:
        ConfigError: unknown name; the message lists similar and available names.
    """
    if name.startswith(KERAS_PREFIX):
        return pretrained.keras_app_spec(name)
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        close = difflib.get_close_matches(name, _ARCHITECTURES, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown model '{name}'.{hint} Available: {', '.join(_ARCHITECTURES)}, or "
            "keras:NAME for a keras.applications model (see `pawnet models`)"
        ) from None


def list_builtins() -> list[BuiltinModel]:
    """The models that work with no training (`pawnet predict imagenet-catdog ...`)."""
    return list(_builtins().values())


def find_builtin(name: str) -> BuiltinModel | None:
    """The built-in model of that name, or None."""
    return _builtins().get(name)
