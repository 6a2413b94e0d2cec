import numpy as np
import pytest
from PIL import Image

from pawnet.data import preview
from pawnet.data.images import load_pixels


@pytest.fixture
def drawn(monkeypatch):
    calls = []

    def capture(images, captions, out, title):
        calls.append({"images": np.asarray(images), "captions": captions, "title": title})
        return out

    monkeypatch.setattr(preview, "plot_grid", capture)
    return calls


def _plain(class_folders, captions_images):
    """Each drawn image equals some photo of its class, decoded without augmentation."""
    plain = {label: [load_pixels(p, 48) for p in (class_folders / label).iterdir()]
             for label in ("cat", "dog")}
    return [any(np.array_equal(img.astype(np.uint8), p) for p in plain[c])
            for c, img in captions_images]


def test_a_pretrained_model_shows_the_plain_photos_its_head_trains_on(class_folders, drawn,
                                                                      tmp_path):
    preview.show_batch(class_folders, tmp_path / "g.png", augment="flip,rotate", image_size=48)
    [call] = drawn
    assert "augment: none (efficientnet-lite0 trains its head on plain photos)" in call["title"]
    assert all(_plain(class_folders, zip(call["captions"], call["images"], strict=True)))


def test_a_scratch_model_shows_its_augmentation(class_folders, drawn, tmp_path):
    preview.show_batch(class_folders, tmp_path / "g.png", model="tutorial-a-cnn",
                       augment="rotate", rotate=0.3, image_size=48)
    [call] = drawn
    assert call["title"].endswith("training batch at 48px, augment: rotate")
    assert not any(_plain(class_folders, zip(call["captions"], call["images"], strict=True)))
    assert sorted(set(call["captions"])) == ["cat", "dog"]


def test_the_grid_is_written(class_folders, tmp_path):
    out = preview.show_batch(class_folders, tmp_path / "grid.png", image_size=32)
    with Image.open(out) as img:
        assert img.width > 600
