"""`--model keras:NAME`: keras.applications backbones with their weights fetched by Keras'
own download path (here from a local HTTP server serving a weights file made for the test:
the right shapes, random values) or given with `--weights FILE`."""

import functools
import hashlib
import http.server
import json
import threading

import h5py
import numpy as np
import pytest
from helpers import assert_runtimes_agree, copy_photos, invoke, real_photos

import pawnet
from pawnet.errors import ConfigError, WeightsError

APP = "MobileNetV3Small"
FILE = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"  # the name Keras asks for
SMALL = {"model": f"keras:{APP}", "image_size": 96, "batch_size": 8, "epochs": 3}


def _weights_file(path):
    """MobileNetV3Small's 'no top' weights in Keras' own h5 layout, with random values."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(include_top=False, weights=None,
                                                input_shape=(224, 224, 3))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    _weights_file(root / FILE)
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root / FILE, asked
    server.shutdown()


@pytest.fixture
def keras_fetches_from(monkeypatch, tmp_path):
    """Point Keras' MobileNetV3 download at a URL, expecting a SHA-256, with an empty
    Keras cache."""
    from keras.src.applications import mobilenet_v3
    from keras.src.backend import config

    (tmp_path / "keras").mkdir()  # Keras falls back to /tmp/.keras when it is not there
    monkeypatch.setattr(config, "keras_home", lambda: str(tmp_path / "keras"))

    def point(url: str, sha256: str):
        monkeypatch.setattr(mobilenet_v3, "BASE_WEIGHT_PATH", url)
        top, _ = mobilenet_v3.WEIGHTS_HASHES["small_224_1.0_float"]
        monkeypatch.setitem(mobilenet_v3.WEIGHTS_HASHES, "small_224_1.0_float", (top, sha256))

    return point


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_keras_downloads_train_a_bundle_that_runs_everywhere(
        weights_server, keras_fetches_from, tmp_path):
    url, weights, asked = weights_server
    keras_fetches_from(url, _sha256(weights))
    photos = copy_photos(tmp_path / "photos", 8)
    run = pawnet.train(photos, out=str(tmp_path / "run"), **SMALL)
    assert f"/{FILE}" in asked
    assert (tmp_path / "keras" / "models" / FILE).read_bytes() == weights.read_bytes()
    predictor = pawnet.load(run)
    assert predictor.spec.model_name == f"keras:{APP}" and predictor.runtime.name == "onnx"
    val = [str(p) for p in real_photos("cat", 2, "test") + real_photos("dog", 2, "test")]
    assert_runtimes_agree(run, val, atol=1e-4)
    report = pawnet.export(run, "onnx", out=tmp_path / "onnx")
    assert report["check"]["label_agreement"] == 1.0
    asked.clear()
    again = pawnet.train(photos, out=str(tmp_path / "again"), **SMALL)  # cached by Keras
    assert asked == []
    assert json.loads((again / "bundle" / "bundle.json").read_text())["ood_threshold"]


def test_a_download_with_the_wrong_checksum_is_refused(weights_server, keras_fetches_from,
                                                       tmp_path):
    url, _, _ = weights_server
    keras_fetches_from(url, "0" * 64)
    with pytest.raises(WeightsError, match="do not match the checksum Keras expects"):
        pawnet.train(copy_photos(tmp_path / "photos", 4), out=str(tmp_path / "run"), **SMALL)
    assert not (tmp_path / "run" / "bundle").exists()


def test_offline_without_a_file_is_one_error_line_saying_how_to_get_the_weights(
        keras_fetches_from, tmp_path):
    keras_fetches_from("http://127.0.0.1:9/", "0" * 64)  # nothing listens on port 9
    photos = copy_photos(tmp_path / "photos", 4)
    result = invoke("train", photos, "--model", f"keras:{APP}", "--image-size", 96,
                    "--out", tmp_path / "run")
    assert result.exit_code == 2
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.output.strip().endswith(line)
    assert line.startswith(f"error: cannot download the ImageNet weights of {APP} from "
                           f"http://127.0.0.1:9/{FILE}")
    assert "--weights FILE" in line


def test_a_weights_file_trains_without_any_download(weights_server, keras_fetches_from,
                                                    tmp_path):
    _, weights, asked = weights_server
    keras_fetches_from("http://127.0.0.1:9/", "0" * 64)
    asked.clear()
    run = pawnet.train(copy_photos(tmp_path / "photos", 4), out=str(tmp_path / "run"),
                       weights=str(weights), **SMALL)
    assert asked == [] and (run / "bundle" / "model.keras").exists()
    [result] = pawnet.load(run).predict(real_photos("cat", 1, "test"))
    assert np.isclose(sum(result.probabilities.values()), 1.0)


@pytest.mark.parametrize(("settings", "error", "message"), [
    ({"model": "keras:ResNet51"}, ConfigError,
     "no model 'ResNet51'. Did you mean: keras:ResNet50"),
    ({"model": "efficientnet-lite0", "weights": "w.h5"}, ConfigError,
     "--weights is for keras.applications"),
    ({"model": f"keras:{APP}", "weights": "missing.h5"}, WeightsError,
     "--weights missing.h5: no such file"),
    ({"model": f"keras:{APP}", "fine_tune": 1}, ConfigError,
     "fine-tuning is for the EfficientNet-Lite"),
])
def test_bad_keras_settings_are_clear_errors(tmp_path, settings, error, message):
    with pytest.raises(error, match=message):
        pawnet.train(copy_photos(tmp_path / "photos", 4), out=str(tmp_path / "run"),
                     image_size=96, **settings)


def test_weights_that_cannot_be_read_or_fetched_are_a_weights_error(tmp_path):
    from pawnet.models.keras_apps import _weights_error, app_backbone

    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"not an HDF5 file")
    with pytest.raises(WeightsError, match=f"the weights of {APP} could not be loaded"):
        app_backbone(f"keras:{APP}", 96, str(damaged))
    offline = Exception("URL fetch failure on http://host/w.h5: None -- refused")
    assert isinstance(_weights_error(APP, offline), WeightsError)
    assert "cannot download the ImageNet weights" in str(_weights_error(APP, offline))
