import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import CVTRICKS, invoke, real_photos
from PIL import Image

import pawnet
from pawnet.errors import BundleError, ConfigError
from pawnet.inference import convert
from pawnet.inference import export as exporting

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NO_TENSORFLOW = ("import runpy, sys\n"
                 "for name in ('tensorflow', 'keras', 'pawnet'):\n"
                 "    sys.modules[name] = None  # importing it now fails\n"
                 "sys.argv = sys.argv[1:]\n"
                 "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.mark.parametrize("fmt", ["onnx", "litert", "saved_model"])
def test_export_round_trip_of_a_scratch_model(trained_run, tmp_path, fmt):
    result = invoke("export", trained_run, "--format", fmt, "--out", tmp_path / fmt, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    info = json.loads((tmp_path / fmt / "pawnet.json").read_text())
    assert (tmp_path / fmt / info["file"]).exists()
    bundle_spec = json.loads((trained_run / "bundle" / "bundle.json").read_text())
    assert info["class_names"] == bundle_spec["class_names"]
    assert info["image_size"] == 32 and info["output"] == bundle_spec["output"]
    assert info["source"]["bundle_fingerprint"] == pawnet.load(trained_run).bundle.fingerprint
    assert info["preprocessing"]["resize"] == "bilinear" and info["quantization"] == "none"
    assert info["ood_threshold"] == bundle_spec["ood_threshold"] is not None
    assert info["min_confidence"] == bundle_spec["min_confidence"]
    check = report["check"]
    assert check["label_agreement"] == 1.0 and check["max_abs_diff"] < 1e-5
    assert check["photos"] > 0 and "test split" in check["source"]


@pytest.mark.integration
def test_builtin_model_exports_when_given_photos_to_check_on(tmp_path):
    out = tmp_path / "catdog"
    photos = tmp_path / "photos"
    for label in ("cat", "dog"):
        (photos / label).mkdir(parents=True)
        for p in real_photos(label, 3, "test"):
            (photos / label / p.name).write_bytes(p.read_bytes())
    result = invoke("export", "imagenet-catdog", "--format", "litert", "--out", out,
                    "--photos", photos)
    assert result.exit_code == 0, result.output
    assert "labels agree on 100.0%" in result.stdout
    assert json.loads((out / "pawnet.json").read_text())["class_names"] == ["cat", "dog",
                                                                            "neither"]
    result = invoke("export", "imagenet-catdog", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "Try: pawnet export MODEL --photos FOLDER" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "coreml"], "unknown export format 'coreml'; allowed: saved_model, litert"),
    (["--format", "onnx", "--int8"], "--int8 is for --format litert"),
    (["--format", "litert", "--int8"], "needs at least 100 training photos"),
])
def test_export_refusals_are_one_error_line(trained_run, tmp_path, args, message):
    result = invoke("export", trained_run, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and message in result.output
    assert not (tmp_path / "out").exists()


def test_missing_converter_is_named_with_the_install_command(trained_run, monkeypatch):
    monkeypatch.setattr(convert, "_importable", lambda name: name != "tf2onnx")
    with pytest.raises(ConfigError, match=r"needs tf2onnx.*Try: pip install tf2onnx onnx"):
        exporting.export(trained_run, "onnx")


def test_an_export_that_disagrees_leaves_nothing_behind(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(exporting, "_run_export",
                        lambda fmt, path, images: 1 - _keras_outputs(trained_run, images))
    with pytest.raises(BundleError, match=r"disagrees with the bundle.*nothing was written"):
        exporting.export(trained_run, "onnx", out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def _keras_outputs(run, images):
    return pawnet.load(run, runtime="keras").runtime(images)


@pytest.mark.parametrize("max_drop", [1.0, -1.0])
def test_int8_export_is_calibrated_and_its_accuracy_drop_is_policed(
        trained_run, tmp_path, monkeypatch, caplog, max_drop):
    monkeypatch.setattr(exporting, "CALIBRATION_PHOTOS", (8, 300))
    monkeypatch.setattr(exporting, "INT8_MAX_DROP", max_drop)
    out = tmp_path / "int8"
    if max_drop < 0:  # no accuracy can pass: refused, nothing written
        with pytest.raises(BundleError, match=r"int8 accuracy .* below fp32"):
            exporting.export(trained_run, "litert", int8=True, out=out)
        assert not out.exists()
        return
    report = exporting.export(trained_run, "litert", int8=True, out=out)
    assert report["quantization"] == "int8" and report["calibration_photos"] >= 8
    assert "Exporting pawnet-cnn to litert int8; checking on" in caplog.text  # verbose
    caplog.clear()
    fp32 = exporting.export(trained_run, "litert", out=tmp_path / "fp32", verbose=False)
    assert not [r for r in caplog.records if r.name.startswith("pawnet")
                and r.levelno < logging.WARNING]
    assert (out / "model.tflite").stat().st_size < 0.5 * (tmp_path / "fp32" /
                                                           "model.tflite").stat().st_size
    assert 0 < report["check"]["accuracy"] <= 1 and fp32["check"]["max_abs_diff"] < 1e-5


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_example_labels_a_photo_without_tensorflow_or_pawnet(trained_run, tmp_path, fmt):
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "ai_edge_litert")
    exporting.export(trained_run, fmt, out=tmp_path / fmt)
    photo = real_photos("dog", 1, "test", CVTRICKS)[0]
    tiny = tmp_path / "tiny.jpg"  # below the model's min_side: too small, whatever it shows
    Image.open(photo).resize((12, 9)).save(tiny)
    for path in (photo, tiny):
        ran = subprocess.run([sys.executable, "-c", NO_TENSORFLOW,
                              str(EXAMPLES / f"run_{fmt}.py"), str(tmp_path / fmt), str(path)],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": ""})
        assert ran.returncode == 0, ran.stderr
        got = json.loads(ran.stdout.strip().splitlines()[-1])
        want = pawnet.load(trained_run).predict([path])[0]
        assert (got["label"], got["reason"]) == (want.label, want.reason)
        assert got["ood_score"] == pytest.approx(want.ood_score, abs=1e-4)
        np.testing.assert_allclose([got["probabilities"][c] for c in want.probabilities],
                                   list(want.probabilities.values()), atol=1e-4)
    assert got["reason"] == "too small (12x9)"
