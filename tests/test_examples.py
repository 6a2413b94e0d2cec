"""Every script in examples/ runs, at toy size, with the public API only."""

import ast
import os
import subprocess
import sys

import pytest
from conftest import REPO, copy_photos, real_photos

import pawnet

EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def _run(script, *args):
    result = subprocess.run([sys.executable, str(script), *map(str, args)],
                            capture_output=True, text=True, cwd=REPO, env=dict(os.environ),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_examples_use_the_public_api_only(script):
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("pawnet"), node.module
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "pawnet":
            assert node.attr in pawnet.__all__, node.attr


def test_train_from_scratch(tmp_path):
    photos = copy_photos(tmp_path / "photos", 10)
    out = _run(REPO / "examples/train_from_scratch.py", "--photos", photos, "--epochs", 1,
               "--image-size", 32, "--out", tmp_path / "run")
    assert "test accuracy" in out and (tmp_path / "run" / "bundle" / "model.keras").exists()


def test_transfer_and_predict(tmp_path):
    photos = copy_photos(tmp_path / "photos", 8)
    out = _run(REPO / "examples/transfer_and_predict.py", "--photos", photos, "--epochs", 2,
               "--image-size", 64, "--out", tmp_path / "run")
    lines = out.strip().splitlines()
    assert len([line for line in lines if line.endswith(")") and ": " in line]) == 4
    assert lines[-1].startswith("the same photo as bytes: ")


def test_serve_a_model(trained_run):
    out = _run(REPO / "examples/serve_a_model.py", "--model", trained_run,
               "--photo", real_photos("cat", 1, "test")[0])
    assert '"label"' in out and "/docs" in out
