import hashlib
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_photos, invoke, real_photos

import pawnet
from pawnet.data.images import load_pixels
from pawnet.data.shards import in_shard, parse_shard, shard_key
from pawnet.data.splits import read_manifest
from pawnet.errors import ConfigError, ImageError
from pawnet.inference.bundle import split_outputs
from pawnet.inference.output import format_predictions
from pawnet.inference.predictor import Prediction, expand_paths
from pawnet.trust.calibration import calibrate


def test_predicts_label_and_every_class_probability(trained_run):
    predictor = pawnet.load(trained_run, min_confidence=0)
    [result] = predictor.predict(real_photos("dog", 1, "test"))
    assert set(result.probabilities) == {"cat", "dog"}
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert 0 <= result.ood_score <= 2
    top = result.top_class
    assert top == max(result.probabilities, key=result.probabilities.get)
    assert result.label == (top if result.ood_score <= predictor.spec.ood_threshold
                            else "neither")


def test_unreadable_files_get_errors_and_the_rest_are_predicted(trained_run, odd_files):
    folder, expected = odd_files
    paths = [folder / name for name in expected] + [folder / "missing.jpg"]
    results = pawnet.load(trained_run).predict(paths)
    assert len(results) == len(paths)
    for result in results:
        name = result.path.split("/")[-1]
        should_fail = name == "missing.jpg" or expected.get(name) is not None
        assert (result.error is not None) == should_fail, (name, result)


def test_bytes_and_paths_predict_identically(trained_run):
    photo = real_photos("cat", 1, "test")[0]
    predictor = pawnet.load(trained_run)
    by_path, by_bytes = predictor.predict([photo, photo.read_bytes()])
    assert by_bytes.path == "<bytes>"
    assert by_path.probabilities == by_bytes.probabilities


def test_prediction_is_the_same_from_predict_evaluate_and_python(trained_run):
    report = pawnet.evaluate(trained_run, split="val")
    val = [p.path for p in read_manifest(trained_run / "manifest.csv") if p.split == "val"]
    predictor = pawnet.load(trained_run)
    one_by_one = [predictor.predict([p])[0] for p in val]
    together = predictor.predict(val)
    for a, b in zip(one_by_one, together, strict=True):
        for c in predictor.classes:
            assert a.probabilities[c] == pytest.approx(b.probabilities[c], abs=1e-6)
    correct = np.mean([r.top_class == p.label for r, p in zip(together, [
        p for p in read_manifest(trained_run / "manifest.csv") if p.split == "val"], strict=True)])
    assert report.accuracy == pytest.approx(correct)


def test_every_batch_size_runs_one_compiled_function_with_keras_own_outputs(trained_run):
    from pawnet.data.pipeline import batch_function

    predictor = pawnet.load(trained_run, batch_size=8, runtime="keras")
    photos = real_photos("cat", 6, "test") + real_photos("dog", 5, "test")
    results = predictor.predict(photos)  # a full batch of 8, then a partial one of 3
    predictor.predict(photos[:1])
    predictor.probabilities(np.zeros((5, 32, 32, 3), np.uint8))
    assert batch_function(predictor.model, "uint8").experimental_get_tracing_count() == 1
    pixels = np.stack([load_pixels(p, 32) for p in photos])
    expected, scores = split_outputs(predictor.model.predict(pixels.astype("float32"),
                                                             verbose=0), predictor.spec)
    got = np.array([[r.probabilities[c] for c in predictor.classes] for r in results])
    expected = calibrate(expected, predictor.spec.temperature)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose([r.ood_score for r in results], scores, atol=1e-5)


def test_expand_paths_folders_globs_and_awkward_names(tmp_path):
    src = real_photos("cat", 2)
    (tmp_path / "sub").mkdir()
    shutil.copy(src[0], tmp_path / "sub" / "cat.4142(1).jpg")
    shutil.copy(src[1], tmp_path / "b.jpg")
    (tmp_path / "sub" / "_DS_Store").write_bytes(b"\0" * 10)
    assert expand_paths([tmp_path]) == [str(tmp_path / "b.jpg"),
                                        str(tmp_path / "sub" / "cat.4142(1).jpg")]
    assert expand_paths([str(tmp_path / "sub" / "cat.4142(1).jpg")]) == [
        str(tmp_path / "sub" / "cat.4142(1).jpg")]
    assert expand_paths([str(tmp_path / "**" / "*.jpg")]) == sorted(
        [str(tmp_path / "b.jpg"), str(tmp_path / "sub" / "cat.4142(1).jpg")])
    assert expand_paths([str(tmp_path / "*.png")]) == [str(tmp_path / "*.png")]


RESULTS = [Prediction.from_row("/p/cat.12.jpg", ["cat", "dog"], np.array([0.75, 0.25])),
           Prediction("/p/broken.jpg", error="truncated or corrupt image"),
           Prediction.from_row("/p/dog.3.jpg", ["cat", "dog"], np.array([0.1, 0.9]))]


def test_prediction_from_a_row_of_probabilities():
    first = RESULTS[0]
    assert (first.label, first.confidence) == ("cat", 0.75)
    assert first.to_dict() == {"path": "/p/cat.12.jpg", "label": "cat", "reason": None,
                               "probabilities": {"cat": 0.75, "dog": 0.25}}
    assert RESULTS[1].to_dict() == {"path": "/p/broken.jpg",
                                    "error": "truncated or corrupt image"}


def test_neither_wins_over_unsure_and_unsure_over_the_top_class():
    def label(row, score, min_confidence=0.0, ood_threshold=0.5):
        return Prediction.from_row("p", ["cat", "dog"], np.array(row), score,
                                   min_confidence=min_confidence,
                                   ood_threshold=ood_threshold).label

    assert label([0.9, 0.1], 0.2) == "cat"
    assert label([0.9, 0.1], 0.6) == "neither"
    assert label([0.6, 0.4], 0.6, min_confidence=0.7) == "neither"
    assert label([0.6, 0.4], 0.2, min_confidence=0.7) == "unsure"
    assert label([0.3, 0.7], 0.2, min_confidence=0.7) == "dog"  # at the threshold: answered
    assert label([0.9, 0.1], 0.6, ood_threshold=None) == "cat"  # a model without OOD score
    small = Prediction.from_row("p", ["cat", "dog"], np.array([0.9, 0.1]), 0.6, size=(40, 30),
                                min_side=48, ood_threshold=0.5)
    assert (small.label, small.reason) == ("unsure", "too small (40x30)")  # before neither
    scored = Prediction.from_row("p", ["cat", "dog"], np.array([0.9, 0.1]), 0.25)
    assert scored.to_dict()["ood_score"] == 0.25
    line = format_predictions([scored], ["cat", "dog"], "csv").splitlines()[1]
    assert line == "p,cat,0.900000,0.100000,0.250000,,"
    table = format_predictions([scored], ["cat", "dog"]).splitlines()
    assert table[0].split()[-1] == "ood_score" and table[1].split()[-1] == "0.2500"


def test_a_minimum_confidence_outside_zero_to_one_is_refused(trained_run):
    with pytest.raises(ConfigError, match="min_confidence must be a number from 0 to 1"):
        pawnet.load(trained_run, min_confidence=1.5)
    predictor = pawnet.load(trained_run)
    for bad in (1.5, -0.1, True, "0.5"):  # a given predictor's copy is checked the same way
        with pytest.raises(ConfigError, match=r"from 0 to 1 \(0: never unsure\), received"):
            pawnet.load(predictor, min_confidence=bad)
    assert pawnet.load(predictor, min_confidence=0).min_confidence == 0.0


def test_every_output_format():
    classes = ["cat", "dog"]
    table = format_predictions(RESULTS, classes).splitlines()
    assert table[0].split() == ["path", "label", "cat", "dog"]
    assert table[2].endswith("error: truncated or corrupt image")
    assert [r["path"] for r in json.loads(format_predictions(RESULTS, classes, "json"))] == [
        r.path for r in RESULTS]
    csv_lines = format_predictions(RESULTS, classes, "csv").splitlines()
    assert csv_lines[0] == "path,label,cat,dog,ood_score,reason,error"
    assert csv_lines[1] == "/p/cat.12.jpg,cat,0.750000,0.250000,,,"
    assert csv_lines[2] == "/p/broken.jpg,,,,,,truncated or corrupt image"
    kaggle = format_predictions(RESULTS, classes, "kaggle").splitlines()
    assert kaggle == ["id,label", "3,0.900000", "12,0.250000"]  # by id, unreadable left out


def test_kaggle_format_needs_a_dog_class_and_numbered_files():
    with pytest.raises(ConfigError, match=r"needs a 'dog' class.*Try: --format csv"):
        format_predictions(RESULTS[:1], ["cat", "fox"], "kaggle")
    unnumbered = [Prediction.from_row("/p/rex.jpg", ["cat", "dog"], np.array([0.2, 0.8]))]
    with pytest.raises(ConfigError, match=r"number in each file name.*rex.jpg"):
        format_predictions(unnumbered, ["cat", "dog"], "kaggle")


@pytest.mark.parametrize("runtime", ["keras", "auto"])
def test_tta_averages_each_photo_with_its_mirror_image(trained_run, runtime):
    photos = real_photos("cat", 3, "test") + real_photos("dog", 3, "test")
    plain = pawnet.load(trained_run, runtime=runtime)
    pixels = np.stack([plain.decode(p) for p in photos])
    want = (plain.probabilities(pixels) + plain.probabilities(pixels[:, :, ::-1])) / 2
    assert not np.allclose(want, plain.probabilities(pixels), atol=1e-4)  # flips matter
    tta = pawnet.load(trained_run, runtime=runtime, tta=True)
    got = np.array([[r.probabilities[c] for c in tta.classes] for r in tta.predict(photos)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(plain.probabilities(pixels, tta=True), want, atol=1e-5)


def test_tta_from_the_cli_and_in_the_evaluation_report(trained_run, tmp_path):
    from typer.testing import CliRunner

    from pawnet.cli import app

    photo = str(real_photos("dog", 1, "test")[0])
    runner = CliRunner()
    plain = json.loads(runner.invoke(app, ["predict", str(trained_run), photo, "--json"]).stdout)
    tta = json.loads(runner.invoke(app, ["predict", str(trained_run), photo, "--json",
                                         "--tta"]).stdout)
    want = pawnet.load(trained_run, tta=True).predict([photo])[0].probabilities
    assert tta[0]["probabilities"] == pytest.approx(want, abs=1e-6)
    assert tta[0]["probabilities"] != pytest.approx(plain[0]["probabilities"], abs=1e-6)
    result = runner.invoke(app, ["evaluate", str(trained_run), "--tta", "--out",
                                 str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "with flip test-time augmentation" in result.output
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["tta"] is True


def _key(path: str) -> int:
    """The documented rule, computed here independently: SHA-256 of the bytes, else of the
    path."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        data = path.encode()
    return int(hashlib.sha256(data).hexdigest()[:16], 16)


def test_shards_hold_every_photo_once_and_together_the_single_run_rows(trained_run, tmp_path):
    folder = copy_photos(tmp_path / "photos", 15, split="test")  # 30 real photos
    data = real_photos("dog", 1, "test")[0].read_bytes()
    (folder / "dog" / "broken.jpg").write_bytes(data[: len(data) // 2])
    missing = str(folder / "zzz-missing.jpg")  # unreadable: shared out by its path
    single = invoke("predict", trained_run, folder, missing, "--format", "csv")
    assert single.exit_code == 0, single.output
    header, *rows = single.stdout.splitlines()
    assert len(rows) == 32 and single.stdout.endswith("\n")
    parts = []
    for i in range(3):
        out = tmp_path / f"part-{i}.csv"
        result = invoke("predict", trained_run, folder, missing, "--format", "csv",
                        "--shard", f"{i}/3", "--out", out)
        assert result.exit_code == 0, result.output
        assert result.stdout == ""  # all of it went to the file
        part_header, *part = out.read_text().splitlines()
        assert part_header == header and part, i
        assert part == [row for row in rows if row in part]  # the single run's order
        assert all(_key(row.split(",")[0]) % 3 == i for row in part)
        parts.append(part)
    together = [row for part in parts for row in part]
    assert Counter(together) == Counter(rows)  # byte-identical lines, each photo once
    assert Counter(row.split(",")[0] for row in together) == Counter(
        row.split(",")[0] for row in rows)
    assert sorted(together, key=lambda row: row.split(",")[0]) == rows  # the README rule
    merged = subprocess.run(  # README's shell recipe
        ["bash", "-c", "{ head -n 1 part-0.csv; tail -q -n +2 part-*.csv "
         "| LC_ALL=C sort -s -t, -k1,1; }"], cwd=tmp_path, capture_output=True, text=True)
    assert merged.stdout == single.stdout, merged.stderr
    failed = {row.split(",")[0] for row in together if row.split(",")[-1]}
    assert failed == {str(folder / "dog" / "broken.jpg"), missing}


def test_a_shard_is_chosen_by_content_not_by_path_or_place(trained_run, tmp_path):
    photos = [str(p) for p in real_photos("cat", 6, "test")]
    (tmp_path / "elsewhere").mkdir()
    renamed = shutil.copy(photos[0], tmp_path / "elsewhere" / "renamed-copy.jpg")
    assert shard_key(renamed) == shard_key(photos[0]) == shard_key(Path(renamed).read_bytes())
    assert shard_key(tmp_path / "no-such.jpg") == _key(str(tmp_path / "no-such.jpg"))
    shard = f"{shard_key(photos[0]) % 4}/4"
    forward = [photos[i] for i in in_shard(photos, shard)]
    backward = [photos[::-1][i] for i in in_shard(photos[::-1], shard)]
    assert photos[0] in forward and forward == backward[::-1]
    assert sorted(i for n in range(4) for i in in_shard(photos, (n, 4))) == list(range(6))
    predictor = pawnet.load(trained_run)
    labelled = predictor.predict([renamed, *photos[1:]], shard=shard)
    assert labelled[0].path == str(renamed)
    assert [p.path for p in labelled[1:]] == forward[1:]


@pytest.mark.parametrize("bad", ["3/2", "a/b", "0/0", "2/2", "-1/2", "1", "1/2/3", "", " /3"])
def test_a_bad_shard_is_one_error_line(trained_run, bad):
    result = invoke("predict", trained_run, real_photos("cat", 1, "test")[0], "--shard", bad)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: shard must be I/N with 0 <= I < N, e.g. 0/4 for the first of 4 shares; "
        f"received: {bad!r}"]
    with pytest.raises(ConfigError, match="shard must be I/N"):
        parse_shard(bad)
    assert parse_shard("2/3") == parse_shard((2, 3)) == (2, 3)
    with pytest.raises(ConfigError):
        parse_shard((True, 2))


def test_an_empty_shard_is_a_header_and_no_failure(trained_run, tmp_path):
    photo = str(real_photos("cat", 1, "test")[0])
    other = (_key(photo) + 1) % 2
    result = invoke("predict", trained_run, photo, "--format", "csv", "--shard", f"{other}/2")
    assert result.exit_code == 0, result.output
    assert result.stdout == "path,label,cat,dog,ood_score,reason,error\n"


def test_decode_raises_an_image_error_with_the_reason_predict_reports(trained_run, tmp_path):
    predictor = pawnet.load(trained_run)
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    for source, reason in ((tmp_path / "missing.jpg", "no such file (or no file matches "
                                                      "this pattern)"),
                           (tmp_path, "a folder with no image files (.jpg, .png, ...)"),
                           (notes, None)):
        with pytest.raises(ImageError) as raised:
            predictor.decode(source)
        [entry] = predictor.predict([source])
        assert entry.error == str(raised.value) == (reason or entry.error)
        assert isinstance(predictor.decode_or_error(source), ImageError)
    assert predictor.decode(real_photos("cat", 1, "test")[0]).shape == (32, 32, 3)
