"""`pawnet compare` and the release gate: two models on the same real photos, the shared
held-out split of two runs, McNemar's test, and the gate's verdict and exit codes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_photos, invoke

import pawnet
from pawnet.data.scan import Photo
from pawnet.data.splits import read_manifest, write_manifest
from pawnet.errors import ConfigError, DataError
from pawnet.reporting.compare import Comparison, Side, compare, gate, shared_split
from pawnet.reporting.evaluate import compute_metrics
from pawnet.reporting.intervals import bootstrap, mcnemar
from pawnet.run_folder import RunFolder

CLASSES = ["cat", "dog"]


def _side(truth: np.ndarray, predicted: np.ndarray) -> Side:
    probs = np.eye(len(CLASSES))[predicted]
    return Side(model="m", runtime="keras", predicted=predicted, right=predicted == truth,
                intervals=bootstrap(truth, predicted, len(CLASSES)),
                metrics=compute_metrics(probs, truth, CLASSES), unsure=0, neither=0)


def _comparison(new_wrong: dict[int, int], old_wrong: dict[int, int] | None = None,
                per_class: int = 200) -> Comparison:
    """200 photos per class; each model wrong on the first `wrong[class]` of a class."""
    truth = np.repeat(np.arange(len(CLASSES)), per_class)
    sides = []
    for wrong in (new_wrong, old_wrong or {}):
        predicted = truth.copy()
        for k, n in wrong.items():
            predicted[k * per_class : k * per_class + n] = 1 - k
        sides.append(_side(truth, predicted))
    return Comparison(new=sides[0], old=sides[1], classes=CLASSES, source="by hand",
                      paths=[f"{i}.jpg" for i in range(len(truth))], truth=truth, skipped=[],
                      mcnemar=mcnemar(sides[0].right, sides[1].right))


@pytest.mark.parametrize(("tolerance", "passed"), [
    (0.02, False), (0.0249, False), (0.025, True), (0.0251, True), (0.03, True)])
def test_the_gate_honours_the_recall_tolerance(tolerance, passed):
    comparison = _comparison({0: 5})  # cat recall 0.975 against 1.0; p = 0.0625
    assert comparison.mcnemar.p_value == pytest.approx(0.0625)
    verdict, reason = gate(comparison, tolerance=tolerance)
    assert verdict is passed
    if not passed:
        assert reason == f"recall of cat drops 0.025 (> tolerance {tolerance:.3f})"
    else:
        assert "largest recall drop 0.025 (cat)" in reason and ";" in reason


def test_the_gate_fails_a_significantly_worse_model_and_passes_a_better_one():
    worse = _comparison({0: 4, 1: 4})  # 8 photos only OLD got right: p = 2 / 2**8
    passed, reason = gate(worse, tolerance=1.0)
    assert not passed
    assert reason == ("NEW is significantly worse (0.9800 vs 1.0000, McNemar p=0.00781 on 8 "
                      "photos they disagree on)")
    assert gate(worse, tolerance=1.0, alpha=0.005)[0]  # not significant at that level
    passed, reason = gate(worse, tolerance=0.0)  # both reasons, on one line
    assert not passed and reason.count("recall of") == 2 and "\n" not in reason
    better = _comparison({}, {0: 4, 1: 4})
    passed, reason = gate(better)
    assert passed and reason.endswith("no class's recall drops")
    with pytest.raises(ConfigError, match="Try: --tolerance"):
        gate(better, alpha=0.0)


def _run(folder: Path, photos: list[tuple[str, str, str]]) -> Path:
    """A run folder holding only a manifest: (name, label, split) per photo; a photo's
    content hash is its name."""
    folder.mkdir()
    write_manifest(RunFolder(folder).manifest,
                   [Photo(f"/p/{name}", label, split, f"sha-{name}")
                    for name, label, split in photos])
    return folder


def test_the_shared_split_leaves_out_what_either_run_learned_from(tmp_path):
    new = _run(tmp_path / "new", [("a", "cat", "test"), ("b", "dog", "test"),
                                  ("c", "cat", "test"), ("d", "dog", "test"),
                                  ("e", "cat", "train")])
    old = _run(tmp_path / "old", [("a", "cat", "test"), ("b", "dog", "train"),
                                  ("c", "dog", "test"), ("d", "dog", "test"),
                                  ("x", "cat", "val")])
    # a copy of a photo OLD validated on, under another name, in both test splits
    for run in (new, old):
        manifest = read_manifest(RunFolder(run).manifest)
        write_manifest(RunFolder(run).manifest,
                       [*manifest, Photo("/p/x-copy", "cat", "test", "sha-x")])
    paths, labels, source = shared_split("NEW", "OLD", (new, old), "test")
    # b: OLD trained on it (not common); left out: c, labelled differently, and x-copy,
    # the content OLD validated on
    assert (paths, labels) == (["/p/a", "/p/d"], ["cat", "dog"])
    assert source == ("the test split both runs held out (2 left out: trained or validated "
                      "on by one run, or labelled differently)")
    with pytest.raises(DataError, match=r"share no val photos .* Try: pawnet compare NEW OLD "
                                        r"PHOTOS$"):
        shared_split("NEW", "OLD", (new, old), "val")
    with pytest.raises(DataError, match=r"OLD is not a training run .* Try: pawnet compare"):
        shared_split("NEW", "OLD", (new, None), "test")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        shared_split("NEW", "OLD", (new, old), "dev")


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["{tmp}/nowhere", "{tmp}/nowhere"], "error: no model at",
                 marks=pytest.mark.integration),  # looking for a built-in imports TensorFlow
    (["A", "B", "--split", "dev"], "error: unknown split 'dev'; allowed: train, val, test. "
     "Try: --split test"),
    (["A", "B", "--alpha", "0"], "error: the gate needs 0 <= tolerance <= 1 and 0 < alpha <= "
     "1; received tolerance=0.02, alpha=0.0. Try: --tolerance 0.02 --alpha 0.05"),
    (["A", "B", "--tolerance", "1.5"], "error: Invalid value for '--tolerance'"),
])
def test_bad_input_is_one_error_line_and_exit_code_2(tmp_path, args, message):
    result = invoke("compare", *[a.format(tmp=tmp_path) for a in args], "--gate")
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


# --- real models on real photos ---------------------------------------------------------


@pytest.fixture(scope="module")
def test_photos(tmp_path_factory) -> Path:
    """60 real photos neither fixture run has seen (cvtricks' test split)."""
    return copy_photos(tmp_path_factory.mktemp("compare") / "photos", 30, split="test")


def _lines(result, prefix: str) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith(prefix)]


def test_a_model_against_itself_passes_with_p_one(trained_run):
    result = invoke("compare", trained_run, trained_run, "--gate")
    assert result.exit_code == 0, result.output
    assert "only NEW right on 0, only OLD right on 0; exact p=1 on the 0 photos" in result.output
    test_count = sum(p.split == "test" for p in read_manifest(RunFolder(trained_run).manifest))
    assert f"Photos: {test_count} from the test split both runs held out;" in result.output
    assert _lines(result, "gate:") == [
        _lines(result, "gate: passed: NEW is not significantly worse")[0]]


def test_photos_a_model_learned_from_are_flagged(trained_run):
    learned = sum(p.split in ("train", "val")
                  for p in read_manifest(RunFolder(trained_run).manifest))
    result = invoke("compare", trained_run, trained_run, Path(trained_run).parent / "photos")
    assert result.exit_code == 0, result.output
    warning = (f"warning: {learned} of the 32 photos were in {trained_run}'s training or "
               "validation split, so its figures on them are optimistic.")
    assert [line for line in result.stderr.splitlines() if line.startswith("warning:")] == [
        f"{warning} Try: photos neither model trained on, or no PHOTOS"]


def test_the_gate_stops_a_weak_model_replacing_a_strong_one(trained_run, transfer_run,
                                                            test_photos):
    weak = pawnet.evaluate(trained_run, test_photos, verbose=False).accuracy
    strong = pawnet.evaluate(transfer_run, test_photos, verbose=False).accuracy
    assert strong - weak > 0.2  # what the fixtures are: a 1-epoch CNN against Lite0
    result = invoke("compare", trained_run, transfer_run, test_photos, "--gate")
    assert result.exit_code == 1, result.output
    assert f"Photos: 60 from {test_photos}; 0 unreadable, skipped" in result.output
    (line,) = _lines(result, "gate:")
    assert line.startswith(f"gate: failed: NEW is significantly worse ({weak:.4f} vs "
                           f"{strong:.4f}, McNemar p=")
    assert invoke("compare", trained_run, transfer_run, test_photos).exit_code == 0  # no --gate


def test_the_other_way_round_the_gate_judges_each_class(trained_run, transfer_run,
                                                         test_photos):
    comparison = compare(transfer_run, trained_run, test_photos, verbose=False)
    assert comparison.mcnemar.only_first > comparison.mcnemar.only_second
    drop, name = max((-comparison.difference("recall", i), c)
                     for i, c in enumerate(comparison.classes))
    # the weak model calls most photos one class, so the strong one loses recall there
    assert drop > 0.02
    result = invoke("compare", transfer_run, trained_run, test_photos, "--gate")
    assert result.exit_code == 1, result.output
    assert _lines(result, "gate:") == [
        f"gate: failed: recall of {name} drops {drop:.3f} (> tolerance 0.020)"]
    result = invoke("compare", transfer_run, trained_run, test_photos, "--gate",
                    "--tolerance", f"{drop + 0.001:.3f}")
    assert result.exit_code == 0, result.output
    (line,) = _lines(result, "gate:")
    assert line.startswith("gate: passed: NEW is not significantly worse (")
    assert line.endswith(f"largest recall drop {drop:.3f} ({name}) <= tolerance "
                         f"{drop + 0.001:.3f}")


def test_json_holds_both_models_the_test_and_the_verdict(trained_run, transfer_run,
                                                         test_photos):
    result = invoke("compare", transfer_run, trained_run, test_photos, "--json", "--gate",
                    "--tolerance", "0.5")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["n"] == 60 and found["support"] == {"cat": 30, "dog": 30}
    assert found["gate"]["passed"] and found["gate"]["tolerance"] == 0.5
    new, old, test = found["new"], found["old"], found["mcnemar"]
    assert new["model"] == str(transfer_run) and old["model"] == str(trained_run)
    for side in (new, old):
        accuracy = side["accuracy"]
        assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
        right = np.trace(np.array(side["confusion_matrix"]))
        assert accuracy["value"] == pytest.approx(right / 60)
        assert set(side["per_class"]) == {"cat", "dog"} and side["unsure"] >= 0
    assert found["difference"]["accuracy"] == pytest.approx(
        new["accuracy"]["value"] - old["accuracy"]["value"])
    assert test["only_new"] - test["only_old"] == round(60 * found["difference"]["accuracy"])
    assert result.stderr.strip().splitlines()[-1].startswith("gate: passed:")


def test_runs_on_different_photos_share_no_split(trained_run, transfer_run):
    result = invoke("compare", trained_run, transfer_run)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {trained_run} and {transfer_run} share no test photos (trained on different "
        "photos?), so there is no held-out split to compare them on. Try: pawnet compare "
        f"{trained_run} {transfer_run} PHOTOS")


def test_models_with_other_classes_are_refused(trained_run, tmp_path, test_photos):
    other = tmp_path / "other"
    shutil.copytree(Path(trained_run) / "bundle", other)
    spec = json.loads((other / "bundle.json").read_text())
    (other / "bundle.json").write_text(json.dumps({**spec, "class_names": ["kitten", "puppy"]}))
    result = invoke("compare", other, trained_run, test_photos, "--gate")
    assert result.exit_code == 2
    assert result.stderr.strip() == (  # refused before either model is converted or run
        f"error: {other} and {trained_run} have different classes: kitten, puppy against "
        "cat, dog. Try: compare models trained on the same class names")


@pytest.fixture(scope="module")
def second_run(trained_run, tmp_path_factory) -> Path:
    """Another model trained on `trained_run`'s photos with its settings and seed (so the
    same split), for one more epoch."""
    return pawnet.train(Path(trained_run).parent / "photos", model="pawnet-cnn", epochs=2,
                        image_size=32, batch_size=8, val_fraction=0.25, test_fraction=0.25,
                        out=str(tmp_path_factory.mktemp("second") / "run"), verbose=False)


def _held_out(run: Path) -> list[str]:
    return [p.path for p in read_manifest(RunFolder(run).manifest) if p.split == "test"]


def test_two_runs_on_one_folder_share_its_test_split(trained_run, second_run):
    assert _held_out(second_run) == _held_out(trained_run)  # the same seed: the same split
    comparison = compare(second_run, trained_run, runtime="keras", verbose=False)
    assert comparison.paths == _held_out(trained_run) and comparison.skipped == []
    assert comparison.source == "the test split both runs held out"
    right = comparison.new.right.sum() - comparison.old.right.sum()
    assert comparison.mcnemar.only_first - comparison.mcnemar.only_second == right
    for run, side in ((second_run, comparison.new), (trained_run, comparison.old)):
        report = pawnet.evaluate(run, runtime="keras", verbose=False)
        assert side.intervals.accuracy.value == report.accuracy


def test_photos_gone_or_damaged_since_training_are_skipped_and_counted(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval*"))
    manifest = read_manifest(RunFolder(run).manifest)
    damaged = tmp_path / "damaged.jpg"
    held = [p for p in manifest if p.split == "test"]
    damaged.write_bytes(Path(held[0].path).read_bytes()[:300])
    write_manifest(RunFolder(run).manifest, [replace(p, path=str(damaged)) if p == held[0]
                                             else p for p in manifest])
    result = invoke("compare", run, run)
    assert result.exit_code == 0, result.output
    assert (f"Photos: {len(held) - 1} from the test split both runs held out; 1 unreadable, "
            "skipped") in result.output
    assert f"  skipped {damaged}: " in result.output
