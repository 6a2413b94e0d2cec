"""Training settings: one flat, commented `Config`; the same words on the CLI, in YAML, in Python.

`resolve_config` merges, in order of priority: keyword arguments (CLI flags), a YAML file
(`--config FILE`), then the defaults below. Unknown keys fail with a did-you-mean hint; types
and ranges are checked once, here.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pawnet.errors import ConfigError
from pawnet.images import MAX_PIXELS

AUGMENTATIONS = (
    "flip", "vflip", "crop", "zoom", "shear", "rotate", "translate", "contrast", "brightness",
)
_STRENGTHS = ("crop", "zoom", "shear", "rotate", "translate", "contrast", "brightness")


@dataclass
class Config:
    """Every setting of a training run. A value of None means "the model's own default"."""

    # -- data
    data: str | None = None  # (path) folder of photos, in any supported layout
    val_fraction: float = 0.2  # (0-1) share of photos held out for validation, when not given
    test_fraction: float = 0.1  # (0-1) share held out for the final test, when not given
    seed: int = 42  # (int) seeds the split, the shuffling, augmentation and initial weights
    max_pixels: int = MAX_PIXELS  # (int) larger images are skipped as possible bombs
    cache: str = "auto"  # (auto|memory|disk) where decoded images are kept after epoch 1
    # -- model
    model: str = "efficientnet-lite0"  # (name) architecture, see `pawnet models`
    image_size: int | None = None  # (px) side of the square input; None = model's default
    # -- training
    epochs: int | None = None  # (int) maximum epochs; None = model's default
    batch_size: int | None = None  # (int) photos per step; None = model's default
    lr: float | None = None  # (float) peak learning rate; None = model's default
    lr_schedule: str = "cosine"  # (cosine|constant) cosine decay after a one-epoch warm-up
    weight_decay: float = 0.0  # (float) AdamW decoupled weight decay; 0 = plain Adam
    label_smoothing: float = 0.0  # (0-1) soften the one-hot targets
    patience: int = 10  # (epochs) early stopping: epochs without val_loss improvement
    class_weight: str = "auto"  # (auto|none) weight classes when their counts are imbalanced
    # -- transfer learning (pretrained models only)
    feature_views: int = 0  # (int) augmented views per training photo added as feature rows
    fine_tune: int = 0  # (blocks) unfreeze this many top backbone blocks after the head; 0 = off
    fine_tune_epochs: int = 5  # (int) maximum epochs of fine-tuning
    fine_tune_lr: float = 1e-4  # (float) learning rate of fine-tuning
    # -- augmentation: which ones, then their strengths
    augment: list[str] = field(default_factory=lambda: ["flip", "zoom", "rotate", "contrast"])
    crop: float = 0.4  # (0-0.9) random resized crop keeping 1-crop to all of the area
    zoom: float = 0.2  # (0-1) random zoom in/out by up to this fraction
    shear: float = 0.2  # (0-1) random shear intensity
    rotate: float = 0.05  # (0-0.5) random rotation, as a fraction of a full turn
    translate: float = 0.1  # (0-1) random shift, as a fraction of the image side
    contrast: float = 0.2  # (0-1) random contrast change
    brightness: float = 0.2  # (0-1) random brightness change
    # -- output
    out: str | None = None  # (path) run folder; default runs/train, runs/train2, ...
    resume: str | None = None  # (path) run folder to continue from its last finished epoch

    def augment_strengths(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in _STRENGTHS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_RANGES = {
    "val_fraction": (0.0, 0.9),
    "test_fraction": (0.0, 0.9),
    "image_size": (16, 1024),
    "epochs": (1, 10_000),
    "batch_size": (1, 4096),
    "lr": (1e-8, 10.0),
    "weight_decay": (0.0, 1.0),
    "label_smoothing": (0.0, 0.5),
    "patience": (1, 10_000),
    "feature_views": (0, 20),
    "fine_tune": (0, 100),
    "fine_tune_epochs": (1, 10_000),
    "fine_tune_lr": (1e-8, 1.0),
    "max_pixels": (1, 10**10),
    "crop": (0.0, 0.9),
    "zoom": (0.0, 0.9),
    "shear": (0.0, 1.0),
    "rotate": (0.0, 0.5),
    "translate": (0.0, 0.9),
    "contrast": (0.0, 1.0),
    "brightness": (0.0, 1.0),
}
_CHOICES = {
    "cache": ("auto", "memory", "disk"),
    "lr_schedule": ("cosine", "constant"),
    "class_weight": ("auto", "none"),
}


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f" Similar: {', '.join(close)}." if close else f" Allowed: {', '.join(FIELDS)}."
    return ConfigError(f"'{key}' is not a pawnet setting.{hint}")


def _coerce(key: str, value: Any) -> Any:
    """Parse `value` into the type declared for `key` (no eval, explicit conversions only)."""
    hint = typing.get_type_hints(Config)[key]
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none")):
        if optional:
            return None
        raise ConfigError(f"{key} needs a value, received: None")
    try:
        if base is bool:
            raise TypeError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            return str(value)
        if typing.get_origin(base) is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(i).strip().lower() for i in items if str(i).strip()]
    except (TypeError, ValueError):
        pass
    raise ConfigError(
        f"{key} must be {getattr(base, '__name__', base)}, received: {value!r}"
    )


def _validate(cfg: Config) -> None:
    for key, (low, high) in _RANGES.items():
        value = getattr(cfg, key)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{key} must be between {low} and {high}, received: {value}")
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(
                f"{key} must be one of {', '.join(allowed)}, received: {getattr(cfg, key)!r}"
            )
    if cfg.val_fraction + cfg.test_fraction >= 0.95:
        raise ConfigError(
            "val_fraction + test_fraction leaves almost nothing to train on, received: "
            f"{cfg.val_fraction} + {cfg.test_fraction}. Try: keep their sum below 0.5"
        )
    augment = [] if cfg.augment == ["none"] else cfg.augment
    for name in augment:
        if name not in AUGMENTATIONS:
            close = difflib.get_close_matches(name, AUGMENTATIONS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown augmentation '{name}'; allowed: {', '.join(AUGMENTATIONS)} or none."
                + hint
            )
    cfg.augment = augment


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict of settings (not yet validated)."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}. Try: key: value") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path} must hold 'key: value' lines, received a {type(loaded).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def resolve_config(
    config: str | Path | dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    **overrides: Any,
) -> Config:
    """Build a validated `Config` from a YAML file or dict plus keyword overrides.

    Args:
        config: path of a YAML file, or a dict of settings. Defaults to None (defaults only).
        defaults: settings that replace the built-in defaults, below `config` (a model's
            own recipe). Defaults to None.
        **overrides: settings that win over `config`; a value of None means "not given".

    Returns:
        A validated `Config`.

    Raises:
        ConfigError: unknown key, wrong type, value out of range.

    >>> resolve_config(epochs=3).epochs
    3
    """
    values = dict(defaults or {})
    values.update(read_config_file(config) if isinstance(config, str | Path) else config or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = Config()
    for key, value in values.items():
        if key not in FIELDS:
            raise _unknown_key(key)
        setattr(cfg, key, _coerce(key, value))
    _validate(cfg)
    return cfg
