"""Features of photos from a frozen pretrained backbone, computed once and cached per user by
photo content: what training a head, fitting the OOD score, `pawnet data issues` and
`pawnet bench` all use.

`frozen_backbone` runs a model's backbone(s): the EfficientNet-Lite graph written straight
from the checkpoints for ONNX Runtime (`pawnet.models.lite_onnx`; no TensorFlow needed); a
`keras:NAME` backbone through `backbone_runtime`, the fastest runtime that agrees with Keras.
`extract_features` runs photos (or augmented views) through it; `cached_features` computes
only what the `FeatureStore` does not hold yet, and on several workers shares the work out.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pawnet.data.images import MAX_PIXELS, DecodeBudget, decode_ahead, load_pixels
from pawnet.distribute import Cluster, all_sum, gather_rows
from pawnet.inference.runtimes import (
    OnnxRuntime,
    Runtime,
    choose,
    conversion_failures,
    core_chunks,
    synthetic_images,
    threads,
)
from pawnet.logs import progress
from pawnet.models.spec import KERAS_PREFIX, ModelSpec
from pawnet.storage import atomic_write_bytes, atomic_write_text, cache_dir

if TYPE_CHECKING:
    import keras

SAVE_EVERY_S = 30.0  # at most this much extraction is lost to a kill; saves stay few


class FeatureStore:
    """Backbone features of one view (plain unless named) per photo content hash, cached
    per user. On disk: the hashes and one matrix of their rows, so that loading and saving
    take one read or write however many photos there are."""

    def __init__(self, backbone_id: str, view: str = ""):
        name = f"{backbone_id}-{view}" if view else backbone_id
        self.path = cache_dir() / "features" / f"{name}.npz"
        self.features: dict[str, np.ndarray] = {}
        self.saved_at = time.monotonic()
        try:
            with np.load(self.path) as stored:
                if stored.files == ["keys", "rows"]:
                    rows = stored["rows"]
                    self.features = dict(zip(stored["keys"].tolist(), rows, strict=True))
                else:  # the earlier layout: one array per photo
                    self.features = {k: stored[k] for k in stored.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            self.features = {}  # missing or damaged: recompute

    def save(self) -> None:
        buffer = io.BytesIO()
        keys = list(self.features)
        rows = (np.stack([self.features[k] for k in keys]) if keys
                else np.zeros((0, 0), np.float32))
        np.savez(buffer, keys=np.array(keys, dtype=str), rows=rows)
        atomic_write_bytes(self.path, buffer.getvalue())
        self.saved_at = time.monotonic()


@dataclass(frozen=True)
class FrozenBackbone:
    """A model's frozen feature extractor: the key of its cached features, the runtime that
    computes them, and their size."""

    key: str
    runtime: Runtime
    dim: int


def frozen_backbone(spec: ModelSpec, image_size: int, weights: str | None = None
                    ) -> FrozenBackbone:
    """The spec's backbone(s) ready to extract features: the Lite backbones written from
    their checkpoints for ONNX Runtime (`_lite_runtime`), without TensorFlow; a
    `keras:NAME` backbone built in Keras and converted."""
    if any(b.startswith(KERAS_PREFIX) for b in spec.backbones):
        from pawnet.models.pretrained import load_backbone

        backbone = load_backbone(spec, image_size, weights=weights)
        key = backbone_id(backbone, "+".join(spec.backbones), image_size)
        return FrozenBackbone(key, backbone_runtime(backbone, key),
                              int(backbone.output.shape[-1]))
    from pawnet.models.lite_onnx import graph_key

    key = graph_key(spec.backbones, image_size)
    return FrozenBackbone(key, _lite_runtime(spec.backbones, image_size, key),
                          1280 * len(spec.backbones))


def _lite_runtime(variants: tuple[str, ...], image_size: int, key: str) -> OnnxRuntime:
    """The Lite backbones' ONNX graph, written from their checkpoints once, with the call
    size measured here (the record). Always ONNX Runtime, whose features do not depend on
    how photos are batched, so a run gives the same numbers whatever its cache held
    (docs/decisions.md)."""
    folder = cache_dir() / "runtimes"
    path, record = folder / f"backbone-{key}.onnx", folder / f"backbone-{key}.json"
    try:
        return OnnxRuntime(path, photos_per_call=int(json.loads(record.read_text())
                                                     ["photos_per_call"]))
    except (KeyError, TypeError, *conversion_failures()):  # missing or damaged: remake it
        pass
    from pawnet.models import lite_onnx

    atomic_write_bytes(path, lite_onnx.build(variants, image_size))
    per_call = OnnxRuntime(path).fastest_call_size(synthetic_images(image_size)[:4])
    atomic_write_text(record, json.dumps({"photos_per_call": per_call}) + "\n")
    return OnnxRuntime(path, photos_per_call=per_call)


def backbone_id(backbone: keras.Model, variant: str, image_size: int) -> str:
    """Names a backbone's exact weights and input size, to key cached features."""
    import keras

    digest = hashlib.sha256()
    for w in backbone.weights[:4] + backbone.weights[-4:]:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    name = variant.replace(":", "-")  # keras:ResNet50 names a file
    return f"{name}-{image_size}px-{digest.hexdigest()[:12]}"


def backbone_runtime(backbone: keras.Model, key: str) -> Runtime:
    """The frozen backbone on the fastest runtime that agrees with Keras, converted once per
    backbone and image size and cached like the weights."""

    size = int(backbone.input.shape[1])
    return choose("auto", f"backbone-{key}", lambda: backbone, lambda: synthetic_images(size))


def extract_features(
    backbone: Runtime,
    paths: Sequence[str | bytes],
    image_size: int,
    batch_size: int,
    *,
    augment: Callable | None = None,
    desc: str = "Extracting features",
    on_batch: Callable[[int, np.ndarray], None] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Pooled backbone features `(len(paths), dim)` of photos, optionally augmented first.

    `backbone` is a runtime (see `backbone_runtime`); without augmentation, a runtime whose
    calls can overlap decodes and runs a few photos per core at a time, like `predict`.
    """
    budget = DecodeBudget.for_this_machine()

    def decode(path: str) -> np.ndarray:
        return load_pixels(path, image_size, max_pixels or MAX_PIXELS, budget=budget)

    single = getattr(backbone, "single_threaded", None)
    if single is not None and augment is None:
        runtime = single()

        def run(chunk: range) -> np.ndarray:
            return runtime(np.stack([decode(paths[i]) for i in chunk]))

        chunks = _map_threads(run, core_chunks(len(paths), runtime.photos_per_call))
        batches = _batched((row for chunk in chunks for row in chunk), batch_size)
    else:
        batches = (backbone(np.stack(pixels) if augment is None else
                            _augmented(augment, np.stack(pixels)))
                   for _, pixels in decode_ahead(paths, decode, batch_size))
    out = []
    with progress(len(paths), desc) as bar:
        for i, feats in enumerate(batches):
            out.append(feats)
            if on_batch:
                on_batch(i, feats)
            bar.update(len(feats))
    return np.concatenate(out) if out else np.zeros((0, 0), "float32")


def _augmented(augment: Callable, pixels: np.ndarray) -> np.ndarray:
    import keras

    return np.asarray(augment(keras.ops.cast(pixels, "float32")))


def _map_threads(func: Callable, items: Sequence) -> Iterator:
    """`func` over items on one thread per core, results in order, a few ahead."""
    with ThreadPoolExecutor(max_workers=threads()) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) > 4 * threads():
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _batched(rows: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def cached_features(
    backbone: Runtime,
    store: FeatureStore,
    photos: Sequence,
    image_size: int,
    batch_size: int,
    desc: str,
    max_pixels: int | None = None,
    view: Callable[[str], bytes] | None = None,
    cluster: tuple[Cluster, int] | None = None,
) -> np.ndarray:
    """Features of photos (of `view(path)`, the photo made into another image, when
    given), computing only those not in the store yet. On several workers, `cluster` is
    (the cluster, the feature size): the photos missing on any worker are shared out, each
    computes its share, then all get all of them."""
    cluster, dim = cluster or (None, 0)
    missing = np.array([p.sha256 not in store.features for p in photos], np.float64)
    if cluster is not None:
        missing = all_sum(cluster, missing)
    todo = list({p.sha256: p for p, m in zip(photos, missing, strict=True) if m}.values())
    mine = cluster.shard(todo) if cluster is not None else todo
    if mine:
        def keep(i: int, feats: np.ndarray) -> None:
            for photo, f in zip(mine[i * batch_size:], feats, strict=False):
                store.features[photo.sha256] = f
            if time.monotonic() - store.saved_at >= SAVE_EVERY_S:
                store.save()

        sources = [view(p.path) if view else p.path for p in mine]
        extract_features(backbone, sources, image_size, batch_size,
                         desc=desc, on_batch=keep, max_pixels=max_pixels)
    if cluster is not None and todo:
        rows = np.stack([store.features[p.sha256] for p in mine]) if mine else np.zeros((0, dim))
        every = gather_rows(cluster, rows.astype(np.float32), len(todo))
        store.features.update({p.sha256: f for p, f in zip(todo, every, strict=True)})
    if todo:
        store.save()
    return np.stack([store.features[p.sha256] for p in photos])
