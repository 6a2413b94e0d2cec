"""Transfer learning: a frozen pretrained backbone, features computed once, a new head.

Phase 1 runs every photo through the frozen backbone once (the slow part on a CPU, shown
with a progress bar), caches the pooled features per user, and trains only the small head
on them, so head epochs take well under a second. `feature_views` adds augmented views of
each training photo as extra feature rows. Phase 2 (`fine_tune` > 0) unfreezes the top
blocks and trains end to end on the image pipeline at a low learning rate, with batch
norm kept in inference mode. The bundle saves one model from raw pixels to probabilities.
"""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Callable, Sequence

import keras
import numpy as np

from pawnet.images import MAX_PIXELS, load_pixels
from pawnet.pipeline import batch_function, decode_ahead
from pawnet.storage import atomic_write_bytes, cache_dir

_SAVE_EVERY = 20  # batches between writes of the feature cache, so a kill loses little


class FeatureStore:
    """Plain-view backbone features per photo content hash, cached per user."""

    def __init__(self, backbone_id: str):
        self.path = cache_dir() / "features" / f"{backbone_id}.npz"
        self.features: dict[str, np.ndarray] = {}
        try:
            with np.load(self.path) as stored:
                self.features = {k: stored[k] for k in stored.files}
        except (OSError, ValueError, EOFError):
            self.features = {}  # missing or damaged: recompute

    def save(self) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **self.features)
        atomic_write_bytes(self.path, buffer.getvalue())


def backbone_id(backbone: keras.Model, variant: str, image_size: int) -> str:
    """Names a backbone's exact weights and input size, to key cached features."""
    digest = hashlib.sha256()
    for w in backbone.weights[:4] + backbone.weights[-4:]:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return f"{variant}-{image_size}px-{digest.hexdigest()[:12]}"


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="photo", file=sys.stdout,
                disable=not sys.stdout.isatty(), leave=False)


def extract_features(
    backbone: keras.Model,
    paths: Sequence[str],
    image_size: int,
    batch_size: int,
    *,
    augment: Callable | None = None,
    desc: str = "Extracting features",
    on_batch: Callable[[int, np.ndarray], None] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Pooled backbone features `(len(paths), dim)` of photos, optionally augmented first."""
    def decode(path: str) -> np.ndarray:
        return load_pixels(path, image_size, max_pixels or MAX_PIXELS)

    forward = batch_function(backbone)
    out = []
    with _progress(len(paths), desc) as bar:
        for i, (_, pixels) in enumerate(decode_ahead(paths, decode, batch_size)):
            batch = keras.ops.cast(np.stack(pixels), "float32")
            if augment is not None:
                batch = augment(batch)
            feats = forward(batch).numpy()
            out.append(feats)
            if on_batch:
                on_batch(i, feats)
            bar.update(len(feats))
    return np.concatenate(out) if out else np.zeros((0, backbone.output.shape[-1]), "float32")


def cached_features(
    backbone: keras.Model,
    store: FeatureStore,
    photos: Sequence,
    image_size: int,
    batch_size: int,
    desc: str,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Plain-view features of photos, computing only those not in the store yet."""
    todo = list({p.sha256: p for p in photos if p.sha256 not in store.features}.values())
    if todo:
        def keep(i: int, feats: np.ndarray) -> None:
            for photo, f in zip(todo[i * batch_size:], feats, strict=False):
                store.features[photo.sha256] = f
            if (i + 1) % _SAVE_EVERY == 0:
                store.save()

        extract_features(backbone, [p.path for p in todo], image_size, batch_size,
                         desc=desc, on_batch=keep, max_pixels=max_pixels)
        store.save()
    return np.stack([store.features[p.sha256] for p in photos])


def unfreeze_top_blocks(backbone: keras.Model, blocks: int) -> list[str]:
    """Make the top `blocks` blocks (and the head conv) trainable; batch norm stays frozen,
    so it keeps running in inference mode with its ImageNet statistics.

    Returns:
        Names of the layers made trainable.
    """
    numbers = sorted({int(layer.name.split("_")[0][5:]) for layer in backbone.layers
                      if layer.name.startswith("block")})
    chosen = {f"block{n}_" for n in numbers[-blocks:]} if blocks > 0 else set()
    backbone.trainable = True
    opened = []
    for layer in backbone.layers:
        top = layer.name.startswith(tuple(chosen)) or layer.name == "head_conv"
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = bool(top and not is_bn and layer.weights)
        if layer.trainable:
            opened.append(layer.name)
    return opened
