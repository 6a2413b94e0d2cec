"""The model bundle: the one folder that predict, evaluate, serve and export read.

```
bundle/
  model.keras        inference model: raw 0-255 RGB in, class probabilities out
  bundle.json        format version, class names (index order), preprocessing, output kind
  provenance.json    versions, data fingerprint, counts per class, split seed, final metrics
  config.yaml        the fully resolved training settings
```
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pawnet.errors import BundleError
from pawnet.images import RESIZE_METHOD
from pawnet.storage import atomic_path

FORMAT_VERSION = 1
BUNDLE_DIRNAME = "bundle"


@dataclass(frozen=True)
class BundleSpec:
    """How to feed the model and read its output; saved as `bundle.json`."""

    model_name: str
    class_names: list[str]
    image_size: int
    output: str  # "sigmoid" (one unit, P(class 1)) or "softmax" (one unit per class)
    resize_method: str = RESIZE_METHOD
    aspect: str = "stretch"
    input_range: tuple[int, int] = (0, 255)
    channels: str = "RGB"
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_range"] = list(self.input_range)
        return data


def output_kind(model) -> str:
    return "sigmoid" if model.outputs[0].shape[-1] == 1 else "softmax"


def _without_training_state(model):
    """The model alone, without its optimizer: Adam's two slots per weight would triple
    the file (tutorial A: 228 MB -> 76 MB) and predict never uses them."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = model.__class__.from_config(model.get_config())  # clone_model would compile it
    copy.set_weights(model.get_weights())
    return copy


def save_bundle(
    folder: str | Path,
    model,
    spec: BundleSpec,
    provenance: dict[str, Any],
    config_yaml: str = "",
) -> Path:
    """Write a bundle atomically: everything goes to a temporary folder that is then renamed.

    Returns:
        The bundle folder.
    """
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        _without_training_state(model).save(tmp / "model.keras")
        (tmp / "bundle.json").write_text(json.dumps(spec.to_json(), indent=2) + "\n")
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if config_yaml:
            (tmp / "config.yaml").write_text(config_yaml)
    return folder


def find_bundle(ref: str | Path) -> Path:
    """Accept a run folder (holding `bundle/`) or a bundle folder; return the bundle folder."""
    path = Path(ref)
    if (path / BUNDLE_DIRNAME / "bundle.json").exists():
        return path / BUNDLE_DIRNAME
    if (path / "bundle.json").exists():
        return path
    if not path.exists():
        raise BundleError(
            f"no model at {path}. Try: a run folder from `pawnet train` (e.g. runs/train), "
            "its bundle/ folder, or imagenet-catdog"
        )
    if path.is_dir() and (path / "checkpoints").is_dir():
        raise BundleError(
            f"{path} holds an unfinished training run without a bundle. "
            f"Try: pawnet train --resume {path}"
        )
    raise BundleError(f"{path} is not a pawnet run or bundle folder (no bundle.json in it)")


def read_spec(bundle_dir: Path) -> BundleSpec:
    path = bundle_dir / "bundle.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is damaged ({exc}). Try: retrain, or restore it") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} is damaged (expected a JSON object)")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        fix = "upgrade pawnet" if newer else "retrain the model with this pawnet"
        raise BundleError(
            f"{path} has bundle format {version!r}; this pawnet reads format "
            f"{FORMAT_VERSION}. Try: {fix}"
        )
    try:
        spec = BundleSpec(**{**data, "input_range": tuple(data["input_range"])})
    except (TypeError, KeyError) as exc:
        raise BundleError(f"{path} is damaged ({exc})") from None
    if spec.output not in ("sigmoid", "softmax") or len(spec.class_names) < 2:
        raise BundleError(f"{path} is damaged (output {spec.output!r}, "
                          f"{len(spec.class_names)} classes)")
    return spec


def load_bundle(ref: str | Path):
    """Load a bundle's model and spec, checking that they fit together.

    `ref` is a run folder, a bundle folder, or the name of a built-in model
    (`imagenet-catdog`).

    Returns:
        `(keras.Model, BundleSpec)`.

    Raises:
        BundleError: missing, damaged, from another format version, or inconsistent.
    """
    import keras

    from pawnet.builtin import is_builtin, load_builtin

    if is_builtin(ref):
        return load_builtin(str(ref))
    bundle_dir = find_bundle(ref)
    spec = read_spec(bundle_dir)
    model_path = bundle_dir / "model.keras"
    if not model_path.exists():
        raise BundleError(f"{model_path} is missing. Try: retrain, or restore the bundle")
    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged zip/h5
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{model_path} is damaged and cannot be loaded ({first})") from None
    units = model.outputs[0].shape[-1]
    expected = 1 if spec.output == "sigmoid" else len(spec.class_names)
    if units != expected:
        raise BundleError(
            f"{bundle_dir} is inconsistent: the model has {units} outputs but bundle.json "
            f"lists {len(spec.class_names)} classes with {spec.output} output"
        )
    return model, spec
