"""The model bundle: the one folder that predict, evaluate and serve read, and `resolve`, the
one answer to "which model does this name or folder mean?".

```
bundle/
  model.keras        inference model: raw 0-255 RGB in, class probabilities out
  bundle.json        format version, class names (index order), preprocessing, output kind
  provenance.json    versions, data fingerprint, counts per class, split seed, final metrics
  config.yaml        the fully resolved training settings
  MODEL_CARD.md      the model card: written by `pawnet evaluate RUN` (the run's held-out
                     test split), not by training, and replaced only while it is unedited
                     (its last line, a stamp, checks that); nothing else reads it back
  MODEL_CARD_confusions.jpg    the card's largest confusions, a few photos each
```
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pawnet.data.images import RESIZE_METHOD, RESIZE_METHODS
from pawnet.errors import BundleError, ConfigError
from pawnet.run_folder import BUNDLE, RunFolder
from pawnet.storage import Output, atomic_path, read_text_file

FORMAT_VERSION = 4  # 2 added `temperature`; 3 `min_confidence`, `ood_threshold`; 4 `min_side`
READABLE_FORMATS = (1, 2, 3, 4)  # older: temperature 1.0, no unsure, no OOD, no size limit
CARD, CARD_SHEET = "MODEL_CARD.md", "MODEL_CARD_confusions.jpg"  # reporting/report.py
BUNDLE_OUTPUT = Output("bundle", r"model\.keras|bundle\.json|provenance\.json|config\.yaml"
                       r"|MODEL_CARD\.md|MODEL_CARD_confusions\.jpg", r"bundle\.json")
ASPECTS = ("stretch",)  # how a photo becomes a square: stretched, never cropped or padded
INPUT_RANGES = ((0, 255),)
CHANNELS = ("RGB",)
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class BundleSpec:
    """How to feed the model and read its output; saved as `bundle.json`."""

    model_name: str
    class_names: list[str]
    image_size: int
    output: str  # "sigmoid" (one unit, P(class 1)) or "softmax" (one unit per class)
    temperature: float = 1.0  # calibration of the model's probabilities (pawnet.trust.calibration)
    min_confidence: float = 0.0  # below this top probability a photo is "unsure"
    ood_threshold: float | None = None  # set: the last output column is an OOD score
    min_side: int = 0  # a photo whose shorter side is below this is "unsure" (too small)
    resize_method: str = RESIZE_METHOD
    aspect: str = "stretch"
    input_range: tuple[int, int] = (0, 255)
    channels: str = "RGB"
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_range"] = list(self.input_range)
        return data

    def check(self, where: Path | str) -> None:
        """Refuse what this pawnet cannot honour: an unknown output kind, or preprocessing
        that its decoder does not do."""
        problem = _spec_problem(self)
        if problem:
            raise BundleError(f"{where} is damaged ({problem}). Try: retrain, or restore it")
        for key, value, allowed in (("resize_method", self.resize_method, tuple(RESIZE_METHODS)),
                                    ("aspect", self.aspect, ASPECTS),
                                    ("input_range", self.input_range, INPUT_RANGES),
                                    ("channels", self.channels, CHANNELS)):
            if value not in allowed:
                raise BundleError(
                    f"{where} asks for {key} {value!r}, which this pawnet cannot do; it does "
                    f"{', '.join(map(str, allowed))}. Try: upgrade pawnet, or retrain the model"
                )


def _spec_problem(spec: BundleSpec) -> str:
    """What is wrong with a `bundle.json`'s types and values, or "" when nothing is."""
    names = spec.class_names
    if not isinstance(spec.model_name, str) or not spec.model_name:
        return f"model_name must be a non-empty string, not {spec.model_name!r}"
    if not (isinstance(names, list) and all(isinstance(n, str) and n.strip() for n in names)):
        return f"class_names must be a list of non-empty strings, not {str(names)[:60]!r}"
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        return f"class_names lists {', '.join(map(repr, twice))} more than once"
    if type(spec.image_size) is not int or not 8 <= spec.image_size <= MAX_IMAGE_SIZE:
        return f"image_size must be a whole number from 8 to {MAX_IMAGE_SIZE}, " \
               f"not {spec.image_size!r}"
    if (isinstance(spec.temperature, bool) or not isinstance(spec.temperature, int | float)
            or not 0.01 <= spec.temperature <= 100):
        return f"temperature must be a number from 0.01 to 100, not {spec.temperature!r}"
    try:
        check_confidence(spec.min_confidence)
    except ConfigError:
        return f"min_confidence must be a number from 0 to 1, not {spec.min_confidence!r}"
    if type(spec.min_side) is not int or not 0 <= spec.min_side <= MAX_IMAGE_SIZE:
        return f"min_side must be a whole number from 0 to {MAX_IMAGE_SIZE}, " \
               f"not {spec.min_side!r}"
    if spec.ood_threshold is not None and (isinstance(spec.ood_threshold, bool) or not
                                           isinstance(spec.ood_threshold, int | float)):
        return f"ood_threshold must be a number or null, not {spec.ood_threshold!r}"
    if spec.output not in ("sigmoid", "softmax"):
        return f"output must be sigmoid or softmax, not {str(spec.output)[:30]!r}"
    if len(names) < 2 or (spec.output == "sigmoid" and len(names) != 2):
        return f"{len(names)} classes with {spec.output} output"
    return ""


def check_confidence(value: object) -> float:
    """A minimum confidence, checked: a number from 0 to 1. The one check of it, for the
    bundle's own and for one given to `pawnet.load` (the CLI's, the server's).

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"min_confidence must be a number from 0 to 1 (0: never unsure), "
                          f"received: {value!r}")
    return float(value)


def split_outputs(out: np.ndarray, spec: BundleSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """A bundle model's outputs `(N, units)` as class probabilities `(N, classes)` and OOD
    scores `(N,)`, or None for a model without them."""
    out = np.asarray(out)
    if spec.ood_threshold is None:
        return class_probabilities(out, spec.output), None
    return class_probabilities(out[:, :-1], spec.output), out[:, -1].astype(np.float64)


def class_probabilities(out: np.ndarray, output: str) -> np.ndarray:
    """A model's raw outputs `(N, units)` as one probability column per class: a sigmoid
    model's single column P(class 1) becomes [1 - p, p]."""
    out = np.asarray(out, dtype=np.float64)
    return np.concatenate([1.0 - out, out], axis=1) if output == "sigmoid" else out


class Bundle:
    """A model with everything needed to use it; the Keras model loads on first use, so a
    runtime with a converted file cached never needs TensorFlow.

    `path` is the bundle folder (None for a built-in model), and `run_dir` the training run
    that wrote it, when there is one with its split manifest.
    """

    def __init__(self, spec: BundleSpec, provenance: dict[str, Any] | None = None,
                 path: Path | None = None, *, model: Any = None,
                 build: Callable[[], Any] | None = None, fingerprint: str = ""):
        self.spec = spec
        self.provenance = provenance or {}
        self.path = path
        self._model = model
        self._build = build
        self.fingerprint = fingerprint or _digest(json.dumps(spec.to_json()).encode())

    @property
    def model(self):  # keras.Model
        if self._model is None:
            if self._build is None:
                raise BundleError("this bundle has no model to load")
            self._model = self._build()
        return self._model

    @property
    def run_dir(self) -> Path | None:
        if self.path is None or self.path.name != BUNDLE:
            return None
        run = RunFolder(self.path.parent)
        return run.path if run.manifest.exists() else None


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:20]


def _without_training_state(model):
    """The model alone, without its optimizer, whose slots would triple the file."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = model.__class__.from_config(model.get_config())  # clone_model would compile it
    copy.set_weights(model.get_weights())
    return copy


def save_bundle(folder: str | Path, model, spec: BundleSpec, provenance: dict[str, Any],
                config_yaml: str = "") -> Path:
    """Write a bundle atomically: everything goes to a temporary folder that is then renamed.

    Returns:
        The bundle folder.
    """
    folder = Path(folder)
    with atomic_path(folder, BUNDLE_OUTPUT) as tmp:
        tmp.mkdir(parents=True)
        _without_training_state(model).save(tmp / "model.keras")
        (tmp / "bundle.json").write_text(json.dumps(spec.to_json(), indent=2) + "\n")
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if config_yaml:
            (tmp / "config.yaml").write_text(config_yaml)
    return folder


def _bundle_dir(path: Path) -> Path:
    """The bundle folder meant by a run folder (holding `bundle/`) or a bundle folder."""
    if (RunFolder(path).bundle / "bundle.json").exists():
        return RunFolder(path).bundle
    if (path / "bundle.json").exists():
        return path
    if not path.exists():
        raise BundleError(
            f"no model at {path}. Try: a run folder from `pawnet train` (e.g. runs/train), "
            "its bundle/ folder, or imagenet-catdog"
        )
    if path.is_dir() and RunFolder(path).checkpoints.is_dir():
        raise BundleError(
            f"{path} holds an unfinished training run without a bundle. "
            f"Try: pawnet train --resume {path}"
        )
    raise BundleError(f"{path} is not a pawnet run or bundle folder (no bundle.json in it)")


def read_json(path: Path) -> Any:
    """A run's or bundle's JSON file, never waiting on a pipe named like it.

    Raises:
        BundleError: missing, unreadable or not JSON.
    """
    try:
        return json.loads(read_text_file(path))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is damaged ({exc}). Try: retrain, or restore it") from None


def read_spec(bundle_dir: Path) -> BundleSpec:
    """The bundle's `bundle.json`, checked.

    Raises:
        BundleError: damaged, from another format version, or asking for preprocessing
            this pawnet cannot do.
    """
    path = bundle_dir / "bundle.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise BundleError(f"{path} is damaged (expected a JSON object)")
    version = data.get("format_version")
    if version not in READABLE_FORMATS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        fix = "upgrade pawnet" if newer else "retrain the model with this pawnet"
        raise BundleError(
            f"{path} has bundle format {version!r}; this pawnet reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}. Try: {fix}"
        )
    try:
        spec = BundleSpec(**{**data, "input_range": tuple(data["input_range"]),
                             "format_version": FORMAT_VERSION})
    except (TypeError, KeyError) as exc:
        raise BundleError(f"{path} is damaged ({exc})") from None
    spec.check(path)
    return spec


def _load_keras(bundle_dir: Path, spec: BundleSpec):
    from pawnet.quiet import import_quietly

    import_quietly()
    import keras

    # register the layers a saved model may hold: keras.applications preprocessing, OOD score
    import pawnet.models.keras_apps
    import pawnet.models.ood  # noqa: F401

    model_path = bundle_dir / "model.keras"
    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged zip/h5
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{model_path} is damaged and cannot be loaded ({first})") from None
    check_io(bundle_dir, spec, model.outputs[0].shape[-1], tuple(model.inputs[0].shape[1:3]))
    return model


def check_io(where: Path | str, spec: BundleSpec, units: int, side: tuple) -> None:
    """Refuse a model whose output units or input side do not fit its `bundle.json`."""
    expected = (1 if spec.output == "sigmoid" else len(spec.class_names)) \
        + (spec.ood_threshold is not None)
    if units != expected:
        with_ood = " and an OOD score" if spec.ood_threshold is not None else ""
        raise BundleError(
            f"{where} is inconsistent: the model has {units} outputs but bundle.json "
            f"lists {len(spec.class_names)} classes with {spec.output} output{with_ood}"
        )
    if tuple(side) != (spec.image_size, spec.image_size):
        raise BundleError(f"{where} is inconsistent: the model takes {side} pixels but "
                          f"bundle.json says image_size {spec.image_size}")


def _load_folder(bundle_dir: Path) -> Bundle:
    spec = read_spec(bundle_dir)
    model_path = bundle_dir / "model.keras"
    if not model_path.exists():
        raise BundleError(f"{model_path} is missing. Try: retrain, or restore the bundle")
    provenance_path = bundle_dir / "provenance.json"
    provenance = read_json(provenance_path) if provenance_path.exists() else {}
    if not isinstance(provenance, dict):
        raise BundleError(f"{provenance_path} is damaged (expected a JSON object, found "
                          f"{type(provenance).__name__}). Try: retrain, or restore it")
    try:
        fingerprint = _digest(model_path.read_bytes(), (bundle_dir / "bundle.json").read_bytes())
    except OSError as exc:
        raise BundleError(f"{model_path} cannot be read ({exc.strerror})") from None
    return Bundle(spec, provenance, bundle_dir,
                  build=lambda: _load_keras(bundle_dir, spec), fingerprint=fingerprint)


def resolve(model: str | Path) -> Bundle:
    """Load the model that `model` names: a run folder, a bundle folder, or a built-in
    model (`imagenet-catdog`; a folder of that name wins).

    Raises:
        BundleError: nothing there, a damaged bundle, one from another format version, or
            a model and bundle.json that do not fit together.
    """
    if Path(model).exists():
        return _load_folder(_bundle_dir(Path(model)))
    from pawnet.quiet import import_quietly

    import_quietly()
    from pawnet.models.registry import find_builtin

    builtin = find_builtin(str(model))
    if builtin is None:
        return _load_folder(_bundle_dir(Path(model)))
    spec = BundleSpec(model_name=builtin.name, class_names=list(builtin.classes),
                      image_size=builtin.image_size, output="softmax")
    return Bundle(spec, {"builtin": builtin.name}, build=builtin.build,
                  fingerprint=_digest(f"{builtin.name} {builtin.version}".encode()))
