"""Turning a Keras model into a file another runtime runs: SavedModel, LiteRT, ONNX.

Every conversion goes through Keras' own `model.export` (ONNX through `tf2onnx` and `onnx`,
LiteRT through TensorFlow's converter); int8 LiteRT goes through TensorFlow's converter
with a representative dataset of the caller's photos.

`convert_in_child` runs `write_model` in a fresh Python process (`python -m
pawnet.inference.convert MODEL FORMAT OUT REPORT`) on the model saved in a temporary folder: the
converters hold several copies of the weights (5.4 GB peak for tutorial A's 19M weights),
and only a process that ends gives that memory back.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pawnet import errors
from pawnet.errors import ConfigError, one_line

EXPORT_FORMATS = ("saved_model", "litert", "onnx")  # what `pawnet export --format` writes
MODEL_FILES = {"saved_model": "saved_model", "litert": "model.tflite", "onnx": "model.onnx"}
KERAS_FORMATS = {"saved_model": "tf_saved_model", "litert": "litert", "onnx": "onnx"}
CONVERTERS = {"onnx": ("tf2onnx", "onnx")}  # packages a format needs beyond TensorFlow
CHILD_TIMEOUT_S = 900.0  # a conversion taking longer is stopped (Lite0 takes about 10 s)

log = logging.getLogger(__name__)


class ConversionFailed(RuntimeError):
    """The converter in the child process could not convert the model, crashed or ran out
    of time; the message says which, in one line. A RuntimeError, so `--runtime auto`
    moves on to the next runtime as for a converter failing in-process."""


class ConversionBug(Exception):
    """The child process raised an exception of pawnet's own making (not a converter's
    failure, nor of a built-in or pawnet type to raise again): a bug, never skipped."""


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


# Modules whose own exception classes (derived from Exception only) a converter or runtime
# raises when it cannot handle a model; only a module already imported can have raised one.
FAILURE_MODULES = {
    "tensorflow.python.framework.errors_impl": ("OpError",),  # TensorFlow ops, tf.errors
    "tensorflow.lite.python.convert_phase": ("ConverterError",),  # the LiteRT converter
}
ORT_ERRORS = "onnxruntime.capi.onnxruntime_pybind11_state"  # InvalidProtobuf, Fail, ...


def conversion_failures() -> tuple[type[Exception], ...]:
    """What converting a model, or opening or running a converted file, raises when the
    converter or runtime cannot do it for this model here, rather than because of a bug:
    OSError (disk, permissions), ImportError (a converter installed but broken),
    ValueError and RuntimeError (tf2onnx's checks and unsupported ops, Keras' exporters,
    LiteRT's interpreter on a bad file), TensorFlow's `OpError` and `ConverterError`, and
    ONNX Runtime's own classes. Anything else is raised."""
    found: list[type[Exception]] = [OSError, ImportError, ValueError, RuntimeError]
    for module, names in FAILURE_MODULES.items():
        if module in sys.modules:
            found += [getattr(sys.modules[module], name) for name in names]
    if ORT_ERRORS in sys.modules:
        found += [value for value in vars(sys.modules[ORT_ERRORS]).values()
                  if isinstance(value, type) and issubclass(value, Exception)]
    return tuple(found)


def convert_in_child(model, fmt: str, path: Path, timeout: float = CHILD_TIMEOUT_S) -> Path:
    """`write_model(model, fmt, path)` in a fresh child process, whose memory is returned
    when it ends; this process only saves the model (Keras' unzipped format, written
    straight to disk) for it.

    Raises:
        ConversionFailed: the converter failed, crashed or took over `timeout` seconds.
        Also the built-in and pawnet exceptions the child raised, of the same type.
    """
    with tempfile.TemporaryDirectory(prefix="pawnet-convert-") as tmp:
        saved = Path(tmp) / "model"
        model.save(saved, zipped=False)
        return convert_file(saved, fmt, path, timeout)


def convert_file(saved: Path, fmt: str, path: Path, timeout: float = CHILD_TIMEOUT_S) -> Path:
    """Convert the Keras model saved at `saved` to `fmt` at `path` in a child process;
    raises as `convert_in_child`."""
    with tempfile.TemporaryDirectory(prefix="pawnet-convert-") as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pawnet.inference.convert", str(saved), fmt,
                   str(path), str(report)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env=_child_env(), stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise ConversionFailed(f"converting the model for {fmt} took over {timeout:g} s "
                                   "and was stopped") from None
        if done.returncode == 0:
            return path
        log.debug(f"the {fmt} converter's output:\n{done.stdout}{done.stderr}")
        raise _child_error(fmt, done, _read_report(report))


def _child_env() -> dict[str, str]:
    """This process' environment, with this pawnet first on the child's import path."""
    root = str(Path(__file__).resolve().parents[2])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _read_report(report: Path) -> dict | None:
    try:
        found = json.loads(report.read_text())
    except (OSError, ValueError):  # the child died before writing it
        return None
    return found if isinstance(found, dict) else None


def _child_error(fmt: str, done: subprocess.CompletedProcess, report: dict | None
                 ) -> Exception:
    """The exception that stands for the child's: of the same type when built-in or
    pawnet's, `ConversionFailed` for a converter's own failure, a crash or a signal."""
    where = f"converting the model for {fmt} (in a child process)"
    if report is None:
        last = next((one_line(line) for line in reversed(done.stderr.splitlines())
                     if line.strip()), "no output")
        code = done.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return ConversionFailed(f"{where} {how}: {last[:300]}")
    kind, message = str(report.get("type")), one_line(report.get("message", ""))[:500]
    same = getattr(builtins, kind, None) or getattr(errors, kind, None)
    if isinstance(same, type) and issubclass(same, Exception):
        with contextlib.suppress(TypeError):  # one that needs more than a message
            return same(f"{where}: {message}")
    if report.get("failure"):
        return ConversionFailed(f"{where}: {kind}: {message}")
    return ConversionBug(f"{where}: {kind}: {message}")


def _child_main(argv: list[str] | None = None) -> int:
    """The child's side: load the saved model, convert it, and on an exception write its
    type, message and whether it is a converter's failure to the report file."""
    parser = argparse.ArgumentParser(description="convert a saved Keras model (internal)")
    parser.add_argument("model")
    parser.add_argument("format", choices=EXPORT_FORMATS)
    parser.add_argument("out")
    parser.add_argument("report")
    args = parser.parse_args(argv)
    try:
        write_model(_load_saved(Path(args.model)), args.format, Path(args.out))
    except Exception as exc:
        report = {"type": type(exc).__name__, "message": str(exc).strip() or type(exc).__name__,
                  "failure": isinstance(exc, conversion_failures())}
        Path(args.report).write_text(json.dumps(report))
        raise  # the traceback goes to the parent's debug log
    return 0


def _load_saved(saved: Path):
    from pawnet.quiet import import_quietly

    import_quietly()
    import keras

    # register pawnet's layers a saved model may hold
    import pawnet.models.builtin
    import pawnet.models.keras_apps
    import pawnet.models.ood  # noqa: F401

    return keras.models.load_model(saved, compile=False)


if __name__ == "__main__":
    sys.exit(_child_main())
