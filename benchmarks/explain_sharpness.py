"""How sharply each heat-map method points at a small subject, and what it costs per photo.

The pasted-photo test: each real cat or dog photo (../shared/data/cvtricks/test/{cat,dog},
sorted, the first --photos of each) is stretched to a square of side round(600*sqrt(f))
and pasted into a 600x600 grey (128,128,128) canvas, for subject sizes f = 1/4, 1/10 and
1/20 of the canvas, at five positions: the four corners (20 px from the top or bottom
edge, and min(20, 300 - side) px from the left or right one, so 0 at 1/4) and the centre.
Each canvas is saved as PNG, decoded with `load_pixels` at the model's input size and
explained for its most probable class; the map is resized to 600x600 and scored by the
share of its mass inside the subject's box (a flat map scores f). With --decoy, an everyday
photo (../shared/data/ood_photos, sorted) is also pasted, same size, at the subject's
mirror image across the vertical mid-line (not on centre canvases), and the share inside
its box is the second number: a map that follows the animal keeps it near 0.

Per canvas, the model runs at the feature maps 1/4, 1/8, 1/16 and 1/32 of the input's side,
once each, plus the mirrored input at 1/8 and three inputs shifted by half a 1/32 cell
(edge-padded) at 1/32; every method is derived from those passes. ms/photo is the time of
the passes a method needs plus its own weighing (batch 1, after one warm-up pass per
stride), median over canvases.

    .venv/bin/python benchmarks/explain_sharpness.py RUN [MODEL...] [--photos 4]
    .venv/bin/python benchmarks/explain_sharpness.py imagenet-catdog --decoy --json out.json

Prints the command, each model's input size and feature-maps, then a table per model: per
method and subject size the mean share inside the subject's box (the lowest; with --decoy,
then the decoy's mean share and its highest), ms/photo, and canvases classified right.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

import pawnet
from pawnet.data.images import load_pixels
from pawnet.reporting import heatmap
from pawnet.reporting.text import aligned
from pawnet.storage import atomic_write_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CANVAS, GREY, MARGIN = 600, (128, 128, 128), 20
SIZES = {"1/4": 1 / 4, "1/10": 1 / 10, "1/20": 1 / 20}
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")
# pass name -> (stride, mirrored, shift in half cells (dy, dx))
PASSES = {"4": (4, False, (0, 0)), "8": (8, False, (0, 0)), "16": (16, False, (0, 0)),
          "32": (32, False, (0, 0)),
          "8m": (8, True, (0, 0)), "32x": (32, False, (0, 1)), "32y": (32, False, (1, 0)),
          "32xy": (32, False, (1, 1))}


def cam(pairs: list, method: str) -> np.ndarray:
    """The map of one photo from its passes' (maps, gradients) per network, 0..1."""
    return heatmap.combine([heatmap.weigh(a, g, method) for a, g in pairs])[0]


def grad_cam_pp(pairs: list) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al., 2018) with the usual closed-form alphas."""
    cams = []
    for a, g in pairs:
        denominator = 2 * g**2 + a.sum(axis=(1, 2), keepdims=True) * g**3
        alpha = g**2 / np.where(denominator != 0, denominator, 1.0)
        weights = (alpha * np.maximum(g, 0.0)).sum(axis=(1, 2), keepdims=True)
        cams.append(np.maximum((a * weights).sum(-1), 0.0) * a.shape[1] * a.shape[2])
    return heatmap.combine(cams)[0]


def shift(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`array` moved by (dy, dx) pixels along its first two axes, edges repeated."""
    pad = [(abs(dy), abs(dy)), (abs(dx), abs(dx))] + [(0, 0)] * (array.ndim - 2)
    padded = np.pad(array, pad, mode="edge")
    rows, cols = array.shape[:2]
    return padded[abs(dy) - dy:abs(dy) - dy + rows, abs(dx) - dx:abs(dx) - dx + cols]


def at_input(cam_map: np.ndarray, side: int) -> np.ndarray:
    """A map resized to the input's side and scaled to 0..1."""
    resized = heatmap.resize(cam_map, (side, side))
    return resized / max(float(resized.max()), 1e-12)


def shifted_back(p: dict, side: int, half: int) -> np.ndarray:
    """Grad-CAM at 1/32 averaged over the four shifted inputs, each map moved back."""
    maps = [shift(at_input(cam(p[k], "grad-cam"), side), -PASSES[k][2][0] * half,
                  -PASSES[k][2][1] * half) for k in ("32", "32x", "32y", "32xy")]
    return np.mean(maps, axis=0)


Method = Callable[[dict, int, int], np.ndarray]  # (passes, input side, half cell) -> map
METHODS: dict[str, tuple[tuple[str, ...], Method]] = {
    "grad-cam@32": (("32",), lambda p, s, h: cam(p["32"], "grad-cam")),
    "grad-cam@16": (("16",), lambda p, s, h: cam(p["16"], "grad-cam")),
    "grad-cam@8": (("8",), lambda p, s, h: cam(p["8"], "grad-cam")),
    "grad-cam++@32": (("32",), lambda p, s, h: grad_cam_pp(p["32"])),
    "layer-cam@32": (("32",), lambda p, s, h: cam(p["32"], "layer-cam")),
    "layer-cam@16": (("16",), lambda p, s, h: cam(p["16"], "layer-cam")),
    "layer-cam@8 (shipped)": (("8",), lambda p, s, h: cam(p["8"], "layer-cam")),
    "layer-cam@4": (("4",), lambda p, s, h: cam(p["4"], "layer-cam")),
    "layer-cam@8 tanh(2m)": (("8",), lambda p, s, h: np.tanh(2 * cam(p["8"], "layer-cam"))),
    "layer-cam@8 blur 1 cell": (("8",), lambda p, s, h: gaussian_filter(
        cam(p["8"], "layer-cam"), 1.0)),
    "layer-cam@8 +mirror": (("8", "8m"), lambda p, s, h: (
        cam(p["8"], "layer-cam") + cam(p["8m"], "layer-cam")[:, ::-1]) / 2),
    "grad-cam@32 +shifts": (("32", "32x", "32y", "32xy"), shifted_back),
    "layer-cam 8+16+32": (("8", "16", "32"), lambda p, s, h: np.mean(
        [at_input(cam(p[k], "layer-cam"), s) for k in ("8", "16", "32")], axis=0)),
}


def boxes(position: str, side: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Top-left corners (x, y) of the subject's box and of its decoy's (None at the centre)."""
    if position == "centre":
        return ((CANVAS - side) // 2,) * 2, None
    margin = min(MARGIN, CANVAS // 2 - side)
    x = margin if "left" in position else CANVAS - side - margin
    y = MARGIN if "top" in position else CANVAS - side - MARGIN
    return (x, y), (CANVAS - side - x, y)


def canvas(photo: Path, decoy: Path | None, at: tuple, decoy_at: tuple | None,
           side: int) -> bytes:
    """The canvas as PNG bytes: the photo (and decoy) stretched to `side` and pasted."""
    image = Image.new("RGB", (CANVAS, CANVAS), GREY)
    for path, corner in ((photo, at), (decoy, decoy_at)):
        if path is not None and corner is not None:
            with Image.open(path) as pasted:
                image.paste(pasted.convert("RGB").resize((side, side)), corner)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def share(cam_map: np.ndarray, corner: tuple | None, side: int) -> float | None:
    """The share of the map's mass (at 600x600) inside the box at `corner`; 0 if empty."""
    if corner is None:
        return None
    full = heatmap.resize(cam_map, (CANVAS, CANVAS))
    inside = full[corner[1]:corner[1] + side, corner[0]:corner[0] + side].sum()
    return float(inside / full.sum()) if full.sum() > 0 else 0.0


def run_passes(model, pixels: np.ndarray, half: int) -> tuple[dict, dict, np.ndarray]:
    """Every pass of one image: its (maps, gradients) per network, its ms, the outputs."""
    found, ms, outputs = {}, {}, []
    for name, (stride, mirrored, (dy, dx)) in PASSES.items():
        image = pixels[:, ::-1] if mirrored else shift(pixels, dy * half, dx * half)
        start = time.perf_counter()
        found[name], out = heatmap.maps_and_gradients(model, image[None], stride=stride)
        ms[name] = (time.perf_counter() - start) * 1000
        outputs.append(out)
    return found, ms, outputs[0]


def measure(predictor, photos: list, decoys: list | None) -> list[dict]:
    """Every canvas scored by every method: one record per canvas and method."""
    model, size = predictor.model, predictor.image_size
    half = round(size / heatmap.feature_layers(model, 32)[0].output.shape[1] / 2)
    for stride in (4, 8, 16, 32):  # warm-up
        heatmap.maps_and_gradients(model, np.zeros((1, size, size, 3), np.uint8), stride=stride)
    records = []
    for k, (label, photo) in enumerate(photos):
        decoy = decoys[k % len(decoys)] if decoys else None
        for size_name, f in SIZES.items():
            side = round(CANVAS * f**0.5)
            for position in POSITIONS:
                at, decoy_at = boxes(position, side)
                decoy_at = decoy_at if decoy else None
                pixels = load_pixels(canvas(photo, decoy, at, decoy_at, side), size)
                found, ms, out = run_passes(model, pixels, half)
                best = int(out[0, 0] >= 0.5) if out.shape[-1] == 1 else int(np.argmax(out[0]))
                right = predictor.classes[best] == label  # the class explained
                for method, (needs, make) in METHODS.items():
                    start = time.perf_counter()
                    cam_map = make(found, size, half)
                    spent = (time.perf_counter() - start) * 1000 + sum(ms[n] for n in needs)
                    records.append({"photo": photo.name, "size": size_name,
                                    "position": position, "method": method,
                                    "subject": share(cam_map, at, side),
                                    "decoy": share(cam_map, decoy_at, side),
                                    "ms": spent, "right_class": right})
    return records


def cell(rows: list[dict]) -> str:
    """Mean share inside the subject (lowest), and with a decoy its mean (highest)."""
    subject = [r["subject"] for r in rows]
    text = f"{np.mean(subject):.2f} ({min(subject):.2f})"
    decoy = [r["decoy"] for r in rows if r["decoy"] is not None]
    return text + (f" / {np.mean(decoy):.2f} ({max(decoy):.2f})" if decoy else "")


def table(records: list[dict], decoy: bool) -> str:
    """One row per method: the cells per subject size and ms/photo."""
    head = "subject mean (min) / decoy mean (max)" if decoy else "subject mean (min)"
    rows = [[f"method \\ {head}", *SIZES, "ms/photo"]]
    for method in METHODS:
        mine = [r for r in records if r["method"] == method]
        rows.append([method, *(cell([r for r in mine if r["size"] == s]) for s in SIZES),
                     f"{np.median([r['ms'] for r in mine]):.0f}"])
    first = [r for r in records if r["method"] == next(iter(METHODS))]
    rows.append(["right class", *(f"{sum(r['right_class'] for r in mine)}/{len(mine)}" for mine in
                                  ([r for r in first if r["size"] == s] for s in SIZES)), ""])
    rows.append(["flat map", *(f"{f:.2f}" for f in SIZES.values()), ""])
    return aligned(rows)


def describe(name: str, predictor) -> str:
    """The model's name, input size and the feature maps each stride uses."""
    model = predictor.model
    lines = [f"{name}: {model.name}, {predictor.image_size} px, classes "
             f"{', '.join(predictor.classes)}"]
    for stride in (8, 16, 32):
        found = [f"{layer.name} {layer.output.shape[1]}x{layer.output.shape[2]}"
                 for layer in heatmap.feature_layers(model, stride)]
        lines.append(f"  1/{stride}: {' + '.join(found)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="a run folder, bundle folder or imagenet-catdog")
    parser.add_argument("--photos", type=int, default=4, help="photos per class (default 4)")
    parser.add_argument("--decoy", action="store_true", help="also paste an everyday photo")
    parser.add_argument("--json", type=Path, help="write every canvas's shares here")
    args = parser.parse_args(argv)
    test = SHARED / "cvtricks" / "test"
    photos = [(label, path) for label in ("cat", "dog")
              for path in sorted((test / label).glob("*.jpg"))[:args.photos]]
    decoys = sorted((SHARED / "ood_photos").glob("*.jpg")) if args.decoy else None
    print("$ " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"{len(photos)} photos x {len(SIZES)} sizes x {len(POSITIONS)} positions")
    found = {}
    for name in args.models:
        started = time.perf_counter()
        predictor = pawnet.load(name, runtime="keras")
        print(describe(name, predictor), flush=True)
        found[name] = measure(predictor, photos, decoys)
        print(table(found[name], args.decoy))
        print(f"({time.perf_counter() - started:.0f} s)\n", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
