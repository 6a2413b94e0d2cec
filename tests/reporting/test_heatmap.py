"""Heat-maps for every model pawnet trains or ships, sharp enough to point at a small
subject: a real cat or dog photo pasted into a grey canvas at a quarter, a tenth and a
twentieth of its area, in several places; most of the map's mass must fall on it."""

import io

import numpy as np
import pytest
from helpers import real_photos
from PIL import Image

import pawnet
from pawnet.data.images import load_pixels
from pawnet.errors import ConfigError
from pawnet.models import scratch
from pawnet.models.registry import get_model_spec
from pawnet.reporting.heatmap import (
    BATCH,
    batches,
    combine,
    feature_layers,
    heat_maps,
    maps_and_gradients,
    resize,
    weigh,
)

CANVAS, MARGIN = 600, 20
SIZES = {"1/4": 1 / 4, "1/10": 1 / 10, "1/20": 1 / 20}
PLACES = ((0.0, 0.0), (1.0, 1.0), (0.5, 0.5))  # top left, bottom right, centre
PETS = real_photos("cat", 2, "test") + real_photos("dog", 2, "test")


def _pasted(photo, side: int, place: tuple[float, float]) -> tuple[bytes, tuple[int, int]]:
    """A real photo pasted as a `side`-px square into a grey canvas; its top-left corner."""
    free = CANVAS - side - 2 * MARGIN
    corner = (MARGIN + round(place[0] * free), MARGIN + round(place[1] * free))
    canvas = Image.new("RGB", (CANVAS, CANVAS), (128, 128, 128))
    canvas.paste(Image.open(photo).convert("RGB").resize((side, side)), corner)
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue(), corner


def _shares(run, **options) -> dict[str, list[float]]:
    """Per subject size, the share of each map's mass inside the pasted photo."""
    predictor = pawnet.load(run, runtime="keras")
    shares: dict[str, list[float]] = {}
    for name, fraction in SIZES.items():
        side = round(CANVAS * fraction**0.5)
        pasted = [_pasted(photo, side, place) for photo in PETS for place in PLACES]
        pixels = np.stack([load_pixels(data, predictor.image_size) for data, _ in pasted])
        maps = np.concatenate([heat_maps(predictor.model, pixels[i : i + BATCH],
                                         **options).maps
                               for i in range(0, len(pixels), BATCH)])
        for cam, (_, (x, y)) in zip(maps, pasted, strict=True):
            full = resize(cam, (CANVAS, CANVAS))
            inside = full[y : y + side, x : x + side].sum()
            shares.setdefault(name, []).append(float(inside / full.sum()) if inside else 0.0)
    print(run, {k: (round(float(np.mean(v)), 3), round(min(v), 3)) for k, v in shares.items()})
    return shares


@pytest.mark.integration
@pytest.mark.parametrize("run", ["lite0_run", "joined_run"])
def test_most_of_the_map_falls_on_a_subject_a_tenth_of_the_photo(run, request):
    shares = _shares(request.getfixturevalue(run))
    # before (Grad-CAM at the last, 7x7 block): 0.48 at a tenth; targets: >= 0.6 at a tenth,
    # no worse at a quarter; a twentieth is reported, and still well above its 0.05 area
    assert np.mean(shares["1/10"]) >= 0.6
    assert np.mean(shares["1/4"]) >= 0.7 and min(shares["1/4"]) > 0.25
    assert np.mean(shares["1/20"]) >= 0.35


@pytest.mark.integration
def test_the_last_block_s_grad_cam_was_blurrier_than_the_shipped_maps(lite0_run):
    before = _shares(lite0_run, method="grad-cam", stride=32)
    after = _shares(lite0_run)
    assert np.mean(after["1/10"]) > np.mean(before["1/10"]) + 0.1
    assert np.mean(after["1/20"]) > np.mean(before["1/20"])


@pytest.mark.integration
def test_the_builtin_models_map_falls_on_the_pet():
    predictor = pawnet.load("imagenet-catdog", runtime="keras")
    data, (x, y) = _pasted(PETS[0], 190, (1.0, 0.0))
    found = heat_maps(predictor.model, load_pixels(data, predictor.image_size)[None])
    assert found.resolution == [33, 33] and found.method == "layer-cam"
    full = resize(found.maps[0], (CANVAS, CANVAS))
    assert full[y : y + 190, x : x + 190].sum() / full.sum() > 0.5


@pytest.mark.integration
def test_joined_backbones_add_their_branches_maps():
    model = get_model_spec("efficientnet-lite0+lite2").build(2, 64)
    assert [layer.name for layer in feature_layers(model)] == ["block5_expand_relu",
                                                               "block7_expand_relu"]
    pixels = load_pixels(PETS[0], 64)[None]
    pairs, outputs = maps_and_gradients(model, pixels)
    assert [a.shape[1:3] for a, _ in pairs] == [(8, 8), (8, 8)] and outputs.shape == (1, 1)
    branches = [weigh(a, g, "layer-cam") for a, g in pairs]
    assert np.allclose(heat_maps(model, pixels).maps, combine(branches))
    assert not np.allclose(combine(branches[:1]), combine(branches))  # both count


def test_maps_of_different_resolutions_add_up_at_the_finest():
    coarse = np.zeros((1, 2, 2), np.float32)
    coarse[0, 0, 0] = 4.0
    fine = np.zeros((1, 4, 4), np.float32)
    fine[0, 3, 3] = 1.0
    total = combine([coarse, fine])
    assert total.shape == (1, 4, 4) and total.max() == pytest.approx(1.0)
    assert total[0, 0, 0] == pytest.approx(1.0) and 0 < total[0, 3, 3] < 1


@pytest.mark.parametrize("app", ["MobileNetV2", "MobileNetV3Small"])
def test_a_keras_applications_backbone_gets_its_own_maps_not_their_padding(app):
    import keras

    from pawnet.models.keras_apps import AppPreprocessing
    from pawnet.models.pretrained import build_head, compose

    network = getattr(keras.applications, app)(include_top=False, weights=None,
                                               pooling="avg", input_shape=(224, 224, 3))
    pixels = keras.Input((224, 224, 3), name="pixels")
    backbone = keras.Model(pixels, network(AppPreprocessing(app)(pixels)))
    model = compose(backbone, build_head(2, backbone), f"keras:{app}")
    [layer] = feature_layers(model)
    assert not isinstance(layer, keras.layers.ZeroPadding2D)  # before: 29x29, 31x31
    found = heat_maps(model, load_pixels(PETS[0], 224)[None], 0)
    assert found.resolution == [28, 28] and np.isfinite(found.maps).all()


def _branch(name: str):
    """A small network with a nested stem: 64 px in, maps at 32, 16, 8 and 4, pooled."""
    import keras
    from keras import layers

    pixels = keras.Input((64, 64, 3))
    stem = keras.Sequential([keras.Input((64, 64, 3)),
                             layers.Conv2D(4, 3, strides=2, padding="same")])
    x = stem(pixels)
    for side in (16, 8, 4):
        x = layers.Conv2D(4, 3, strides=2, padding="same", name=f"{name}_to_{side}")(x)
    return keras.Model(pixels, layers.GlobalAveragePooling2D()(x), name=name)


def test_networks_in_series_are_one_network_and_side_by_side_are_two():
    import keras
    from keras import layers

    one = _branch("one")
    assert [layer.name for layer in feature_layers(one)] == ["one_to_8"]  # not the stem's
    pixels = keras.Input((64, 64, 3))
    side_by_side = layers.Concatenate()([one(pixels), _branch("two")(pixels)])
    joined = keras.Model(pixels, layers.Dense(1, activation="sigmoid",
                                              name="predictions")(side_by_side))
    assert [layer.name for layer in feature_layers(joined)] == ["one_to_8", "two_to_8"]
    assert heat_maps(joined, np.zeros((1, 64, 64, 3), np.uint8)).resolution == [8, 8]


def test_a_from_scratch_model_gets_a_map_per_photo(trained_run):
    predictor = pawnet.load(trained_run, runtime="keras")
    pixels = np.stack([load_pixels(p, predictor.image_size) for p in PETS])
    found = heat_maps(predictor.model, pixels)
    assert found.maps.shape[0] == len(PETS) and found.resolution[0] >= 4
    assert found.outputs.shape == (len(PETS), 1)
    assert all(cam.max() == pytest.approx(1.0) or cam.max() == 0 for cam in found.maps)


def test_each_class_of_a_sigmoid_model_has_its_own_map_and_others_are_refused(trained_run):
    predictor = pawnet.load(trained_run, runtime="keras")
    pixels = np.stack([load_pixels(p, predictor.image_size) for p in PETS])
    cat, dog = (heat_maps(predictor.model, pixels, c).maps for c in (0, 1))
    assert not np.allclose(cat, dog)
    with pytest.raises(ConfigError, match=r"class 2 is not one of .* 2 classes"):
        heat_maps(predictor.model, pixels, 2)


def test_a_model_with_no_feature_maps_is_one_clear_line():
    import keras

    inputs = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(2, activation="softmax", name="predictions")(
        keras.layers.Flatten()(inputs))
    with pytest.raises(ConfigError, match=r"has no convolutional feature maps.*Try:"):
        heat_maps(keras.Model(inputs, dense, name="flat"), np.zeros((1, 8, 8, 3), np.uint8))
    two_inputs = keras.Model([inputs, keras.Input((8, 8, 3))], dense)
    with pytest.raises(ConfigError, match="with one image input"):
        heat_maps(two_inputs, np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="unknown heat-map method 'magic'"):
        heat_maps(keras.Model(inputs, dense), np.zeros((1, 8, 8, 3), np.uint8),
                  method="magic")


def test_photos_are_batched_by_the_class_they_explain():
    assert batches([0, 1, 0, 0, 0, 0, 1]) == [[0, 2, 3, 4], [5], [1, 6]]


@pytest.mark.parametrize("spec", [spec.name for spec in scratch.MODELS])
def test_every_from_scratch_architecture_gets_a_map(spec):
    model = get_model_spec(spec).build(3, 64)
    found = heat_maps(model, np.stack([load_pixels(p, 64) for p in PETS[:2]]), 2)
    assert found.maps.shape[0] == 2 and found.outputs.shape == (2, 3)
    assert found.resolution[0] >= 4 and np.isfinite(found.maps).all()


@pytest.mark.integration
def test_a_model_being_fine_tuned_gets_the_same_layers_maps():
    from pawnet.models.pretrained import build_head, compose, load_backbone

    spec = get_model_spec("efficientnet-lite0")
    backbone = load_backbone(spec, 64, trainable_later=True)  # batch norm not folded
    model = compose(backbone, build_head(2, backbone), spec.name)
    assert [layer.name for layer in feature_layers(model)] == ["block5_expand_relu"]
    assert heat_maps(model, load_pixels(PETS[0], 64)[None]).resolution == [8, 8]


def test_a_model_and_its_traced_pass_are_freed_together(trained_run):
    import gc
    import weakref

    model = pawnet.load(trained_run, runtime="keras").model
    heat_maps(model, load_pixels(PETS[0], 32)[None])
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # the studio loads a model per retrain: none may stay behind
