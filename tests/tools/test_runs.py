"""`pawnet runs`: a line per run with its status and figures, and runs side by side."""

import json
import shutil

import pytest
import yaml
from helpers import invoke

import pawnet
from pawnet.errors import ConfigError, DataError
from pawnet.tools.runs import compare, find_runs, summary


@pytest.fixture
def runs(trained_run, tmp_path):
    """A finished run (evaluated), a resumable one (an epoch checkpointed, no bundle) and an
    interrupted one (stopped before its first checkpoint), in one folder."""
    root = tmp_path / "runs"
    finished = root / "finished"
    shutil.copytree(trained_run, finished)
    pawnet.evaluate(finished).write()
    resumable = root / "resumable"
    shutil.copytree(trained_run, resumable, ignore=shutil.ignore_patterns("bundle", "eval*"))
    settings = yaml.safe_load((resumable / "config.yaml").read_text())
    (resumable / "config.yaml").write_text(yaml.safe_dump({**settings, "epochs": 2}))
    interrupted = root / "interrupted"
    shutil.copytree(trained_run, interrupted,
                    ignore=shutil.ignore_patterns("bundle", "checkpoints", "eval*"))
    return root


def test_each_run_has_its_status_data_and_figures(runs, trained_run):
    found = {p.name: summary(p) for p in find_runs(runs)}
    assert {name: s["status"] for name, s in found.items()} == {
        "finished": "finished", "resumable": "resumable", "interrupted": "interrupted"}
    metrics = json.loads((trained_run / "bundle" / "provenance.json").read_text())["metrics"]
    done = found["finished"]
    assert done["model"] == "pawnet-cnn" and done["val_loss"] == metrics["val_loss"]
    report = json.loads((runs / "finished" / "eval" / "report.json").read_text())
    assert done["test_accuracy"] == report["accuracy"] and "test split" in done["test_source"]
    assert done["wall_s"] > 0 and done["best_epoch"] == 1
    # the same photos give the same fingerprint, read from provenance or from the manifest
    assert len({s["data_fingerprint"] for s in found.values()}) == 1
    assert found["resumable"]["val_loss"] is not None  # from history.csv
    assert found["interrupted"]["test_accuracy"] is None


def test_the_cli_lists_runs_and_compares_them(runs):
    listed = invoke("runs", runs)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["run", "model", "status"] and len(lines) == 4
    rows = json.loads(invoke("runs", runs, "--json").stdout)
    assert {r["status"] for r in rows} == {"finished", "resumable", "interrupted"}
    side = invoke("runs", "--compare", runs / "finished", runs / "resumable")
    assert side.exit_code == 0, side.output
    epochs = next(line for line in side.stdout.splitlines() if line.startswith("epochs"))
    assert epochs.split()[1:] == ["1", "2"]
    result = compare([runs / "finished", runs / "resumable"])
    assert result["settings"]["epochs"] == [1, 2] and "model" not in result["settings"]
    assert result["metrics"]["status"] == ["finished", "resumable"]


def test_damaged_files_and_wrong_folders_are_clear(runs, tmp_path):
    (runs / "finished" / "bundle" / "provenance.json").write_text("{not json")
    (runs / "finished" / "history.csv").write_bytes(b"\xff\xfe garbage")
    damaged = summary(runs / "finished")
    assert damaged["status"] == "finished" and damaged["data_fingerprint"]
    with pytest.raises(DataError, match="not a pawnet run folder"):
        summary(tmp_path)
    with pytest.raises(ConfigError, match="--compare needs two or more"):
        compare([runs / "finished"])
    result = invoke("runs", tmp_path / "nowhere")
    assert result.exit_code == 2 and result.output.startswith("error: no folder")
