import json
import logging
import sys

import numpy as np
import pytest
from helpers import assert_runtimes_agree, real_photos

import pawnet
from pawnet.data.images import load_pixels
from pawnet.errors import ConfigError
from pawnet.inference import convert, runtimes
from pawnet.inference.bundle import resolve
from pawnet.storage import cache_dir


def test_every_runtime_agrees_with_keras_on_a_scratch_model(trained_run):
    photos = real_photos("cat", 4, "test") + real_photos("dog", 4, "test")
    assert_runtimes_agree(trained_run, photos)


def _cached_files(fmt):
    return sorted((cache_dir() / "runtimes").glob(f"*-{fmt}.*"))


@pytest.fixture
def own_runtime_cache(tmp_path, monkeypatch):
    """A cache whose runtimes folder is this test's own (conftest shares it otherwise)."""
    monkeypatch.setenv("PAWNET_CACHE_DIR", str(tmp_path / "cache"))


def _said(caplog) -> str:
    """pawnet's log lines since the last call (INFO ones too: the CLI shows them)."""
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("pawnet"))
    caplog.clear()
    return text


def test_converted_file_is_made_once_then_used_without_loading_keras(
        trained_run, own_runtime_cache, caplog):
    caplog.set_level(logging.INFO, logger="pawnet")
    pawnet.load(trained_run, runtime="onnx")
    assert "Converting the model for onnx once" in _said(caplog)
    predictor = pawnet.load(trained_run, runtime="onnx")
    assert "Converting" not in _said(caplog)
    assert predictor.bundle._model is None  # the Keras model was never loaded
    record = json.loads(_cached_files("onnx")[0].with_suffix(".json").read_text())
    assert record["agrees"] and record["max_abs_diff"] <= 1e-5 and record["checked_on"] > 0


def test_a_damaged_cached_file_is_remade_not_trusted(trained_run, own_runtime_cache, caplog):
    caplog.set_level(logging.INFO, logger="pawnet")
    photo = real_photos("dog", 1, "test")
    want = pawnet.load(trained_run, runtime="onnx").predict(photo)[0].probabilities
    model_file = next(p for p in _cached_files("onnx") if p.suffix == ".onnx")
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated
    _said(caplog)
    got = pawnet.load(trained_run, runtime="onnx").predict(photo)[0].probabilities
    assert "Converting" in _said(caplog)
    assert got == pytest.approx(want, abs=1e-6)


def test_a_changed_bundle_gets_its_own_converted_file(trained_run, tmp_path, own_runtime_cache):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run / "bundle", copy)
    pawnet.load(trained_run, runtime="onnx")
    spec = json.loads((copy / "bundle.json").read_text())
    spec["class_names"] = spec["class_names"][::-1]  # same weights, other meaning
    (copy / "bundle.json").write_text(json.dumps(spec))
    assert resolve(copy).fingerprint != resolve(trained_run).fingerprint
    pawnet.load(copy, runtime="onnx")
    assert len([p for p in _cached_files("onnx") if p.suffix == ".onnx"]) == 2


def test_auto_skips_a_runtime_that_disagrees_or_is_missing(trained_run, own_runtime_cache,
                                                           monkeypatch):
    assert pawnet.load(trained_run).runtime.name == "onnx"
    record_file = _cached_files("onnx")[0].with_suffix(".json")
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "agrees": False}))
    assert pawnet.load(trained_run).runtime.name == "litert"
    monkeypatch.setattr(runtimes, "installed", lambda name: name == "keras")
    assert pawnet.load(trained_run).runtime.name == "keras"


def test_unknown_or_missing_runtime_is_one_clear_error(trained_run, monkeypatch):
    with pytest.raises(ConfigError, match="unknown runtime 'tpu'; allowed: auto, keras"):
        pawnet.load(trained_run, runtime="tpu")
    monkeypatch.setattr(runtimes, "installed", lambda name: name == "keras")
    with pytest.raises(ConfigError, match=r"needs onnxruntime.*pip install onnxruntime"):
        pawnet.load(trained_run, runtime="onnx")


def test_litert_pads_odd_batches_and_gives_each_row_its_own_answer(trained_run):
    predictor = pawnet.load(trained_run, runtime="litert")
    pixels = np.stack([load_pixels(p, 32) for p in real_photos("cat", 3, "test")
                       + real_photos("dog", 2, "test")])
    together = predictor.probabilities(pixels)  # padded to 8 inside
    one_by_one = np.concatenate([predictor.probabilities(pixels[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)


def test_photos_per_call_is_measured_at_conversion_and_every_size_answers_alike(
        trained_run, own_runtime_cache, tmp_path):
    predictor = pawnet.load(trained_run, runtime="onnx")
    record = json.loads(_cached_files("onnx")[0].with_suffix(".json").read_text())
    assert record["photos_per_call"] in runtimes.CALL_SIZES
    assert predictor.runtime.photos_per_call == record["photos_per_call"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    photos = [*real_photos("cat", 3, "test"), broken, *real_photos("dog", 4, "test")]
    answers = {}
    for size in runtimes.CALL_SIZES:
        predictor.runtime.photos_per_call, predictor.runtime._single = size, None
        answers[size] = predictor.predict(photos)
    for results in answers.values():
        assert [r.path for r in results] == [str(p) for p in photos]
        assert results[3].error and "not an image" in results[3].error
        for got, want in zip(results, answers[1], strict=True):
            assert got.label == want.label
            assert got.probabilities == pytest.approx(want.probabilities, abs=1e-6)


def test_auto_skips_a_runtime_whose_converter_fails_and_says_so(trained_run, monkeypatch,
                                                                caplog):
    def failing(key, fmt, keras_model, probe):
        raise RuntimeError(f"{fmt} has no kernel for this op")

    monkeypatch.setattr(runtimes, "converted", failing)
    assert pawnet.load(trained_run).runtime.name == "keras"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"could not convert the model for {name} ({name} has no kernel for "
                        "this op); trying the next runtime" for name in ("onnx", "litert")]


def test_a_bug_in_a_conversion_is_raised_not_swallowed(trained_run, monkeypatch):
    def buggy(key, fmt, keras_model, probe):
        return {}["photos_per_call"]  # KeyError: pawnet's own mistake, not the converter's

    monkeypatch.setattr(runtimes, "converted", buggy)
    with pytest.raises(KeyError, match="photos_per_call"):
        pawnet.load(trained_run)


def test_conversion_failures_are_the_converters_and_runtimes_own(tmp_path):
    import onnxruntime

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(runtimes.conversion_failures()) as failed:
        onnxruntime.InferenceSession(str(bad), providers=["CPUExecutionProvider"])
    assert not isinstance(failed.value, OSError | ValueError | RuntimeError)  # its own class
    assert KeyError not in runtimes.conversion_failures()
    assert TypeError not in runtimes.conversion_failures()


def test_a_cached_file_its_runtime_cannot_open_or_a_bad_record_is_remade(
        trained_run, own_runtime_cache):
    pawnet.load(trained_run, runtime="onnx")
    model_file = next(p for p in _cached_files("onnx") if p.suffix == ".onnx")
    record_file = model_file.with_suffix(".json")
    model_file.write_bytes(b"not an onnx file")  # ONNX Runtime's own InvalidProtobuf
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "sha256": runtimes._sha256(model_file)}))
    assert pawnet.load(trained_run, runtime="onnx").runtime.name == "onnx"
    assert model_file.read_bytes() != b"not an onnx file"
    record_file.write_text("[1, 2]")  # JSON, but no record
    assert pawnet.load(trained_run, runtime="onnx").runtime.name == "onnx"
    assert json.loads(record_file.read_text())["agrees"]


def test_the_conversion_runs_in_a_child_process_and_its_memory_goes_with_it(
        trained_run, own_runtime_cache, monkeypatch):
    def in_this_process(*args, **kwargs):
        raise AssertionError("converted in the parent process")

    converter_here = "tf2onnx" in sys.modules  # another test may have exported in-process
    monkeypatch.setattr(convert, "write_model", in_this_process)
    assert pawnet.load(trained_run, runtime="onnx").runtime.name == "onnx"
    assert converter_here or "tf2onnx" not in sys.modules
    assert json.loads(_cached_files("onnx")[0].with_suffix(".json").read_text())["agrees"]


@pytest.mark.integration  # starts a process
def test_a_conversion_failing_in_the_child_is_one_clear_typed_error(tmp_path):
    saved = tmp_path / "model"  # a saved model Keras cannot read: the child fails loading it
    saved.mkdir()
    (saved / "config.json").write_text("{not json")
    out = tmp_path / "model.onnx"
    with pytest.raises(convert.ConversionFailed) as failed:
        convert.convert_file(saved, "onnx", out)
    assert str(failed.value).startswith("converting the model for onnx (in a child process): "
                                        "JSONDecodeError: Expecting property name")
    assert "\n" not in str(failed.value) and not out.exists()
    assert isinstance(failed.value, runtimes.conversion_failures())  # auto moves on
    with pytest.raises(convert.ConversionFailed, match=r"^converting the model for onnx took "
                       r"over 0.2 s and was stopped$"):  # never a hang
        convert.convert_file(saved, "onnx", out, timeout=0.2)


def test_a_converter_crashing_in_the_child_skips_the_runtime_and_says_so(
        trained_run, own_runtime_cache, tmp_path, monkeypatch, caplog):
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\necho 'Segmentation fault' >&2\nkill -9 $$\n")
    crashing.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crashing))  # what the child process runs
    assert pawnet.load(trained_run).runtime.name == "keras"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"could not convert the model for {name} (converting the model for "
                        f"{name} (in a child process) was killed by signal 9: Segmentation "
                        "fault); trying the next runtime" for name in ("onnx", "litert")]
    with pytest.raises(convert.ConversionFailed, match="killed by signal 9"):
        pawnet.load(trained_run, runtime="onnx")
