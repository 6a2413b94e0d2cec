"""`pawnet explain`: Grad-CAM heat-maps, which part of a photo drove its label.

Grad-CAM (Selvaraju et al., 2017) weights the last convolutional feature maps by the mean
gradient of the class score over each map, sums them, and keeps the positive part. It
works for from-scratch models, EfficientNet-Lite transfer models and the built-in model:
models whose last feature maps are in one plain (non-nested) convolutional network.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pawnet.errors import ConfigError
from pawnet.run_folder import RunFolder
from pawnet.storage import Output

EXPLAIN_OUTPUT = Output("explain", r".+\.cam\.(png|npy)", r".+\.cam\.(png|npy)")


@dataclass(frozen=True)
class _Split:
    """The model cut at its last feature maps: pixels -> maps, maps -> class outputs."""

    to_maps: Any
    from_maps: Any


def _flat_split(model) -> _Split | None:
    """Cut a plain functional model after its last layer with 4-D output."""
    import keras

    if any(isinstance(layer, keras.Model) for layer in model.layers):
        return None
    last = next((layer for layer in reversed(model.layers)
                 if len(layer.output.shape) == 4), None)
    if last is None:
        return None
    names = {layer.name for layer in model.layers}
    classes = model.get_layer("predictions").output if "predictions" in names \
        else model.outputs[0]  # not the OOD score column
    return _Split(keras.Model(model.inputs[0], last.output), keras.Model(last.output, classes))


def split_at_feature_maps(model) -> _Split:
    """The model as pixels -> last feature maps -> class outputs (the OOD column left out).

    Raises:
        ConfigError: the model's feature maps are not in one plain network (joined
            backbones, keras.applications models).
    """
    import keras

    flat = _flat_split(model)
    if flat is not None:
        return flat
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    inner = _flat_split(nested[0]) if nested else None
    if inner is None:
        raise ConfigError(f"explain works for from-scratch, single EfficientNet-Lite and "
                          f"built-in models; {model.name} keeps its feature maps in nested "
                          "networks. Try: a model such as efficientnet-lite0")
    after = model.layers[model.layers.index(nested[0]) + 1:]
    tail = [layer for layer in after if layer.name not in ("ood_score", "outputs_and_ood_score")]

    def from_maps(maps):
        x = inner.from_maps(maps)
        for layer in tail:
            x = layer(x)
        return x

    return _Split(inner.to_maps, from_maps)


def grad_cam(model, pixels: np.ndarray, class_index: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heat-maps of images `(N, s, s, 3)` uint8 for a class (default: each image's
    most probable), at the feature maps' resolution, scaled to 0..1.

    Returns:
        (maps `(N, h, w)`, the model's class outputs `(N, units)`).
    """
    import tensorflow as tf

    split = split_at_feature_maps(model)
    images = tf.convert_to_tensor(pixels, tf.float32)
    maps = split.to_maps(images, training=False)
    with tf.GradientTape() as tape:
        tape.watch(maps)
        out = split.from_maps(maps)
        if out.shape[-1] == 1:  # sigmoid: P(class 1); class 0's score is its negative
            first = out[:, 0] < 0.5 if class_index is None else class_index == 0
            score = tf.where(first, -out[:, 0], out[:, 0])
        else:
            chosen = (tf.argmax(out, axis=-1) if class_index is None
                      else tf.fill([tf.shape(out)[0]], tf.constant(class_index, tf.int64)))
            score = tf.gather(out, chosen, axis=1, batch_dims=1)
    grads = tape.gradient(score, maps)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1)).numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0), np.asarray(out)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One heat-map resized (bilinear) to `size` = (width, height), values kept in 0..1."""
    from PIL import Image

    image = Image.fromarray(cam.astype(np.float32), mode="F")
    return np.clip(np.asarray(image.resize(size, Image.Resampling.BILINEAR)), 0.0, 1.0)


def blend(pixels: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """An RGB image `(h, w, 3)` uint8 with a heat-map (any size, 0..1) blended over it."""
    import matplotlib
    from PIL import Image

    full = upsample(cam, (pixels.shape[1], pixels.shape[0]))
    colours = (matplotlib.colormaps["jet"](full)[..., :3] * 255).astype(np.uint8)
    return np.asarray(Image.blend(Image.fromarray(pixels), Image.fromarray(colours), 0.45))


def overlay(photo: Path | str, cam: np.ndarray, path: Path) -> np.ndarray:
    """Write the photo with its heat-map blended over it (PNG), at the photo's size shrunk
    to at most `PREVIEW_SIZE` px on its longer side; returns the heat-map at that size."""
    from PIL import Image

    from pawnet.data.images import load_preview
    from pawnet.storage import atomic_write_bytes

    pixels = load_preview(photo)
    buffer = io.BytesIO()
    Image.fromarray(blend(pixels, cam)).save(buffer, "PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return upsample(cam, (pixels.shape[1], pixels.shape[0]))


def _out_folder(out: str | Path | None, run_dir: Path | None) -> Path:
    """The folder heat-maps go to, checked and marked as pawnet's before any work."""
    from pawnet.storage import check_output_folder

    default = RunFolder(run_dir or Path("runs")).explain
    folder = check_output_folder(out or default, EXPLAIN_OUTPUT)
    folder.mkdir(parents=True, exist_ok=True)
    EXPLAIN_OUTPUT.mark(folder)
    return folder


def explain(model: str | Path, photos: list[str], out: str | Path | None = None
            ) -> list[dict[str, Any]]:
    """Heat-maps of photos: per photo an overlay PNG and the raw heat-map (`.npy`, float32,
    0..1), both at the photo's own size shrunk to at most `PREVIEW_SIZE` (1024) px on its
    longer side, for the label the model gives it.

    Args:
        out: folder for the files. Defaults to `RUN_DIR/explain` (`runs/explain` for a
            built-in model). An existing folder must be an earlier explain folder; files
            of photos explained before are replaced, the others kept.

    Returns:
        Per photo: path, label, overlay and heatmap paths, or an error.

    Raises:
        BundleError: the model cannot be loaded.
        ConfigError: a model whose feature maps explain cannot reach, or `out` is a file
            or a folder that is not an explain folder.
    """
    from pawnet.errors import ImageError
    from pawnet.inference.predictor import load
    from pawnet.storage import atomic_write_bytes

    predictor = load(model, runtime="keras")
    split_at_feature_maps(predictor.model)  # refuse early
    out_dir = _out_folder(out, predictor.bundle.run_dir)
    results, used = [], set()
    for photo, prediction in zip(photos, predictor.predict(photos), strict=True):
        if prediction.error:
            results.append({"path": photo, "error": prediction.error})
            continue
        pixels = predictor.decode(photo)
        index = predictor.classes.index(prediction.top_class)
        cam, _ = grad_cam(predictor.model, pixels[None], index)
        stem = _free_stem(used, Path(photo).stem)
        overlay_path, heatmap_path = out_dir / f"{stem}.cam.png", out_dir / f"{stem}.cam.npy"
        try:
            heat = overlay(photo, cam[0], overlay_path).astype(np.float32)
        except (ImageError, OSError) as exc:  # changed or gone since it was predicted
            results.append({"path": photo, "error": str(exc)})
            continue
        buffer = io.BytesIO()
        np.save(buffer, heat)
        atomic_write_bytes(heatmap_path, buffer.getvalue())
        results.append({"path": photo, "label": prediction.label,
                        "reason": prediction.reason, "explained_class": prediction.top_class,
                        "overlay": str(overlay_path), "heatmap": str(heatmap_path),
                        "heatmap_size": [heat.shape[1], heat.shape[0]]})
    return results


def _free_stem(used: set[str], stem: str) -> str:
    """`stem`, or `stem-2`, `stem-3`, ... when an earlier photo of this call had that name."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


def explained(predictor, prediction, pixels: np.ndarray) -> dict[str, Any]:
    """A prediction with its Grad-CAM for the most probable class (see `answer`), for the
    web service."""
    cam, _ = grad_cam(predictor.model, pixels[None],
                      predictor.classes.index(prediction.top_class))
    return answer(prediction, pixels, cam[0])


def answer(prediction, pixels: np.ndarray, cam: np.ndarray) -> dict[str, Any]:
    """A prediction with its heat-map: the map at the feature maps' resolution (rows of
    0..1) and the photo as the model saw it with the map over it (a PNG data URL)."""
    import base64

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(blend(pixels, cam)).save(buffer, "PNG")
    return {**prediction.to_dict(), "explained_class": prediction.top_class,
            "heatmap": np.round(cam, 4).tolist(),
            "overlay": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}
