"""`pawnet explain` and the report's gallery: the heat-maps of `reporting.heatmap` drawn
over the photos, as files, for every kind of model."""

import json

import numpy as np
import pytest
from helpers import CVTRICKS, invoke, real_photos
from PIL import Image

import pawnet

PETS = real_photos("cat", 4, "test") + real_photos("dog", 4, "test")


@pytest.mark.integration
def test_the_report_shows_where_the_model_looked_and_says_how(lite0_run, tmp_path):
    report = pawnet.evaluate(lite0_run, CVTRICKS / "test")
    assert report.heatmaps is None  # drawn when the report is written
    report.write(tmp_path / "eval")
    assert report.misclassified and report.heatmaps == "misclassified_heatmaps.png"
    assert (tmp_path / "eval" / "misclassified_heatmaps.png").stat().st_size > 10_000
    assert "misclassified_heatmaps.png" in (tmp_path / "eval" / "report.md").read_text()
    written = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert written["heatmap_method"] == "layer-cam"
    assert written["heatmap_resolution"] == [28, 28]
    assert "layer-cam, 28×28 cells" in (tmp_path / "eval" / "report.html").read_text()


@pytest.mark.integration
def test_explain_draws_a_joined_backbone_models_map(joined_run, tmp_path):
    # before: refused, "their maps sit in nested networks"
    result = invoke("explain", joined_run, PETS[0], "--out", tmp_path / "x", "--json")
    assert result.exit_code == 0, result.output
    [found] = json.loads(result.stdout)
    assert found["method"] == "layer-cam" and found["resolution"] == [33, 33]
    heat = np.load(found["heatmap"])
    assert 0.9 < heat.max() <= 1 and heat.min() >= 0  # the peak, resized to the photo


def test_explain_writes_an_overlay_and_the_raw_map_per_photo(trained_run, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    photo = PETS[0]
    result = invoke("explain", trained_run, photo, photo, bad, "--out", tmp_path / "x",
                    "--json")
    assert result.exit_code == 0, result.output
    first, second, broken = json.loads(result.stdout)
    assert first["label"] and first["overlay"] != second["overlay"]  # same name, two files
    assert first["method"] == "layer-cam" and first["resolution"] == [4, 4]  # 32 px: 1/8
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
