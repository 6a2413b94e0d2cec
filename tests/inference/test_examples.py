"""Every script in examples/ runs, at toy size, with the public API only. The training ones
run in this process (as `python examples/NAME.py ARGS` would), which spares a TensorFlow
start-up each; the serving one in a process of its own, since uvicorn's log handlers would
outlive the streams pytest captures."""

import ast
import os
import runpy
import subprocess
import sys

import pytest
from helpers import REPO, copy_photos, real_photos

import pawnet

EXAMPLES = sorted((REPO / "examples").glob("*.py"))


@pytest.fixture
def run(capsys, monkeypatch):
    def run_script(script, *args):
        monkeypatch.setattr(sys, "argv", [str(script), *map(str, args)])
        runpy.run_path(str(script), run_name="__main__")
        return capsys.readouterr().out

    return run_script


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_examples_use_the_public_api_only(script):
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("pawnet"), node.module
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "pawnet":
            assert node.attr in pawnet.__all__, node.attr


@pytest.mark.integration
def test_train_from_scratch(run, tmp_path):
    photos = copy_photos(tmp_path / "photos", 10)
    out = run(REPO / "examples/train_from_scratch.py", "--photos", photos, "--epochs", 1,
               "--image-size", 32, "--out", tmp_path / "run")
    assert "test accuracy" in out and (tmp_path / "run" / "bundle" / "model.keras").exists()


@pytest.mark.integration
def test_transfer_and_predict(run, tmp_path):
    photos = copy_photos(tmp_path / "photos", 8)
    out = run(REPO / "examples/transfer_and_predict.py", "--photos", photos, "--epochs", 2,
               "--image-size", 64, "--out", tmp_path / "run")
    lines = out.strip().splitlines()
    assert len([line for line in lines if ".jpg: " in line and line.endswith(")")]) == 4
    assert lines[-1].startswith("the same photo as bytes: ")


def test_serve_a_model(trained_run):
    script = REPO / "examples/serve_a_model.py"
    result = subprocess.run([sys.executable, str(script), "--model", str(trained_run),
                             "--photo", str(real_photos("cat", 1, "test")[0])],
                            capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert '"label"' in out and "/docs" in out
