import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from helpers import copy_photos, invoke, make_odd_files

import pawnet
from pawnet.data.labels import EXCLUDE, LabelsFile, relative_path
from pawnet.data.splits import read_manifest
from pawnet.errors import ConfigError, DataError
from pawnet.tools.runs import summary
from pawnet.training.callbacks import last_checkpoint

TINY = {"model": "tutorial-d-conv16", "image_size": 32, "batch_size": 8, "augment": "flip,zoom"}


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_trained_run_holds_bundle_curves_history_manifest_and_config(trained_run):
    for name in ("config.yaml", "manifest.csv", "data.json", "history.csv", "curves.png",
                 "bundle/model.keras", "bundle/bundle.json", "bundle/provenance.json"):
        assert (trained_run / name).is_file(), name
    spec = json.loads((trained_run / "bundle" / "bundle.json").read_text())
    assert spec["class_names"] == ["cat", "dog"]
    assert spec["image_size"] == 32
    assert spec["format_version"] == 4 and 8 <= spec["min_side"] <= 32  # trained at 32 px
    assert 0.05 <= spec["temperature"] <= 20
    provenance = json.loads((trained_run / "bundle" / "provenance.json").read_text())
    assert provenance["metrics"]["temperature"] == spec["temperature"]
    assert provenance["metrics"]["val_ece"] <= provenance["metrics"]["val_ece_uncalibrated"] + 0.05
    assert set(provenance["versions"]) >= {"pawnet", "keras", "tensorflow"}
    assert provenance["data"]["split_seed"] == 42
    assert len(provenance["data"]["fingerprint"]) == 64
    assert 0 <= provenance["metrics"]["val_accuracy"] <= 1
    splits = {p.split for p in read_manifest(trained_run / "manifest.csv")}
    assert splits == {"train", "val", "test"}
    assert [r["epoch"] for r in _history(trained_run)] == ["1"]


@pytest.mark.integration
def test_bad_files_are_skipped_and_the_run_completes(tmp_path):
    photos = copy_photos(tmp_path / "p", 8)
    make_odd_files(photos / "dog")
    run = pawnet.train(photos, epochs=1, out=str(tmp_path / "run"), **TINY)
    skipped = json.loads((run / "data.json").read_text())["skipped"]
    assert {Path(s["path"]).name for s in skipped} >= {"zero.jpg", "truncated.jpg", "bomb.png"}
    used = {Path(p.path).name for p in read_manifest(run / "manifest.csv")}
    assert {"cmyk.jpg", "alpha.png", "animated.gif", "web.webp"} <= used
    assert (run / "bundle" / "model.keras").exists()


@pytest.mark.integration
def test_same_seed_repeats_the_run(tmp_path):
    photos = copy_photos(tmp_path / "p", 8)
    runs = [pawnet.train(photos, epochs=2, out=str(tmp_path / f"r{i}"), **TINY)
            for i in range(2)]
    a, b = (_history(r) for r in runs)
    for row_a, row_b in zip(a, b, strict=True):
        assert float(row_a["loss"]) == pytest.approx(float(row_b["loss"]), rel=1e-4)
        assert float(row_a["val_loss"]) == pytest.approx(float(row_b["val_loss"]), rel=1e-4)


@pytest.mark.integration
def test_resume_after_a_kill_continues_from_the_last_finished_epoch(tmp_path):
    photos = copy_photos(tmp_path / "p", 10)
    run = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "pawnet.cli", "train", str(photos), "--epochs", "30",
           "--out", str(run), "--model", TINY["model"], "--image-size", "32",
           "--batch-size", "4", "--patience", "30"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / "checkpoints" / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["epoch"]
    assert 2 <= done < 30
    assert not (run / "bundle").exists()

    import keras

    saved = keras.models.load_model(last_checkpoint(run / "checkpoints"))
    iterations = int(saved.optimizer.iterations.numpy())
    assert iterations > 0  # optimizer state is part of the checkpoint
    pawnet.train(resume=str(run), epochs=done + 1)
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, done + 2))
    resumed = keras.models.load_model(last_checkpoint(run / "checkpoints"))
    steps_per_epoch = iterations // done
    assert int(resumed.optimizer.iterations.numpy()) == iterations + steps_per_epoch
    assert (run / "bundle" / "model.keras").exists()


def test_resume_of_a_finished_run_changes_nothing_unless_it_trains_longer(tmp_path,
                                                                        trained_run):
    # before: --resume trained a finished run again and rewrote its bundle, and eval/ then
    # described a model that no longer existed
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    pawnet.evaluate(run).write()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for epochs in (None, 1):
        result = invoke("train", "--resume", run, *(["--epochs", epochs] if epochs else []))
        assert result.exit_code == 0, result.output
        assert "is finished (1 epochs" in result.stdout and "nothing to do" in result.stdout
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    old_model = pawnet.load(run).bundle.fingerprint
    evaluations = sorted(p.name for p in run.glob("eval*"))  # other tests may add theirs
    pawnet.train(resume=str(run), epochs=2)
    previous = run / "previous" / "1"
    assert sorted(p.name for p in previous.iterdir()) == ["NOTE.txt", "bundle", *evaluations]
    assert "--epochs 2" in (previous / "NOTE.txt").read_text()
    assert pawnet.load(previous / "bundle").bundle.fingerprint == old_model
    assert pawnet.load(run).bundle.fingerprint != old_model
    assert not list(run.glob("eval*")) and len(_history(run)) == 2
    assert (previous / "eval" / "report.json").read_bytes() == before[run / "eval" /
                                                                      "report.json"]


def test_resume_refuses_changed_settings_and_runs_without_checkpoints(tmp_path, trained_run):
    with pytest.raises(ConfigError, match=r"only --epochs, --strategy, --workers, "
                       r"--worker-index, --startup-timeout may change, received: --lr$"):
        pawnet.train(resume=str(trained_run), lr=0.1)
    config = tmp_path / "more.yaml"
    config.write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="received: --config, --model"):
        pawnet.train(resume=str(trained_run), config=config, model="pawnet-cnn")
    with pytest.raises(ConfigError, match="received: PHOTOS"):
        pawnet.train(tmp_path, resume=str(trained_run))
    with pytest.raises(ConfigError, match=r"no config\.yaml"):
        pawnet.train(resume=str(tmp_path))


def test_resume_before_any_finished_epoch_trains_from_the_first(tmp_path, trained_run,
                                                                 caplog):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "manifest.csv"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    pawnet.train(resume=str(run))
    assert any("training it from the first epoch" in r.getMessage() for r in caplog.records)
    assert (run / "history.csv").read_text() == (trained_run / "history.csv").read_text()
    assert pawnet.load(run).classes == pawnet.load(trained_run).classes


def test_training_needs_two_classes(tmp_path):
    photos = copy_photos(tmp_path / "p", 6, classes=("cat",))
    with pytest.raises(DataError, match="at least 2 classes"):
        pawnet.train(photos, epochs=1, out=str(tmp_path / "run"), **TINY)


@pytest.mark.integration
def test_three_classes(tmp_path):
    photos = copy_photos(tmp_path / "p", 8)
    copy_photos(tmp_path / "p" / "other", 8, classes=("cat",), split="test")
    (tmp_path / "p" / "other" / "cat").rename(tmp_path / "p" / "tabby")
    (tmp_path / "p" / "other").rmdir()
    run = pawnet.train(photos, epochs=1, out=str(tmp_path / "run"), model="pawnet-cnn",
                       image_size=32, batch_size=8)
    assert pawnet.load(run).classes == ["cat", "dog", "tabby"]


@pytest.mark.integration
def test_disk_cache_is_used_then_removed(tmp_path, monkeypatch):
    from pawnet.data import pipeline

    seen = []
    real = pipeline.cache_location
    monkeypatch.setattr(pipeline, "cache_location",
                        lambda *a: seen.append(real(*a)) or seen[-1])
    photos = copy_photos(tmp_path / "p", 6)
    run = pawnet.train(photos, epochs=2, out=str(tmp_path / "run"), cache="disk", **TINY)
    assert seen and all(str(s).startswith(str(run / ".cache")) for s in seen)
    assert not (run / ".cache").exists()
    assert [r["epoch"] for r in _history(run)] == ["1", "2"]


def test_resume_is_refused_from_a_config_file(tmp_path, trained_run):
    config = tmp_path / "c.yaml"
    config.write_text(f"resume: {trained_run}\n")
    with pytest.raises(ConfigError, match=f"Try: pawnet train --resume {trained_run}"):
        pawnet.train(config=config)
    assert not (tmp_path / "runs").exists()


@pytest.mark.integration
def test_mixed_precision_trains_and_saves_a_float32_bundle(tmp_path):
    photos = copy_photos(tmp_path / "p", 10)
    run = pawnet.train(photos, epochs=2, out=str(tmp_path / "run"), precision="mixed", **TINY)
    import keras

    saved = keras.models.load_model(last_checkpoint(run / "checkpoints"))
    assert "mixed_float16" in {layer.dtype_policy.name for layer in saved.layers}
    assert saved.get_layer("predictions").dtype_policy.name == "float32"
    bundle = keras.models.load_model(run / "bundle" / "model.keras")
    assert {layer.dtype_policy.name for layer in bundle.layers} == {"float32"}
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    predictions = pawnet.load(run).predict(sorted(str(p) for p in photos.rglob("*.jpg")))
    assert all(0.99 < sum(p.probabilities.values()) < 1.01 for p in predictions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pawnet.train(resume=str(run), epochs=3)  # the loss-scaled optimizer's state too
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    assert len(_history(run)) == 3


@pytest.mark.integration
def test_a_policy_that_leaves_many_photos_unanswered_is_one_warning_line(tmp_path, caplog):
    photos = copy_photos(tmp_path / "photos", 12)
    run = pawnet.train(photos, model="pawnet-cnn", epochs=1, image_size=32, batch_size=8,
                       val_fraction=0.3, test_fraction=0.0, max_error=0.0,
                       out=str(tmp_path / "run"), verbose=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                and r.name.startswith("pawnet")]
    assert len(warnings) == 1 and "unanswered" in warnings[0] and "Try: " in warnings[0]
    assert not [r for r in caplog.records if r.levelname == "INFO" and r.name.startswith("pawnet")]
    metrics = json.loads((run / "bundle" / "provenance.json").read_text())["metrics"]
    assert metrics["val_unanswered"] > 0.15
    with pytest.raises(pawnet.ConfigError, match="give one"):
        pawnet.train(photos, max_error=0.01, answer_share=0.9)


@pytest.mark.integration
def test_a_labels_file_relabels_and_excludes_photos_of_the_run(tmp_path):
    photos = copy_photos(tmp_path / "photos", 10)
    cats, dogs = (sorted((photos / c).iterdir()) for c in ("cat", "dog"))
    labels = LabelsFile(tmp_path / "labels.csv")
    for photo, label in ((cats[0], "dog"), (dogs[0], "cat"), (cats[1], EXCLUDE)):
        labels.decide(relative_path(photo, photos), label)
    labels.decide("cat/gone.jpg", "dog")
    small = {"model": "efficientnet-lite0", "image_size": 64, "epochs": 3, "batch_size": 8}
    run = tmp_path / "labelled"
    result = invoke("train", photos, "--labels", labels.file, "--out", run,
                    *(f"--{k.replace('_', '-')}={v}" for k, v in small.items()))
    assert result.exit_code == 0, result.output
    assert "; 2 relabelled and 1 excluded by labels.csv." in result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning:")
              and "labels.csv" in line]
    assert warned == ["warning: 1 path in labels.csv is not a photo under "
                      f"{photos} (first: cat/gone.jpg); it was ignored. Try: train on the "
                      "folder the labels file was written for, or remove those lines from it"]

    used = {Path(p.path).name: p for p in read_manifest(run / "manifest.csv")}
    assert len(used) == 19 and cats[1].name not in used
    assert [(used[p.name].label, used[p.name].label_source) for p in (cats[0], dogs[0])] == [
        ("dog", "labels.csv"), ("cat", "labels.csv")]
    assert {used[p.name].label_source for p in cats[2:] + dogs[1:]} == {"folder"}
    assert json.loads((run / "data.json").read_text())["labels"]["unknown"] == ["cat/gone.jpg"]
    plain = pawnet.train(photos, out=str(tmp_path / "plain"), **small)
    assert {p.label_source for p in read_manifest(plain / "manifest.csv")} == {"folder"}
    assert summary(run)["data_fingerprint"] != summary(plain)["data_fingerprint"]
    assert len(summary(run)["data_fingerprint"]) == 64

    (tmp_path / "bad.csv").write_text("cat/cat.1.jpg,dog\n")
    result = invoke("train", photos, "--labels", tmp_path / "bad.csv", "--out", tmp_path / "r")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: labels file ") and "Try: " in result.output
    assert not (tmp_path / "r").exists()
