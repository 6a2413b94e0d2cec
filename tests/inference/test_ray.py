"""`pawnet predict --engine ray` and `RayPredictor`, on a local Ray cluster of two workers:
the same bytes out as `pawnet predict`, a damaged photo as an error row, and the class in a
Ray Data pipeline of the user's own."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import CVTRICKS, invoke, real_photos

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # a stuck cluster fails

ray = pytest.importorskip("ray", reason="pip install 'pawnet[ray]'")

MODEL = "imagenet-catdog"  # built in: no training needed


@pytest.fixture(scope="module")
def cluster(_session_cache):
    """A local Ray cluster for 2 worker actors of one CPU each, and one CPU more for Ray
    Data's read tasks (with none left, they wait for the actors forever), whose workers
    share the session's pawnet cache (the model converted once)."""
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PAWNET_CACHE_DIR": str(_session_cache)}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """40 real photos and one damaged copy (its first half) in one folder."""
    folder = tmp_path_factory.mktemp("ray") / "photos"
    folder.mkdir()
    for label in ("cat", "dog"):
        for src in real_photos(label, 20, split="test", dataset=CVTRICKS):
            shutil.copy(src, folder / src.name)
    data = (folder / "cat.1000.jpg").read_bytes()
    (folder / "damaged.jpg").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="module")
def local(photos) -> dict[str, bytes]:
    """What `pawnet predict` (the local engine) prints, per format."""
    outputs = {}
    for fmt in ("csv", "json"):
        result = invoke("predict", MODEL, photos, "--format", fmt)
        assert result.exit_code == 0, result.output
        outputs[fmt] = result.stdout_bytes
    return outputs


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_ray_engine_prints_what_the_local_engine_prints(cluster, photos, local, fmt):
    on_ray = invoke("predict", MODEL, photos, "--format", fmt, "--engine", "ray",
                    "--workers", 2)
    assert on_ray.exit_code == 0, on_ray.output
    assert on_ray.stdout_bytes == local[fmt]
    if fmt == "json":
        rows = {Path(row["path"]).name: row for row in json.loads(on_ray.stdout)}
    else:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(io.StringIO(on_ray.stdout))}
    assert len(rows) == 41
    assert [name for name, row in rows.items() if row.get("error")] == ["damaged.jpg"]
    assert rows["damaged.jpg"]["error"].startswith("truncated or corrupt")


def test_ray_predictor_in_a_pipeline_of_ones_own(cluster, photos, local):
    from pawnet.inference.ray_predict import RayPredictor

    ds = ray.data.read_binary_files(str(photos), include_paths=True)
    labelled = ds.map_batches(RayPredictor, fn_constructor_kwargs={"model": MODEL},
                              compute=ray.data.ActorPoolStrategy(size=2), batch_size=8)
    rows = {Path(row["path"]).name: row for row in labelled.take_all()}
    want = {Path(row["path"]).name: row for row in json.loads(local["json"])}
    assert rows.keys() == want.keys()
    assert rows["damaged.jpg"]["error"] == want["damaged.jpg"]["error"]
    assert rows["damaged.jpg"]["label"] is None
    for name, row in want.items():
        for field in ("label", "reason", "probabilities", "error"):
            assert rows[name][field] == row.get(field), (name, field)


def test_shard_is_refused_with_ray():
    result = invoke("predict", MODEL, "x.jpg", "--engine", "ray", "--shard", "0/2")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --engine ray ") and "--shard" in result.stderr
    assert result.stderr.count("\n") == 1


def test_without_ray_it_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    result = invoke("predict", MODEL, "x.jpg", "--engine", "ray")
    assert result.exit_code != 0
    assert result.stderr.startswith("error: ")
    assert result.stderr.rstrip().endswith("Try: pip install 'pawnet[ray]'")
    assert result.stderr.count("\n") == 1
