"""`pawnet compare` and the release gate: two models on the same real photos, the shared
held-out split of two runs, McNemar's test, and the gate's verdict and exit codes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import copy_photos, invoke, real_photos

import pawnet
from pawnet.data.scan import Photo
from pawnet.data.splits import read_manifest, write_manifest
from pawnet.errors import ConfigError, DataError
from pawnet.inference.predictor import Prediction
from pawnet.reporting import compare as compare_module
from pawnet.reporting.compare import (
    Comparison,
    Side,
    compare,
    format_comparison,
    release_gate,
    shared_split,
)
from pawnet.reporting.evaluate import compute_metrics
from pawnet.reporting.intervals import bootstrap, mcnemar
from pawnet.run_folder import RunFolder

CLASSES = ["cat", "dog"]


def _side(truth: np.ndarray, predicted: np.ndarray, classes: list[str] = CLASSES,
          unsure: int = 0, neither: int = 0) -> Side:
    probs = np.eye(len(classes))[predicted]
    return Side(model="m", runtime="keras", predicted=predicted, right=predicted == truth,
                intervals=bootstrap(truth, predicted, len(classes)),
                metrics=compute_metrics(probs, truth, classes), unsure=unsure, neither=neither)


def _comparison(new_wrong: dict[int, int], old_wrong: dict[int, int] | None = None,
                per_class: int = 200, classes: list[str] = CLASSES, present: int = 2,
                unanswered: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
                ) -> Comparison:
    """`per_class` photos of each of the first `present` classes; each model wrong on the
    first `wrong[class]` photos of a class (calling them the next class); (unsure,
    neither) per model."""
    truth = np.repeat(np.arange(present), per_class)
    sides = []
    for wrong, (unsure, neither) in zip((new_wrong, old_wrong or {}), unanswered, strict=True):
        predicted = truth.copy()
        for k, n in wrong.items():
            predicted[k * per_class : k * per_class + n] = (k + 1) % len(classes)
        sides.append(_side(truth, predicted, classes, unsure, neither))
    return Comparison(new=sides[0], old=sides[1], classes=classes, source="by hand",
                      paths=[f"{i}.jpg" for i in range(len(truth))], truth=truth, skipped=[],
                      mcnemar=mcnemar(sides[0].right, sides[1].right))


@pytest.mark.parametrize(("tolerance", "passed"), [
    (0.02, False), (0.0249, False), (0.025, True), (0.0251, True), (0.03, True)])
def test_the_gate_honours_the_recall_tolerance(tolerance, passed):
    comparison = _comparison({0: 5})  # cat recall 0.975 against 1.0; p = 0.0625
    assert comparison.mcnemar.p_value == pytest.approx(0.0625)
    verdict, reason = release_gate(comparison, tolerance=tolerance)
    assert verdict is passed
    if not passed:
        assert reason == f"recall of cat drops 0.025 on 200 photos (> tolerance {tolerance:.3f})"
    else:
        assert reason == (f"NEW is not significantly worse (0.9875 vs 1.0000, McNemar p=0.0625 "
                          f"on 5 photos they disagree on; alpha 0.05); largest recall drop "
                          f"0.025 (cat) <= tolerance {tolerance:.3f}; unsure or neither 0 vs 0 "
                          "of 400 photos")


def test_the_gate_fails_a_significantly_worse_model_and_passes_a_better_one():
    worse = _comparison({0: 4, 1: 4})  # 8 photos only OLD got right: p = 2 / 2**8
    passed, reason = release_gate(worse, tolerance=1.0)
    assert not passed
    assert reason == ("NEW is significantly worse (0.9800 vs 1.0000, McNemar p=0.00781 on 8 "
                      "photos they disagree on)")
    assert release_gate(worse, tolerance=1.0, alpha=0.005)[0]  # not significant at that level
    passed, reason = release_gate(worse, tolerance=0.0)  # both reasons, on one line
    assert not passed and reason.count("recall of") == 2 and "\n" not in reason
    better = _comparison({}, {0: 4, 1: 4})
    passed, reason = release_gate(better)
    assert passed and reason.endswith("no class's recall drops; unsure or neither 0 vs 0 of "
                                      "400 photos")
    with pytest.raises(ConfigError, match="Try: --tolerance"):
        release_gate(better, alpha=0.0)


def test_the_gate_judges_three_classes_and_skips_an_absent_one():
    classes = ["cat", "dog", "fox"]
    # no fox photos; NEW calls 6 dogs foxes, OLD 2 cats dogs
    c = _comparison({1: 6}, {0: 2}, classes=classes, present=2)
    assert c.support == [200, 200, 0] and c.difference("recall", 2) is None
    assert c.to_json()["difference"]["recall"] == {"cat": pytest.approx(0.01),
                                                   "dog": pytest.approx(-0.03), "fox": None}
    assert release_gate(c) == (False, "recall of dog drops 0.030 on 200 photos (> tolerance "
                                      "0.020)")
    passed, reason = release_gate(c, tolerance=0.03)
    assert passed and "largest recall drop 0.030 (dog) <= tolerance 0.030" in reason
    table = format_comparison(c)
    assert "recall fox (0)" in table and "n/a" in table  # shown, never judged
    # a class of 47 photos fails on one photo more wrong: 1/47 = 0.021
    small = _comparison({0: 1}, per_class=47)
    assert release_gate(small)[1] == "recall of cat drops 0.021 on 47 photos (> tolerance 0.020)"


@pytest.mark.parametrize(("unanswered", "max_rise", "expected"), [
    (((10, 4), (3, 1)), 0.02, (False, "unsure or neither rises from 4 to 14 of 400 photos "
                                      "(0.025 > max rise 0.020)")),
    (((9, 3), (3, 1)), 0.02, (True, "unsure or neither 12 vs 4 of 400 photos (rise 0.020 <= "
                                    "0.020)")),
    (((10, 4), (3, 1)), 0.03, (True, "unsure or neither 14 vs 4 of 400 photos (rise 0.025 <= "
                                     "0.030)")),
    (((0, 3), (1, 3)), 0.0, (True, "unsure or neither 3 vs 4 of 400 photos")),
])
def test_the_gate_fails_a_model_that_answers_fewer_photos(unanswered, max_rise, expected):
    comparison = _comparison({}, unanswered=unanswered)
    passed, reason = release_gate(comparison, max_unanswered_rise=max_rise)
    assert (passed, reason.split("; ")[-1]) == expected


def _run(folder: Path, photos: list[tuple[str, str, str]], root: str = "/p") -> Path:
    """A run folder holding only a manifest: (name, label, split) per photo, under `root`;
    a photo's content hash is its name."""
    folder.mkdir()
    write_manifest(RunFolder(folder).manifest,
                   [Photo(f"{root}/{name}", label, split, f"sha-{name}")
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


def test_runs_on_one_folder_in_two_places_share_its_split_by_content(tmp_path):
    """OLD trained on the folder in `was/`, NEW on a copy in `now/` (another checkout): the
    same photos, so the same split. Each is read from NEW's place, or OLD's if gone."""
    photos = [("a", "cat", "test"), ("b", "dog", "test"), ("c", "dog", "test"),
              ("t", "cat", "train")]
    new = _run(tmp_path / "new", photos, root=f"{tmp_path}/now")
    old = _run(tmp_path / "old", photos, root=f"{tmp_path}/was")
    for folder, names in (("now", "at"), ("was", "ab")):  # now/b is gone; c is gone from both
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"photo")
    paths, labels, source = shared_split("NEW", "OLD", (new, old), "test")
    assert paths == [f"{tmp_path}/now/a", f"{tmp_path}/was/b", f"{tmp_path}/now/c"]
    assert labels == ["cat", "dog", "dog"] and source == "the test split both runs held out"


class _FakePredictor:
    """A model's answers without a model: each real photo gets its true class (from its
    folder) with probability 0.9, or `always` if given; `errors` maps a photo's name to
    the error it cannot be read with."""

    def __init__(self, classes: list[str], always: str | None = None,
                 errors: dict[str, str] | None = None, min_confidence: float = 0.0):
        self.classes, self.always, self.errors = classes, always, errors or {}
        self.min_confidence = min_confidence
        self.runtime = SimpleNamespace(name="fake")

    def predict(self, paths: list[str]) -> list[Prediction]:
        answers = []
        for path in paths:
            if Path(path).name in self.errors:
                answers.append(Prediction(path, error=self.errors[Path(path).name]))
                continue
            top = self.always or Path(path).parent.name
            row = np.array([0.9 if c == top else 0.1 for c in self.classes])
            answers.append(Prediction.from_row(path, self.classes, row,
                                               min_confidence=self.min_confidence))
        return answers


def _fake_models(monkeypatch, new: _FakePredictor, old: _FakePredictor) -> None:
    models = {"NEW": new, "OLD": old}
    monkeypatch.setattr(compare_module, "resolve", lambda m: SimpleNamespace(
        spec=SimpleNamespace(class_names=models[m].classes), run_dir=None, model=m))
    monkeypatch.setattr(compare_module, "load", lambda bundle, runtime: models[bundle.model])


def test_answers_are_aligned_by_class_name_and_each_unreadable_photo_says_by_whom(
        monkeypatch, tmp_path):
    photos = copy_photos(tmp_path / "photos", 4, split="test")
    names = {label: sorted(p.name for p in (photos / label).iterdir()) for label in CLASSES}
    cat, dog = names["cat"], names["dog"]
    new = _FakePredictor(["cat", "dog"], errors={cat[0]: "cannot decode", dog[0]: "gone"})
    # OLD lists its classes the other way round, calls every photo a dog, is unsure of all
    old = _FakePredictor(["dog", "cat"], always="dog", min_confidence=0.95,
                         errors={cat[1]: "too big", dog[0]: "truncated"})
    _fake_models(monkeypatch, new, old)
    c = compare("NEW", "OLD", photos, verbose=False)
    assert c.classes == ["cat", "dog"] and c.n == 5 and c.support == [2, 3]
    assert c.new.predicted.tolist() == c.truth.tolist() and c.new.unanswered == 0
    assert c.old.predicted.tolist() == [1] * 5 and (c.old.unsure, c.old.neither) == (5, 0)
    assert [r.value for r in c.old.intervals.recall] == [0.0, 1.0]
    assert [r.value for r in c.new.intervals.recall] == [1.0, 1.0]
    assert (c.mcnemar.only_first, c.mcnemar.only_second) == (2, 0)
    assert c.skipped == [
        {"path": str(photos / "cat" / cat[0]), "model": "new", "error": "cannot decode"},
        {"path": str(photos / "cat" / cat[1]), "model": "old", "error": "too big"},
        {"path": str(photos / "dog" / dog[0]), "model": "both",
         "error": "NEW: gone; OLD: truncated"}]
    text = format_comparison(c)
    assert f"  skipped {photos / 'cat' / cat[1]} (unreadable by OLD): too big" in text
    assert f"  skipped {photos / 'dog' / dog[0]} (unreadable by both): NEW: gone; OLD: " \
           "truncated" in text
    # NEW answers all 5, OLD none: the share of unanswered photos falls, never a reason
    assert release_gate(c)[1].endswith("unsure or neither 0 vs 5 of 5 photos")
    passed, reason = release_gate(compare("OLD", "NEW", photos, verbose=False))
    assert not passed and "unsure or neither rises from 0 to 5 of 5 photos (1.000" in reason
    assert "recall of cat drops 1.000 on 2 photos" in reason


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["{tmp}/nowhere", "{tmp}/nowhere"], "error: no model at {tmp}/nowhere. Try: "
                 "a run folder from `pawnet train` (e.g. runs/train), its bundle/ folder, or "
                 "imagenet-catdog", marks=pytest.mark.integration),  # a built-in imports TF
    (["A", "B", "--split", "dev"], "error: unknown split 'dev'; allowed: train, val, test. "
     "Try: --split test"),
    (["A", "B", "--alpha", "0"], "error: the gate needs 0 <= tolerance <= 1, 0 < alpha <= 1 "
     "and 0 <= max_unanswered_rise <= 1; received tolerance=0.02, alpha=0.0, "
     "max_unanswered_rise=0.02. Try: --tolerance 0.02 --alpha 0.05 --max-unanswered-rise 0.02"),
    (["A", "B", "--tolerance", "1.5"], "error: Invalid value for '--tolerance': Input should "
     "be less than or equal to 1. Try: pawnet compare --help"),
    (["A", "B", "--max-unanswered-rise", "-0.1"], "error: Invalid value for "
     "'--max-unanswered-rise': Input should be greater than or equal to 0. Try: pawnet "
     "compare --help"),
    # PHOTOS is checked before the models (A and B are no models) load
    (["A", "B", "{tmp}/nowhere"], "error: PHOTOS {tmp}/nowhere does not exist. Try: a folder "
     "with a folder of photos per class, or no PHOTOS for the split both runs held out"),
    (["A", "B", "{tmp}/photo.jpg"], "error: PHOTOS {tmp}/photo.jpg is a file, not a folder. "
     "Try: a folder with a folder of photos per class, or no PHOTOS for the split both runs "
     "held out"),
])
def test_bad_input_is_one_error_line_and_exit_code_2(tmp_path, args, message):
    shutil.copy(real_photos("cat", 1)[0], tmp_path / "photo.jpg")
    result = invoke("compare", *[a.format(tmp=tmp_path) for a in args], "--gate")
    assert result.exit_code == 2
    assert result.stderr == message.format(tmp=tmp_path) + "\n"


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


def test_photos_a_model_learned_from_are_flagged_even_in_a_copy(trained_run, tmp_path):
    learned = sum(p.split in ("train", "val")
                  for p in read_manifest(RunFolder(trained_run).manifest))
    copy = shutil.copytree(Path(trained_run).parent / "photos", tmp_path / "copy")  # as CI does
    result = invoke("compare", trained_run, trained_run, copy)
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
    support = comparison.support[comparison.classes.index(name)]
    assert _lines(result, "gate:") == [
        f"gate: failed: recall of {name} drops {drop:.3f} on {support} photos (> tolerance "
        "0.020)"]
    result = invoke("compare", transfer_run, trained_run, test_photos, "--gate",
                    "--tolerance", f"{drop + 0.001:.3f}")
    assert result.exit_code == 0, result.output
    (line,) = _lines(result, "gate:")
    assert line.startswith("gate: passed: NEW is not significantly worse (")
    new, old = comparison.new.unanswered, comparison.old.unanswered
    assert new <= old or (new - old) / 60 <= 0.02  # what the fixtures are; else a 2nd reason
    assert f"; largest recall drop {drop:.3f} ({name}) <= tolerance {drop + 0.001:.3f}; " \
           f"unsure or neither {new} vs {old} of 60 photos" in line


def test_json_holds_both_models_the_test_and_the_verdict(trained_run, transfer_run,
                                                         test_photos):
    result = invoke("compare", transfer_run, trained_run, test_photos, "--json", "--gate",
                    "--tolerance", "0.5")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["n"] == 60 and found["support"] == {"cat": 30, "dog": 30}
    assert found["gate"]["passed"] and found["gate"]["tolerance"] == 0.5
    assert found["gate"]["max_unanswered_rise"] == 0.02 and found["skipped"] == []
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


def test_runs_on_different_photos_share_no_split(trained_run, transfer_run, tmp_path):
    # the fixtures' folders are copies of some of the same photos, which they share by
    # content (the test split of each seed holds photos of both): keep only other photos
    other = tmp_path / "other"
    shutil.copytree(transfer_run, other, ignore=shutil.ignore_patterns("eval*"))
    learned = {p.sha256 for p in read_manifest(RunFolder(trained_run).manifest)}
    manifest = read_manifest(RunFolder(other).manifest)
    write_manifest(RunFolder(other).manifest, [p for p in manifest if p.sha256 not in learned])
    assert any(p.sha256 in learned and p.split == "test" for p in manifest)
    result = invoke("compare", trained_run, other)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {trained_run} and {other} share no test photos (trained on different "
        "photos?), so there is no held-out split to compare them on. Try: pawnet compare "
        f"{trained_run} {other} PHOTOS")


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
    assert f"  skipped {damaged} (unreadable by both): " in result.output


def test_a_run_on_a_moved_copy_of_the_photos_shares_the_split(trained_run, tmp_path):
    """The same photos in another place (another checkout, a CI workspace): the same test
    split, read from NEW's place."""
    moved = tmp_path / "photos"
    shutil.copytree(Path(trained_run).parent / "photos", moved)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval*"))
    old_root = str(Path(trained_run).parent / "photos")
    manifest = read_manifest(RunFolder(run).manifest)
    write_manifest(RunFolder(run).manifest,
                   [replace(p, path=p.path.replace(old_root, str(moved))) for p in manifest])
    comparison = compare(run, trained_run, runtime="keras", verbose=False)
    held = [p.path for p in manifest if p.split == "test"]
    assert comparison.paths == [p.replace(old_root, str(moved)) for p in held]
    assert comparison.source == "the test split both runs held out" and not comparison.skipped
    assert comparison.mcnemar.only_first + comparison.mcnemar.only_second == 0  # one model
