import json

import pytest
from helpers import copy_photos, invoke

from pawnet.errors import DataError
from pawnet.tools.bench import bench, format_bench

pytestmark = pytest.mark.integration  # every test trains (a few epochs, on 16 to 48 photos)


@pytest.fixture(autouse=True)
def _short_measurements(monkeypatch):
    monkeypatch.setattr("pawnet.tools.bench.MEASURE_SECONDS", 0.5)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return copy_photos(tmp_path_factory.mktemp("bench"), per_class=24)


def test_bench_measures_a_scratch_model_end_to_end(photos):
    result = bench(photos, model="tutorial-d-conv16", image_size=48, batch_size=8, epochs=2,
                   augment="flip,zoom")
    assert (result["photos"], result["image_size"], result["batch_size"]) == (48, 48, 8)
    for section in ("input", "compute_limit", "end_to_end"):
        assert all(v is None or v > 0 for v in result[section].values()
                   if not isinstance(v, list | str)), section
    assert result["input"]["cached_augmented"] > 0
    assert result["input"]["first_pass_augmented"] > 0
    assert result["input"]["cached"] > result["input"]["first_pass"]  # the cache works
    assert result["efficiency"] == pytest.approx(
        result["end_to_end"]["train"] / result["compute_limit"]["train"], abs=1e-3)
    assert len(result["end_to_end"]["epoch_seconds"]) == 2
    assert result["bound"] in {"compute", "input", "overhead"}
    assert result["peak_memory_mb"] > 100
    report = format_bench(result)
    assert "efficiency" in report and result["verdict"] in report
    assert set(result["runtimes"]) == {"keras", "onnx", "litert"}
    for name, figures in result["runtimes"].items():
        assert figures["max_abs_diff"] < 1e-5, name
        assert min(figures[k] for k in ("batch_1", "batch_8", "batch_32", "end_to_end")) > 0
        assert f"runtime {name}" in report
    assert result["end_to_end"]["inference_runtime"] == "onnx"
    assert result["decode_ms_per_photo"] > 0


def test_bench_of_a_transfer_model_reports_features_and_head(photos):
    result = bench(photos, model="efficientnet-lite0", image_size=64, epochs=2, limit=16)
    assert result["photos"] == 16
    assert result["transfer"]["feature_extraction"] > 0
    assert result["transfer"]["head_seconds"] > 0
    assert result["input"]["cached_augmented"] is None  # phase 1 sees plain photos
    # the limit is the backbone on in-memory batches plus the head's training
    in_memory = 16 / result["transfer"]["backbone_limit"] + result["transfer"]["head_seconds"]
    assert result["compute_limit"]["train"] == pytest.approx(16 / in_memory, rel=0.01)


def test_bench_cli_json_and_bad_flags(photos, tmp_path):
    result = invoke("bench", photos, "--model", "tutorial-d-conv16", "--image-size", "32",
                    "--batch-size", "8", "--epochs", "2", "--limit", "16", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["photos"] == 16
    bad = invoke("bench", photos, "--epochs", "1")
    assert bad.exit_code == 2 and "epochs" in bad.output
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        bench(empty, model="tutorial-d-conv16")
