"""`pawnet explain`, the report's gallery, `/v1/explain` and the studio page: a photo's
heat-map (`reporting.heatmap`) drawn over it, as files or as an answer in JSON.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from pawnet.reporting.heatmap import HeatMaps, check_explainable, heat_maps, resize
from pawnet.run_folder import RunFolder
from pawnet.storage import Output

EXPLAIN_OUTPUT = Output("explain", r".+\.cam\.(png|npy)", r".+\.cam\.(png|npy)")


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One heat-map resized (bilinear) to `size` = (width, height), values kept in 0..1."""
    return np.minimum(resize(cam, size), 1.0)


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
        ConfigError: a model with no convolutional feature maps, or `out` is a file
            or a folder that is not an explain folder.
    """
    from pawnet.errors import ImageError
    from pawnet.inference.predictor import load
    from pawnet.storage import atomic_write_bytes

    predictor = load(model, runtime="keras")
    check_explainable(predictor.model)  # refuse before any file is written
    out_dir = _out_folder(out, predictor.bundle.run_dir)
    results, used = [], set()
    for photo, prediction in zip(photos, predictor.predict(photos), strict=True):
        if prediction.error:
            results.append({"path": photo, "error": prediction.error})
            continue
        pixels = predictor.decode(photo)
        index = predictor.classes.index(prediction.top_class)
        found = heat_maps(predictor.model, pixels[None], index)
        stem = _free_stem(used, Path(photo).stem)
        overlay_path, heatmap_path = out_dir / f"{stem}.cam.png", out_dir / f"{stem}.cam.npy"
        try:
            heat = overlay(photo, found.maps[0], overlay_path).astype(np.float32)
        except (ImageError, OSError) as exc:  # changed or gone since it was predicted
            results.append({"path": photo, "error": str(exc)})
            continue
        buffer = io.BytesIO()
        np.save(buffer, heat)
        atomic_write_bytes(heatmap_path, buffer.getvalue())
        results.append({"path": photo, "label": prediction.label,
                        "reason": prediction.reason, "explained_class": prediction.top_class,
                        "overlay": str(overlay_path), "heatmap": str(heatmap_path),
                        "heatmap_size": [heat.shape[1], heat.shape[0]],
                        "method": found.method, "resolution": found.resolution})
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
    """A prediction with its heat-map for the most probable class (see `answer`), for the
    web service and the studio."""
    found = heat_maps(predictor.model, pixels[None],
                      predictor.classes.index(prediction.top_class))
    return answer(prediction, pixels, found, 0)


def answer(prediction, pixels: np.ndarray, found: HeatMaps, i: int) -> dict[str, Any]:
    """A prediction with its heat-map (photo `i` of `found`): the map at its own resolution
    (rows of 0..1, `resolution` [rows, columns], `method`) and the photo as the model saw
    it with the map over it (a PNG data URL)."""
    import base64

    from PIL import Image

    cam = found.maps[i]
    buffer = io.BytesIO()
    Image.fromarray(blend(pixels, cam)).save(buffer, "PNG")
    return {**prediction.to_dict(), "explained_class": prediction.top_class,
            "method": found.method, "resolution": found.resolution,
            "heatmap": np.round(cam, 4).tolist(),
            "overlay": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}
