"""Turning a Keras model into a file another runtime runs: SavedModel, LiteRT, ONNX.

Every conversion goes through Keras' own `model.export` (ONNX through `tf2onnx` and `onnx`,
LiteRT through TensorFlow's converter); int8 LiteRT goes through TensorFlow's converter
with a representative dataset of the caller's photos.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pawnet.errors import ConfigError

EXPORT_FORMATS = ("saved_model", "litert", "onnx")  # what `pawnet export --format` writes
MODEL_FILES = {"saved_model": "saved_model", "litert": "model.tflite", "onnx": "model.onnx"}
KERAS_FORMATS = {"saved_model": "tf_saved_model", "litert": "litert", "onnx": "onnx"}
CONVERTERS = {"onnx": ("tf2onnx", "onnx")}  # packages a format needs beyond TensorFlow


def check_format(fmt: str, int8: bool = False) -> None:
    """Refuse an unknown format, int8 where there is none, or a missing converter.

    Raises:
        ConfigError: with the fix.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; allowed: "
                          f"{', '.join(EXPORT_FORMATS)}")
    if int8 and fmt != "litert":
        raise ConfigError(f"--int8 is for --format litert; {fmt} has no int8 export here. "
                          "Try: --format litert --int8")
    missing = [name for name in CONVERTERS.get(fmt, ()) if not _importable(name)]
    if missing:
        raise ConfigError(f"exporting to {fmt} needs {' and '.join(missing)}, which is not "
                          f"installed. Try: pip install {' '.join(CONVERTERS[fmt])}")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@contextlib.contextmanager
def _converter_chatter_held():
    """tf2onnx and TensorFlow's converter log and print at length; keep it off the screen."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "absl", "tensorflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def write_model(model, fmt: str, path: Path,
                int8_photos: Callable[[], Iterable[np.ndarray]] | None = None) -> Path:
    """Write `model` (raw 0-255 RGB float input) as `fmt` at `path`.

    Args:
        int8_photos: for int8 LiteRT only: yields uint8 images `(size, size, 3)` decoded as
            at predict time; activations are quantized to the ranges they reach.

    Raises:
        ConfigError: the format is unknown or its converter is missing.
    """
    from pawnet.quiet import held, import_quietly

    check_format(fmt, int8=int8_photos is not None)
    import_quietly()
    with _converter_chatter_held(), held():
        if int8_photos is not None:
            return _write_int8(model, path, int8_photos)
        if fmt == "onnx":  # tf2onnx traces the model's call, which needs a first call
            model(np.zeros((1, *model.inputs[0].shape[1:]), "float32"))
        model.export(str(path), format=KERAS_FORMATS[fmt], verbose=False)
    return path


def _write_int8(model, path: Path, int8_photos: Callable[[], Iterable[np.ndarray]]) -> Path:
    """Full-integer weights and activations, float input and output (so the same
    preprocessing works), with TensorFlow's converter; ops without an int8 kernel stay
    float."""
    import tensorflow as tf

    def representative():
        for image in int8_photos():
            yield [image[None].astype(np.float32)]

    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        path.write_bytes(converter.convert())
    return path
