"""Backbones from `keras.applications` (`--model keras:ResNet50`), for users who have, or can
download, their ImageNet weights.

Keras fetches the weights itself (`keras.utils.get_file`, checked against the SHA-256 it
knows, cached in `~/.keras/models`), or `--weights FILE` gives a file of them (the
"no top" file of that model). Each model's own input preprocessing runs inside the saved
model (`AppPreprocessing`), so it takes raw 0-255 RGB pixels like every pawnet model.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from pathlib import Path

import keras

from pawnet.errors import ConfigError, WeightsError, one_line
from pawnet.models.spec import KERAS_PREFIX

PREFIX = KERAS_PREFIX
IMAGE_SIZE = 224  # the input side every keras.applications model was trained at or near
# their ImageNet weights need a fixed input side (224 or 331) with a shape check of its own
_LEFT_OUT = ("NASNetLarge", "NASNetMobile")


def app_names() -> list[str]:
    """The `keras.applications` model constructors `keras:NAME` accepts."""
    return sorted(name for name in dir(keras.applications)
                  if name[:1].isupper() and callable(getattr(keras.applications, name))
                  and name not in _LEFT_OUT)


def app_name(model: str) -> str:
    """The constructor named by `keras:NAME` (any case).

    Raises:
        ConfigError: no such model in keras.applications.
    """
    wanted = model[len(PREFIX):]
    names = app_names()
    by_lower = {n.lower(): n for n in names}
    if wanted.lower() in by_lower:
        return by_lower[wanted.lower()]
    close = difflib.get_close_matches(wanted, names, n=3)
    hint = f" Did you mean: {', '.join(PREFIX + c for c in close)}?" if close else ""
    raise ConfigError(f"keras.applications has no model '{wanted}'.{hint} Available: "
                      f"{', '.join(names)}")


@keras.saving.register_keras_serializable(package="pawnet")
class AppPreprocessing(keras.layers.Layer):
    """A keras.applications model's `preprocess_input`, as a layer of the saved model."""

    def __init__(self, app: str, **kwargs):
        super().__init__(**kwargs)
        self.app = app

    def call(self, pixels):
        module = sys.modules[getattr(keras.applications, self.app).__module__]
        return module.preprocess_input(keras.ops.cast(pixels, "float32"))

    def get_config(self):
        return {**super().get_config(), "app": self.app}


def _weights_error(name: str, exc: Exception) -> WeightsError:
    text = one_line(str(exc) or type(exc).__name__)
    if "hash does not match" in text or "corrupted" in text:
        return WeightsError(f"the ImageNet weights downloaded for {name} do not match the "
                            f"checksum Keras expects ({text[:160]}). Try: again (the file is "
                            "fetched anew), or --weights FILE with the right file")
    if "URL fetch failure" in text:
        url = text.split("URL fetch failure on ", 1)[-1].split(": ", 1)[0]
        return WeightsError(f"cannot download the ImageNet weights of {name} from {url} (no "
                            f"internet?). Try: fetch that file where there is internet and "
                            f"pass it with --weights FILE, or copy it to ~/.keras/models/")
    return WeightsError(f"the weights of {name} could not be loaded ({text[:200]}). Try: "
                        f"--weights with the 'no top' weights file of {name}")


def app_backbone(model: str, image_size: int, weights: str | None = None) -> keras.Model:
    """The pooled-feature extractor `keras:NAME`: raw 0-255 RGB in, the model's own
    preprocessing, then the ImageNet-trained network without its classifier.

    Args:
        weights: a weights file; None: Keras' ImageNet weights, downloaded once.

    Raises:
        ConfigError: an unknown model.
        WeightsError: a missing or wrong weights file, or no way to download the weights.
    """
    name = app_name(model)
    if weights is not None and not Path(weights).is_file():
        raise WeightsError(f"--weights {weights}: no such file. Try: the path of the 'no top' "
                           f"weights file of {name}")
    try:
        with warnings.catch_warnings():  # "weights for input shape (224, 224) will be loaded"
            warnings.simplefilter("ignore", UserWarning)
            network = getattr(keras.applications, name)(
                include_top=False, weights=weights or "imagenet", pooling="avg",
                input_shape=(image_size, image_size, 3))
    except Exception as exc:  # urllib, h5py and Keras (a bare Exception) each raise their own
        raise _weights_error(name, exc) from None
    network.trainable = False
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    features = network(AppPreprocessing(name, name="preprocessing")(pixels), training=False)
    backbone = keras.Model(pixels, features, name=f"keras_{name.lower()}")
    backbone.trainable = False
    return backbone
