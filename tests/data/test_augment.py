import numpy as np
import pytest
from helpers import real_photos

from pawnet.data.augment import RandomAffine, build_augmenter
from pawnet.data.images import load_pixels


@pytest.fixture(scope="module")
def photos():
    return np.stack([load_pixels(p, 96) for p in real_photos("cat", 8)]).astype("float32")


def test_flip_alone_mirrors_about_half_the_images_exactly(photos):
    batch = np.concatenate([photos] * 4)
    out = np.asarray(RandomAffine(flip=True, seed=1)(batch))
    mirrored = [np.allclose(o, x[:, ::-1], atol=1e-3) for o, x in zip(out, batch, strict=True)]
    kept = [np.allclose(o, x, atol=1e-3) for o, x in zip(out, batch, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 8 <= sum(mirrored) <= 24


def test_zoom_keeps_the_centre_pixel_and_scales_about_it(photos):
    out = np.asarray(RandomAffine(zoom=0.3, seed=2)(photos))
    # odd centre: 96 px images have no single centre pixel, so compare the central 2x2 mean
    centre = slice(47, 49)
    np.testing.assert_allclose(out[:, centre, centre].mean(axis=(1, 2)),
                               photos[:, centre, centre].mean(axis=(1, 2)), atol=12)
    assert not np.allclose(out, photos, atol=1)


def test_geometric_augmentations_are_one_fused_warp_and_repeat_with_a_seed(photos):
    strengths = {"zoom": 0.2, "shear": 0.2, "rotate": 0.05, "translate": 0.1}
    names = ["flip", "zoom", "shear", "rotate", "translate", "contrast"]
    first = build_augmenter(names, strengths | {"contrast": 0.2}, seed=7)
    again = build_augmenter(names, strengths | {"contrast": 0.2}, seed=7)
    out = np.asarray(first(photos))
    np.testing.assert_array_equal(out, np.asarray(again(photos)))
    assert out.shape == photos.shape and out.min() >= 0 and out.max() <= 255
    # still the same photos: warped, not scrambled
    corr = [np.corrcoef(o.ravel(), x.ravel())[0, 1] for o, x in zip(out, photos, strict=True)]
    assert np.median(corr) > 0.3
    # reflection fill: no flat black borders appear
    assert (out[:, :, :2] == 0).mean() < 0.01


def test_flips_alone_use_a_plain_mirror(photos):
    augment = build_augmenter(["flip"], {}, seed=0)
    out = np.asarray(augment(photos))
    assert all(np.array_equal(o, x) or np.array_equal(o, x[:, ::-1])
               for o, x in zip(out, photos, strict=True))
