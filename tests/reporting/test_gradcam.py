"""`pawnet explain`: Grad-CAM heat-maps that point at the pet, for the built-in, transfer and
from-scratch models."""

import io
import json

import numpy as np
import pytest
from helpers import CVTRICKS, invoke, real_photos
from PIL import Image

import pawnet
from pawnet.data.images import load_pixels
from pawnet.errors import ConfigError
from pawnet.reporting.gradcam import grad_cam, split_at_feature_maps, upsample

CANVAS, SIDE, CORNER = 480, 240, (200, 220)  # the photo fills a quarter of the canvas


def _pasted(photo) -> bytes:
    """A real photo pasted into a known rectangle of a larger neutral grey canvas."""
    canvas = Image.new("RGB", (CANVAS, CANVAS), (128, 128, 128))
    canvas.paste(Image.open(photo).convert("RGB").resize((SIDE, SIDE)), CORNER)
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


def _share_inside(model, image_size: int, photos) -> list[float]:
    shares = []
    for photo in photos:
        cam, _ = grad_cam(model, load_pixels(_pasted(photo), image_size)[None])
        full = upsample(cam[0], (CANVAS, CANVAS))
        x, y = CORNER
        shares.append(float(full[y : y + SIDE, x : x + SIDE].sum() / full.sum()))
    return shares


PETS = real_photos("cat", 4, "test") + real_photos("dog", 4, "test")


@pytest.mark.integration
def test_the_builtin_models_heat_map_falls_on_the_pet():
    predictor = pawnet.load("imagenet-catdog", runtime="keras")
    shares = _share_inside(predictor.model, predictor.image_size, PETS)
    print("imagenet-catdog: share of the heat-map inside the photo", np.round(shares, 3))
    assert np.mean(shares) >= 0.6 and min(shares) > 0.25  # 0.25: the photo's share of area


@pytest.mark.integration
def test_a_transfer_models_heat_map_falls_on_the_pet(tmp_path):
    run = pawnet.train(CVTRICKS / "train", out=str(tmp_path / "run"), test_fraction=0.0)
    predictor = pawnet.load(run, runtime="keras")
    shares = _share_inside(predictor.model, predictor.image_size, PETS)
    print("efficientnet-lite0: share of the heat-map inside the photo", np.round(shares, 3))
    assert np.mean(shares) >= 0.5 and min(shares) > 0.25
    report = pawnet.evaluate(run, CVTRICKS / "test")
    assert report.heatmaps is None  # drawn when the report is written
    report.write(tmp_path / "eval")
    assert report.misclassified and report.heatmaps == "misclassified_heatmaps.png"
    assert (tmp_path / "eval" / "misclassified_heatmaps.png").stat().st_size > 10_000
    assert "misclassified_heatmaps.png" in (tmp_path / "eval" / "report.md").read_text()


def test_explain_writes_an_overlay_and_the_raw_map_per_photo(trained_run, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    photo = PETS[0]
    result = invoke("explain", trained_run, photo, photo, bad, "--out", tmp_path / "x",
                    "--json")
    assert result.exit_code == 0, result.output
    first, second, broken = json.loads(result.stdout)
    assert first["label"] and first["overlay"] != second["overlay"]  # same name, two files
    heat = np.load(first["heatmap"])
    with Image.open(photo) as original:
        assert heat.shape == (original.height, original.width)
    assert heat.dtype == np.float32 and heat.min() >= 0 and heat.max() <= 1
    assert Image.open(first["overlay"]).size == heat.shape[::-1]
    assert broken["error"].startswith("not an image")


def test_a_huge_photo_is_explained_at_a_bounded_size(trained_run, tmp_path):
    # before: the photo was decoded whole (6000x4000: 0.76 -> 2.33 GB) and the .npy was
    # 96 MB; now both are at most PREVIEW_SIZE px on the longer side, aspect kept
    from pawnet.data.images import PREVIEW_SIZE

    big = tmp_path / "huge.jpg"
    Image.open(PETS[0]).convert("RGB").resize((6000, 4000)).save(big, "JPEG", quality=40)
    result = invoke("explain", trained_run, big, "--out", tmp_path / "x", "--json")
    assert result.exit_code == 0, result.output
    [found] = json.loads(result.stdout)
    heat = np.load(found["heatmap"])
    assert heat.shape == (683, PREVIEW_SIZE) and found["heatmap_size"] == [PREVIEW_SIZE, 683]
    assert Image.open(found["overlay"]).size == (PREVIEW_SIZE, 683)
    assert (tmp_path / "x" / "huge.cam.npy").stat().st_size < 3_000_000


def test_models_it_cannot_reach_are_refused_with_a_way_out():
    from pawnet.models.registry import get_model_spec

    joined = get_model_spec("efficientnet-lite0+lite2").build(2, 64)
    with pytest.raises(ConfigError, match="explain works for from-scratch"):
        split_at_feature_maps(joined)
