"""Training settings: one flat, commented `Config`; the same words on the CLI, in YAML, in Python.

Every field is a `pawnet train` flag (`image_size` is `--image-size`), a YAML key of
`--config FILE` and a keyword of `pawnet.train`. `resolve_config` merges, in order of
priority: keyword arguments (CLI flags), a YAML file, the chosen model's own defaults, then
the defaults below. Unknown keys fail with a did-you-mean hint; types, ranges and choices
are checked once, here, from each field's declaration.
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

from pawnet.data.images import MAX_PIXELS
from pawnet.distribute import STARTUP_TIMEOUT_S, STRATEGIES
from pawnet.errors import ConfigError

AUGMENTATIONS = (
    "flip", "vflip", "crop", "zoom", "shear", "rotate", "translate", "contrast", "brightness",
)
_STRENGTHS = ("crop", "zoom", "shear", "rotate", "translate", "contrast", "brightness")
ALIASES = {"data": "photos"}  # the old spelling of a setting, still read from YAML files
# named sets of settings; what a user sets wins over them (docs/decisions.md, "Presets")
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"model": "efficientnet-lite0"},
    "best": {"model": "efficientnet-lite1+lite2"},
}


def setting(default: Any, help: str, *, range: tuple | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field that documents itself: its help text, and the range or choices
    that `check_fields` enforces. Lists are copied per instance."""
    metadata = {"help": help, "range": range, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    """Every setting of a training run. None means "the model's own default"."""

    # -- data
    photos: str | None = setting(None, "Folder of photos, in any supported layout.")
    labels: str | None = setting(None, "Labels file written by `pawnet studio` (path,label,"
                                 "time): relabel or exclude photos without changing them.")
    val_fraction: float = setting(0.2, "Share of photos held out for validation, when no "
                                  "validation folder is given.", range=(0.0, 0.9))
    test_fraction: float = setting(0.1, "Share of photos held out for the final test, when "
                                   "no test folder is given.", range=(0.0, 0.9))
    seed: int = setting(42, "Seeds the split, the shuffling, augmentation and initial "
                        "weights.")
    max_pixels: int = setting(MAX_PIXELS, "Larger images are skipped as possible "
                              "decompression bombs.", range=(1, 10**10))
    cache: str = setting("auto", "Where decoded images are kept after epoch 1.",
                         choices=("auto", "memory", "disk"))
    # -- model
    preset: str = setting("fast", "fast: efficientnet-lite0, seconds on a laptop CPU; best: "
                          "efficientnet-lite1+lite2, the most accurate, about 3x the time. "
                          "Settings given with it win over it.", choices=tuple(PRESETS))
    model: str = setting("efficientnet-lite0", "Architecture to train (see `pawnet models`).")
    image_size: int | None = setting(None, "Side of the square input in px; default: the "
                                     "model's.", range=(16, 1024))
    weights: str | None = setting(None, "Weights file of a keras:NAME backbone (its 'no top' "
                                  "file); default: Keras downloads the ImageNet weights.")
    # -- training
    epochs: int | None = setting(None, "Maximum epochs; default: the model's.",
                                 range=(1, 10_000))
    batch_size: int | None = setting(None, "Photos per step; default: the model's.",
                                     range=(1, 4096))
    lr: float | None = setting(None, "Peak learning rate; default: the model's.",
                               range=(1e-8, 10.0))
    lr_schedule: str = setting("cosine", "Cosine decay after a one-epoch warm-up, or "
                               "constant.", choices=("cosine", "constant"))
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay; 0 = plain Adam.",
                                  range=(0.0, 1.0))
    label_smoothing: float = setting(0.0, "Soften the one-hot targets.", range=(0.0, 0.5))
    precision: str = setting("auto", "Training from scratch in float32, or mixed (float16 "
                             "compute, float32 weights; the bundle is float32); auto: mixed on "
                             "a GPU.", choices=("auto", "float32", "mixed"))
    patience: int = setting(10, "Early stopping: epochs without a val_loss improvement.",
                            range=(1, 10_000))
    class_weight: str = setting("auto", "Weight classes when their counts are imbalanced.",
                                choices=("auto", "none"))
    # -- transfer learning (pretrained models only)
    feature_views: int = setting(0, "Augmented views per training photo added as feature "
                                 "rows.", range=(0, 20))
    fine_tune: int = setting(0, "Unfreeze this many top backbone blocks after the head; "
                             "0 = off.", range=(0, 100))
    fine_tune_epochs: int = setting(5, "Maximum epochs of fine-tuning.", range=(1, 10_000))
    fine_tune_lr: float = setting(1e-4, "Learning rate of fine-tuning.", range=(1e-8, 1.0))
    # -- when to say "unsure" (default: half the validation errors' share, >= 85% answered)
    max_error: float | None = setting(None, "Answer as many photos as possible with at most "
                                      "this share of the answers wrong on validation "
                                      "photos; the rest are unsure.", range=(0.0, 1.0))
    answer_share: float | None = setting(None, "Answer this share of the validation photos "
                                         "(the most confident); the rest are unsure.",
                                         range=(0.0, 1.0))
    # -- augmentation: which ones, then their strengths
    augment: list[str] = setting(["flip", "zoom", "rotate", "contrast"],
                                 "Augmentations, e.g. flip,zoom,shear, or none: "
                                 + ", ".join(AUGMENTATIONS) + ".")
    crop: float = setting(0.4, "Random resized crop keeping 1-crop to all of the area.",
                          range=(0.0, 0.9))
    zoom: float = setting(0.2, "Random zoom in/out by up to this fraction.", range=(0.0, 0.9))
    shear: float = setting(0.2, "Random shear intensity.", range=(0.0, 1.0))
    rotate: float = setting(0.05, "Random rotation, as a fraction of a full turn.",
                            range=(0.0, 0.5))
    translate: float = setting(0.1, "Random shift, as a fraction of the image side.",
                               range=(0.0, 0.9))
    contrast: float = setting(0.2, "Random contrast change.", range=(0.0, 1.0))
    brightness: float = setting(0.2, "Random brightness change.", range=(0.0, 1.0))
    # -- where to train (see docs/scaling.md)
    strategy: str = setting("auto", "tf.distribute strategy: one device; mirrored, every GPU "
                            "here; multi-worker, several machines from TF_CONFIG; auto picks.",
                            choices=STRATEGIES)
    workers: str | None = setting(None, "Multi-worker: every worker's HOST:PORT, "
                                  "comma-separated, the same on all (in place of TF_CONFIG). Each "
                                  "worker listens on its port on every network interface, "
                                  "with no authentication: keep the workers on an isolated "
                                  "network or behind a firewall.")
    worker_index: int | None = setting(None, "Multi-worker: this worker's place in --workers "
                                       "(0 is the chief, which writes the run folder).",
                                       range=(0, 10_000))
    startup_timeout: int = setting(STARTUP_TIMEOUT_S, "Multi-worker: seconds to wait for "
                                   "every worker to start before stopping with an error.",
                                   range=(1, 86_400))
    # -- output
    out: str | None = setting(None, "Run folder; default runs/train, runs/train2, ...")
    tensorboard: bool = setting(False, "Also write TensorBoard logs (Keras' own callback) to "
                                "RUN_DIR/tensorboard.")
    resume: str | None = setting(None, "Run folder to continue after its last finished "
                                 "epoch.")

    def augment_strengths(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in _STRENGTHS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f" Similar: {', '.join(close)}." if close else f" Allowed: {', '.join(FIELDS)}."
    return ConfigError(f"'{key}' is not a pawnet setting.{hint}")


def coerce_field(cls: type, key: str, value: Any) -> Any:
    """Parse `value` into the type declared for `cls.key` (no eval, explicit conversions)."""
    hint = typing.get_type_hints(cls)[key]
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none")):
        if optional:
            return None
        raise ConfigError(f"{key} needs a value, received: None")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
            return words[str(value).strip().lower()]
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
        if typing.get_origin(base) in (list, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            return typing.get_origin(base)(str(i).strip() for i in items if str(i).strip())
    except (TypeError, ValueError, KeyError):
        pass
    raise ConfigError(f"{key} must be {getattr(base, '__name__', base)}, received: {value!r}")


def check_fields(obj: Any) -> None:
    """Enforce the `range` and `choices` that each `setting` declares."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        low_high, choices = f.metadata.get("range"), f.metadata.get("choices")
        if low_high and value is not None and not low_high[0] <= value <= low_high[1]:
            raise ConfigError(f"{f.name} must be between {low_high[0]} and {low_high[1]}, "
                              f"received: {value}")
        if choices and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, "
                              f"received: {value!r}")


def _check(cfg: Config) -> None:
    check_fields(cfg)
    if cfg.val_fraction + cfg.test_fraction >= 0.95:
        raise ConfigError(
            "val_fraction + test_fraction leaves almost nothing to train on, received: "
            f"{cfg.val_fraction} + {cfg.test_fraction}. Try: keep their sum below 0.5"
        )
    if cfg.max_error is not None and cfg.answer_share is not None:
        raise ConfigError("max_error and answer_share are two ways to choose when to say "
                          "unsure; give one. Try: --max-error 0.01 or --answer-share 0.95")
    augment = [name.lower() for name in cfg.augment]
    augment = [] if augment == ["none"] else augment
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


def _build(values: dict[str, Any]) -> Config:
    cfg = Config()
    for key, value in values.items():
        setattr(cfg, key, coerce_field(Config, key, value))
    _check(cfg)
    return cfg


def resolve_config(config: str | Path | dict[str, Any] | None = None,
                   **settings: Any) -> Config:
    """Build the validated settings of a run, with the chosen model's own defaults filled in.

    Args:
        config: path of a YAML file, or a dict of settings. Defaults to None (no file).
        **settings: any `Config` field; they win over `config`. A value of None means
            "not given".

    Returns:
        A validated `Config` whose image_size, epochs, batch_size and lr are set.

    Raises:
        ConfigError: unknown key, wrong type, value out of range, unknown model.

    >>> resolve_config(model="tutorial-a-cnn", epochs=3).image_size
    150
    """
    from pawnet.models.registry import get_model_spec

    values = read_config_file(config) if isinstance(config, str | Path) else dict(config or {})
    values.update({k: v for k, v in settings.items() if v is not None})
    values = {ALIASES.get(k, k): v for k, v in values.items()}
    for key in values:
        if key not in FIELDS:
            raise _unknown_key(key)
    given = _build(values)
    chosen = {key: getattr(given, key) for key in values if getattr(given, key) is not None}
    chosen = {**PRESETS[given.preset], **chosen}
    return _build({**get_model_spec(chosen["model"]).defaults(), **chosen})
