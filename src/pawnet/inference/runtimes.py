"""Where a model runs: Keras (TensorFlow), ONNX Runtime or LiteRT, behind one call.

A runtime takes images `(N, size, size, 3)` (uint8 pixels, or float32 after augmentation)
and returns the model's outputs `(N, units)` as float32. ONNX and LiteRT run a file
converted from the Keras model once and cached in the user cache, keyed by the model's
fingerprint; the file's checksum and the result of a parity check against Keras are kept
next to it, so a damaged or disagreeing file is remade or skipped, never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pawnet.errors import BundleError, ConfigError
from pawnet.inference.convert import conversion_failures
from pawnet.storage import atomic_path, atomic_write_bytes, atomic_write_text, cache_dir

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "keras", "onnx", "litert")
AUTO_ORDER = ("onnx", "litert", "keras")  # fastest first, measured (docs/decisions.md)
PACKAGES = {"onnx": "onnxruntime", "litert": "ai_edge_litert"}
PIP_NAMES = {"onnx": "onnxruntime", "litert": "ai-edge-litert"}
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}
CALL_SIZES = (1, 2, 4, 8)  # photos per call tried on each core (docs/decisions.md)
SPLIT_FROM = 16  # larger ONNX batches run as one-thread calls on every core at once
PARITY_ATOL = 1e-4  # a converted file must give the Keras outputs to this, else it is skipped
CACHE_VERSION = 2


class Runtime(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def threads() -> int:
    return os.cpu_count() or 1


def core_chunks(n: int, per_call: int) -> list[range]:
    """`n` items cut into runs of at most `per_call`, enough for every core, for callers
    that run one call per core on a runtime whose calls overlap."""
    size = max(1, min(per_call, math.ceil(n / threads())))
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def on_every_core(func: Callable[[range], Any], n: int, per_call: int) -> list:
    """`func` over the `core_chunks` of `n` items, one thread per core, results in order."""
    with ThreadPoolExecutor(max_workers=threads()) as pool:
        return list(pool.map(func, core_chunks(n, per_call)))


class KerasRuntime:
    """The Keras model itself, through one compiled function for any batch size."""

    name = "keras"

    def __init__(self, model):
        self.model = model

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from pawnet.data.pipeline import batch_function

        dtype = "uint8" if images.dtype == np.uint8 else "float32"
        return np.asarray(batch_function(self.model, dtype)(images), dtype=np.float32)


class OnnxRuntime:
    """An ONNX file on ONNX Runtime's CPU provider; safe to call from several threads."""

    name = "onnx"

    def __init__(self, path: Path, num_threads: int | None = None, photos_per_call: int = 1):
        self.path = path
        self.num_threads = num_threads or threads()
        self.photos_per_call = photos_per_call  # fastest on one core, measured at conversion
        self._session: Any = None
        self._single: OnnxRuntime | None = None
        self._opening = threading.Lock()
        session = self.single_threaded().session  # all `predict` needs: opened first
        self._input = session.get_inputs()[0].name
        self.input_shape = tuple(session.get_inputs()[0].shape)
        self.units = session.get_outputs()[0].shape[-1]

    @property
    def session(self) -> Any:
        """The ONNX Runtime session on `num_threads` threads, opened at first use: each
        session holds the weights twice (as read and packed for its kernels)."""
        with self._opening:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.num_threads
                options.log_severity_level = 3
                self._session = ort.InferenceSession(str(self.path), options,
                                                     providers=["CPUExecutionProvider"])
            return self._session

    def __call__(self, images: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(images, dtype=np.float32)
        if len(batch) < SPLIT_FROM or threads() == 1:
            return self.session.run(None, {self._input: batch})[0]
        single = self.single_threaded()  # a few photos per core beat one call on all cores

        def run(chunk: range) -> np.ndarray:
            return single.session.run(None, {self._input: batch[chunk.start : chunk.stop]})[0]

        return np.concatenate(on_every_core(run, len(batch), self.photos_per_call))

    def single_threaded(self) -> OnnxRuntime:
        """The same model on one thread per call, for callers that run one call per core."""
        with self._opening:
            if self._single is None:
                self._single = (self if self.num_threads == 1
                                else OnnxRuntime(self.path, 1, self.photos_per_call))
            return self._single

    def set_call_size(self, photos_per_call: int) -> None:
        self.photos_per_call = photos_per_call
        if self._single is not None:
            self._single.photos_per_call = photos_per_call

    def fastest_call_size(self, images: np.ndarray) -> int:
        """Photos per one-thread call that run fastest here: one photo keeps activations
        in cache, several share each read of the weights (large dense layers).

        Measured as `predict` runs, a call on every core at once (they share the cache and
        the memory bus), in CPU seconds: other jobs on shared cores slow the wall clock
        by 2-5x at random, and would pick the size instead of the model.
        """
        single = self.single_threaded()
        batch = np.resize(images, (max(CALL_SIZES) * threads(), *images.shape[1:]))

        def seconds(size: int) -> float:
            def run(chunk: range) -> None:
                single(batch[chunk.start : chunk.stop])

            single(batch[:size])  # first call at a new size sets it up
            started = time.process_time()
            on_every_core(run, len(batch), size)
            return time.process_time() - started

        timings = {size: min(seconds(size) for _ in range(3)) for size in CALL_SIZES}
        return min(timings, key=timings.__getitem__)


class LiteRTRuntime:
    """A LiteRT (TFLite) file on its XNNPACK CPU delegate.

    An interpreter has one input shape at a time and reallocates to change it, so batches
    are padded to a power of two with one interpreter kept per size; an interpreter runs
    one call at a time, so calls are serialised.
    """

    name = "litert"

    def __init__(self, path: Path, num_threads: int | None = None):
        self.path = path
        self.num_threads = num_threads or threads()
        self._interpreters: dict[int, Any] = {}
        self._lock = threading.Lock()
        interpreter = self._interpreter(1)
        self.input_shape = tuple(interpreter.get_input_details()[0]["shape_signature"])
        self.units = int(interpreter.get_output_details()[0]["shape"][-1])

    def _interpreter(self, batch: int):
        if batch not in self._interpreters:
            from ai_edge_litert.interpreter import Interpreter

            from pawnet.quiet import held

            with held():  # "INFO: ..."
                interpreter = Interpreter(model_path=str(self.path),
                                          num_threads=self.num_threads)
                index = interpreter.get_input_details()[0]["index"]
                shape = interpreter.get_input_details()[0]["shape"]
                interpreter.resize_tensor_input(index, [batch, *shape[1:]])
                interpreter.allocate_tensors()
            self._interpreters[batch] = interpreter
        return self._interpreters[batch]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        n = len(images)
        size = 1 << max(0, n - 1).bit_length()
        batch = np.zeros((size, *images.shape[1:]), np.float32)
        batch[:n] = images
        with self._lock:
            interpreter = self._interpreter(size)
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
            interpreter.invoke()
            return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[:n].copy()


def open_file(path: Path, fmt: str, num_threads: int | None = None,
              photos_per_call: int = 1) -> Runtime:
    """A runtime for a converted file: "onnx" or "litert"."""
    if fmt == "onnx":
        return OnnxRuntime(path, num_threads, photos_per_call)
    return LiteRTRuntime(path, num_threads)


def synthetic_images(size: int) -> np.ndarray:
    """Fixed uint8 images (a colour ramp and noise) to compare runtimes on when no photos
    are at hand."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size)
    smooth = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 255 - ramp[:, None]),
                      axis=-1)
    return np.concatenate([smooth[None], rng.integers(0, 256, (7, size, size, 3))]
                          ).astype(np.uint8)


def installed(name: str) -> bool:
    """Whether runtime `name` can run here (its package is installed)."""
    return name == "keras" or importlib.util.find_spec(PACKAGES[name]) is not None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(model_file: Path) -> dict | None:
    """The record kept next to a converted file, or None when it is missing, damaged, of
    another cache version, or of another file."""
    try:
        record = json.loads(model_file.with_suffix(".json").read_text())
        if not isinstance(record, dict) or record.get("version") != CACHE_VERSION:
            return None
        return record if record.get("sha256") == _sha256(model_file) else None
    except (OSError, ValueError):  # missing or unreadable; not JSON
        return None


def _cached(model_file: Path, fmt: str) -> tuple[Runtime | None, dict | None]:
    """The cached runtime and its record, or (None, None) when missing or damaged."""
    record = _record(model_file)
    if record is None or not isinstance(record.get("agrees"), bool):
        return None, None
    if not record["agrees"]:
        return None, record
    per_call = record.get("photos_per_call")
    if type(per_call) is not int or per_call < 1:
        return None, None
    try:
        return open_file(model_file, fmt, photos_per_call=per_call), record
    except conversion_failures():  # a file its runtime cannot open after all: remake it
        return None, None


def _write_record(model_file: Path, fmt: str, diff: float, checked_on: int, agrees: bool,
                  per_call: int) -> None:
    """The record kept next to a cached file (read back by `_record`)."""
    record = {"version": CACHE_VERSION, "format": fmt, "sha256": _sha256(model_file),
              "max_abs_diff": diff, "checked_on": checked_on, "agrees": agrees,
              "photos_per_call": per_call}
    atomic_write_text(model_file.with_suffix(".json"), json.dumps(record, indent=2) + "\n")


def converted(key: str, fmt: str, keras_model: Callable[[], Any],
              probe: Callable[[], np.ndarray]) -> Runtime | None:
    """A runtime for `fmt` running the model called `key`, converted once and cached.

    Args:
        key: names the model's exact weights and input size (a fingerprint).
        keras_model: gives the Keras model; called only when the file must be made.
        probe: gives images to check the converted file against Keras on.

    Returns:
        The runtime, or None when the converted file disagrees with Keras beyond
        `PARITY_ATOL` (remembered, so it is not converted again).
    """
    from pawnet.inference.convert import convert_in_child

    model_file = cache_dir() / "runtimes" / f"{key}-{fmt}{SUFFIXES[fmt]}"
    runtime, record = _cached(model_file, fmt)
    if record is not None:
        return runtime
    log.info(f"Converting the model for {fmt} once (cached in {model_file.parent})")
    model = keras_model()
    model_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_file) as tmp:
        convert_in_child(model, fmt, tmp)  # the converter's gigabytes end with the child
    images = probe()
    want = KerasRuntime(model)(images)
    runtime = open_file(model_file, fmt)
    got = runtime(images)
    diff = float(np.abs(got - want).max()) if len(images) else 0.0
    agrees = diff <= PARITY_ATOL and bool((got.argmax(1) == want.argmax(1)).all())
    per_call = 1
    if agrees and isinstance(runtime, OnnxRuntime):
        per_call = runtime.fastest_call_size(images)
        runtime.set_call_size(per_call)  # kept: opening the file again costs its weights again
    _write_record(model_file, fmt, diff, len(images), agrees, per_call)
    if not agrees:
        return None
    if isinstance(runtime, OnnxRuntime):
        return runtime
    del runtime  # a LiteRT interpreter per probe size: let it go before the one for use
    return open_file(model_file, fmt)


def choose(runtime: str, key: str, keras_model: Callable[[], Any],
           probe: Callable[[], np.ndarray]) -> Runtime:
    """The runtime named by `runtime`; "auto" is the first of `AUTO_ORDER` that is
    installed, converts, and agrees with Keras.

    Raises:
        ConfigError: an unknown runtime, or a named one that is not installed or whose
            converter is missing.
        BundleError: a named runtime whose converted file disagrees with Keras.
    """
    from pawnet.inference.convert import check_format

    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    if runtime == "keras":
        return KerasRuntime(keras_model())
    if runtime != "auto":
        if not installed(runtime):
            raise ConfigError(f"--runtime {runtime} needs {PIP_NAMES[runtime]}, which is "
                              f"not installed. Try: pip install {PIP_NAMES[runtime]}")
        check_format(runtime)
        found = converted(key, runtime, keras_model, probe)
        if found is None:
            raise BundleError(f"the {runtime} conversion of this model disagrees with Keras "
                              f"beyond {PARITY_ATOL:g}. Try: --runtime keras")
        return found
    for name in AUTO_ORDER[:-1]:
        if not installed(name):
            continue
        try:
            check_format(name)
            found = converted(key, name, keras_model, probe)
        except ConfigError:
            continue  # its converter is not installed
        except conversion_failures() as exc:  # a converter that cannot do this model must
            # not stop predictions: try the next. A damaged bundle (BundleError), or any
            # other exception (a bug), is raised: no runtime would do.
            log.warning(f"could not convert the model for {name} ({exc}); trying the next "
                        "runtime")
            continue
        if found is not None:
            return found
    return KerasRuntime(keras_model())


def seeded(key: str, fmt: str, data: bytes, images: np.ndarray, want: np.ndarray,
           photos_per_call: int | None = None) -> Runtime | None:
    """Cache a file written for runtime `fmt` without converting (a frozen transfer model,
    `keras_file.FrozenTransfer.onnx`) as the model called `key`, when its outputs on
    `images` are `want` (the model's own, computed another way) to `PARITY_ATOL`; ONNX
    Runtime's call size as given (that of a model it shares its backbone with), else measured.

    Returns:
        The runtime, or None when the file disagrees (then nothing is cached).
    """
    model_file = cache_dir() / "runtimes" / f"{key}-{fmt}{SUFFIXES[fmt]}"
    atomic_write_bytes(model_file, data)
    runtime = open_file(model_file, fmt)
    diff = float(np.abs(runtime(images) - want).max())
    if diff > PARITY_ATOL:
        model_file.unlink()
        return None
    per_call = photos_per_call or (runtime.fastest_call_size(images)
                                   if isinstance(runtime, OnnxRuntime) else 1)
    _write_record(model_file, fmt, diff, len(images), True, per_call)
    return open_file(model_file, fmt, photos_per_call=per_call)
