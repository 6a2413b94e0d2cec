"""The model card (reporting/card.py) on real photos: `pawnet evaluate RUN` writes the same
card into the report folder and the run's bundle, with the evaluation's own figures and
intervals; other photos, a built-in model, a bundle that cannot be written and files of the
user's in the bundle leave the bundle's card alone (with a warning where the card was
due); no misclassified photo, none readable any more, a class absent and an old bundle
all give a card that says so; three classes work; the bundle still loads and exports."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import SHARED_DATA, copy_photos, invoke, real_photos
from PIL import Image

import pawnet
from pawnet.errors import ImageError
from pawnet.inference.bundle import BUNDLE_OUTPUT, CARD, CARD_SHEET, resolve
from pawnet.reporting import report as report_module
from pawnet.reporting.card import MAX_PAIRS, PER_PAIR, build_card, confusion_sheet
from pawnet.reporting.plots import SHEET_CAPTION, SHEET_THUMB
from pawnet.reporting.report import is_own_card, write_card
from pawnet.reporting.text import card_markdown
from pawnet.storage import check_output_folder

SECTIONS = ("Intended use", "Training data", "Performance", "Calibration",
            "Answers on the photos measured", "Largest confusions", "Limits")


@pytest.fixture
def own_run(trained_run, tmp_path) -> Path:
    """A copy of the shared trained run, whose bundle a test may write into."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def evaluation(trained_run):
    """The shared run's evaluation on its held-out test split; nothing written."""
    return pawnet.evaluate(trained_run, runtime="keras")


def _evaluate(*args, runtime: str = "keras") -> Path:
    """`pawnet evaluate ARGS` on the command line; the report folder it wrote. The Keras
    runtime by default: no conversion, so seconds."""
    result = invoke("evaluate", *args, "--runtime", runtime)
    assert result.exit_code == 0, result.output
    return Path(re.search(r"Report: (.+)/report\.html", result.output).group(1))


def _rows(card: str, head: str) -> dict[str, list[str]]:
    """The rows of the card's table whose header starts with `head`, by first cell."""
    table = card[card.index(head):].split("\n\n")[0].splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in table]
    return {row[0].strip("`"): row[1:] for row in cells}


def _check_card(card: str, report: dict, bundle) -> None:
    """Every section, holding the evaluation's own figures, intervals and verdicts."""
    titles = re.findall(r"^## (.+)$", card, re.MULTILINE)
    assert titles == list(SECTIONS)
    classes = report["classes"]
    assert (f"one of {len(classes)} classes, in this order: "
            + ", ".join(f"`{c}`" for c in classes) + ".") in card
    accuracy = report["intervals"]["accuracy"]
    assert accuracy["low"] <= report["accuracy"] <= accuracy["high"]
    assert (f"Accuracy {report['accuracy']:.3f} [{accuracy['low']:.3f}, "
            f"{accuracy['high']:.3f}]") in card
    performance = _rows(card, "| class | precision | recall |")
    assert list(performance) == classes
    for c, m in report["per_class"].items():
        recall = report["intervals"]["per_class"][c]["recall"]
        printed = performance[c][1]
        if not m["support"]:  # no photo of it: no recall (sklearn's 0 is no measurement)
            assert printed == "n/a" and recall["value"] is None
            assert f"`{c}` was not measured: no photo of it." in card
        else:
            assert float(printed.split()[0]) == pytest.approx(m["recall"], abs=5e-4)
            assert recall["value"] == pytest.approx(m["recall"])
            assert recall["low"] <= m["recall"] <= recall["high"]
            assert printed == f"{m['recall']:.3f} [{recall['low']:.3f}, {recall['high']:.3f}]"
        assert performance[c][3] == str(m["support"])
    data = bundle.provenance["data"]
    assert data["fingerprint"] in card and f"`{data['root']}`" in card
    counts = _rows(card, "| class | train | val | test | total |")
    for c in classes:
        assert counts[c][:3] == [str(data["counts"][s][c]) for s in ("train", "val", "test")]
    n_val = sum(data["counts"]["val"].values())
    assert f"{report['temperature']:.3f} (fitted on the {n_val} validation photos)" in card
    assert (f"{report['expected_calibration_error_uncalibrated']:.4f} before, "
            f"{report['expected_calibration_error']:.4f} after") in card
    verdicts = _rows(card, "| answer | photos | share |")
    for key in ("answered", "unsure", "neither"):
        assert verdicts[key][0] == str(report["verdicts"][key]), key
    matrix = np.array(report["confusion_matrix"])
    off = sorted((matrix[i, j] for i in range(len(classes)) for j in range(len(classes))
                  if i != j and matrix[i, j]), reverse=True)[:MAX_PAIRS]
    pairs = _rows(card, "|  | true | predicted as |") if off else {}
    assert [int(row[2]) for row in pairs.values()] == off
    for row in pairs.values():
        true, predicted = row[0].strip("`"), row[1].strip("`")
        named = re.findall(r"(\S+) \(([\d.]+)\)", row[4])
        wrong = [m for m in report["misclassified"]
                 if m["true"] == true and m["predicted"] == predicted][:PER_PAIR]
        assert [n for n, _ in named] == [Path(m["path"]).name for m in wrong]
        assert [float(p) for _, p in named] == sorted((float(p) for _, p in named),
                                                       reverse=True)


def _check_sheet(folder: Path, card: str, report: dict) -> None:
    sheet = folder / CARD_SHEET
    if not report["misclassified"]:
        assert not sheet.exists() and "No photo was misclassified." in card
        return
    assert f"![the largest confusions' example photos]({CARD_SHEET})" in card
    assert sheet.read_bytes()[:2] == b"\xff\xd8" and sheet.stat().st_size < 100_000
    pairs = card[card.index("|  | true | predicted as |"):].split("\n\n")[0].count("\n") - 1
    assert Image.open(sheet).size == (PER_PAIR * (SHEET_THUMB + 2),
                                      pairs * (SHEET_CAPTION + SHEET_THUMB + 4))


def test_evaluate_writes_the_same_card_into_the_report_folder_and_the_bundle(own_run):
    fingerprint = resolve(own_run).fingerprint
    folder = _evaluate(own_run, runtime="auto")  # as a user runs it
    card = (folder / CARD).read_text()
    report = json.loads((folder / "report.json").read_text())
    bundle = own_run / "bundle"
    assert (bundle / CARD).read_text() == card
    _check_card(card, report, resolve(own_run))
    _check_sheet(folder, card, report)
    assert report["misclassified"], "a 1-epoch model at 32 px gets some wrong"
    assert (bundle / CARD_SHEET).read_bytes() == (folder / CARD_SHEET).read_bytes()
    assert "the run's own held-out test split" in card
    assert card.splitlines()[-2].startswith("Made on ")
    assert card.splitlines()[-2].endswith(f"by `pawnet evaluate {own_run}`.")  # auto
    assert card.splitlines()[-1].startswith("<!-- written by pawnet evaluate, sha256 ")
    assert is_own_card(bundle / CARD)
    assert f"[{CARD}]({CARD})" in (folder / "report.md").read_text()
    page = (folder / "report.html").read_text()
    assert 'id="model-card"' in page and "data:image/jpeg;base64," in page
    for c, row in _rows(card, "| class | precision |").items():  # the same table
        assert f"<td><code>{c}</code></td><td>{row[0]}</td><td>{row[1]}</td>" in page

    again = _evaluate(own_run)  # the same run: the same card and photos, but for the date
    new = (again / CARD).read_text()  # (and the stamp), and the command names the runtime
    assert new.splitlines()[-2].endswith(f"by `pawnet evaluate {own_run} --runtime keras`.")
    assert new.splitlines()[:-2] == card.splitlines()[:-2]
    assert (again / CARD_SHEET).read_bytes() == (folder / CARD_SHEET).read_bytes()
    assert (bundle / CARD).read_text() == new  # pawnet's own card, unedited: replaced

    # the card is no part of the model: same fingerprint, loads, predicts, is replaceable
    assert resolve(own_run).fingerprint == fingerprint
    check_output_folder(bundle, BUNDLE_OUTPUT)  # pawnet may replace it whole (retraining)
    predictions = pawnet.load(own_run).predict(real_photos("cat", 2, split="test"))
    assert all(p.error is None for p in predictions)
    result = invoke("export", own_run, "--format", "onnx", "--out", own_run / "onnx")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("extra", [["PHOTOS"], ["--split", "val"], ["--tta"],
                                   ["--min-confidence", "0.9"]])
def test_other_photos_leave_the_bundles_card_as_it_was(own_run, tmp_path, extra):
    _evaluate(own_run)
    card = own_run / "bundle" / CARD
    before = card.read_bytes(), card.stat().st_mtime_ns
    photos = copy_photos(tmp_path / "photos", 3, split="test")
    folder = _evaluate(own_run, *[photos if a == "PHOTOS" else a for a in extra])
    assert (card.read_bytes(), card.stat().st_mtime_ns) == before
    mine = (folder / CARD).read_text()
    report = json.loads((folder / "report.json").read_text())
    _check_card(mine, report, resolve(own_run))
    assert "This card describes that evaluation only" in mine
    if extra == ["PHOTOS"]:
        assert f"Measured on {report['n']} photos of `{photos}`." in mine
        assert report["n"] == 6
    if extra == ["--tta"]:
        assert "Measured with test-time augmentation" in mine
        assert mine.splitlines()[-2].endswith(
            f"`pawnet evaluate {own_run} --runtime keras --tta`.")
    if extra[0] == "--min-confidence":
        assert report["verdicts"]["min_confidence"] == 0.9
        bundles = resolve(own_run).spec.min_confidence
        assert (f"Measured with minimum confidence 0.900, not the bundle's "
                f"{bundles:.3f}.") in mine
        assert mine.splitlines()[-2].endswith(
            f"`pawnet evaluate {own_run} --runtime keras --min-confidence 0.9`.")


def test_a_bundle_that_cannot_be_written_gets_a_warning_not_an_error(own_run, monkeypatch,
                                                                     caplog):
    def refusing(write):
        def refuse(path, *args):
            if Path(path).parent == own_run / "bundle":  # the report folder is writable
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return write(path, *args)
        return refuse

    for name in ("atomic_write_text", "atomic_write_bytes"):
        monkeypatch.setattr(report_module, name, refusing(getattr(report_module, name)))
    with caplog.at_level(logging.WARNING, logger="pawnet"):
        folder = _evaluate(own_run)
    assert (folder / CARD).is_file()
    assert not (own_run / "bundle" / CARD).exists()
    assert not (own_run / "bundle" / CARD_SHEET).exists()
    warned = _warnings(caplog)
    assert len(warned) == 1 and "Permission denied" in warned[0] and "Try:" in warned[0]


def test_only_a_runs_bundle_gets_a_card(trained_run, tmp_path):
    lone = Path(shutil.copytree(trained_run / "bundle", tmp_path / "lone"))
    assert write_card(resolve(lone), "card\n", b"sheet") is None
    assert sorted(p.name for p in lone.iterdir()) == sorted(
        p.name for p in (trained_run / "bundle").iterdir())
    assert write_card(resolve("imagenet-catdog"), "card\n", None) is None


def _warnings(caplog) -> list[str]:
    """pawnet's warnings (TensorFlow's own, on retracing, are not the test's)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("pawnet")]


def test_a_foreign_file_in_the_bundle_gets_a_warning_and_no_card(own_run, caplog):
    notes = own_run / "bundle" / "notes.txt"
    notes.write_text("my notes\n")
    before = {p.name: p.read_bytes() for p in (own_run / "bundle").iterdir()}
    with caplog.at_level(logging.WARNING, logger="pawnet"):
        folder = _evaluate(own_run)
    assert (folder / CARD).is_file()  # the report folder has it
    assert {p.name: p.read_bytes() for p in (own_run / "bundle").iterdir()} == before
    warned = _warnings(caplog)
    assert len(warned) == 1 and "notes.txt" in warned[0] and "Try: move" in warned[0]
    assert "\n" not in warned[0]


@pytest.mark.parametrize("whose", ["written by hand", "pawnet's, edited", "a lone picture"])
def test_a_users_card_in_the_bundle_is_kept_with_a_warning(own_run, caplog, whose):
    bundle = own_run / "bundle"
    if whose == "written by hand":
        (bundle / CARD).write_text("# Model card: our cat and dog sorter\n\nBy hand.\n")
        shutil.copy(real_photos("cat", 1)[0], bundle / CARD_SHEET)
    elif whose == "pawnet's, edited":
        _evaluate(own_run)
        edited = (bundle / CARD).read_text().replace("## Limits", "## Limits\n\nOurs: x.")
        (bundle / CARD).write_text(edited)
    else:  # a picture of the user's with pawnet's name, and no card beside it
        shutil.copy(real_photos("dog", 1)[0], bundle / CARD_SHEET)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    with caplog.at_level(logging.WARNING, logger="pawnet"):
        folder = _evaluate(own_run)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert (folder / CARD).read_text() != before.get(CARD, b"").decode()
    warned = _warnings(caplog)
    assert len(warned) == 1 and "is kept" in warned[0] and "Try: move" in warned[0]
    kept = CARD_SHEET if whose == "a lone picture" else CARD
    assert str(bundle / kept) in warned[0]
    assert not is_own_card(bundle / CARD)


def test_none_misclassified_gives_no_picture(evaluation, tmp_path):
    counts = np.array(evaluation.confusion_matrix).sum(axis=1)
    perfect = dataclasses.replace(evaluation, misclassified=[], accuracy=1.0,
                                  confusion_matrix=np.diag(counts).tolist(), held_out=False)
    assert confusion_sheet(perfect) is None
    card = card_markdown(build_card(perfect, evaluation.predictor.bundle, command="c",
                                    today="2025-01-01", held_out=True, sheet=False))
    section = card[card.index("## Largest confusions"):card.index("## Limits")]
    assert section.split("\n\n")[1] == "No photo was misclassified."
    assert "![" not in card and CARD_SHEET not in card
    folder = perfect.write(tmp_path / "eval")
    assert not (folder / CARD_SHEET).exists()
    assert "No photo was misclassified." in (folder / CARD).read_text()


def test_examples_no_longer_readable_give_no_broken_picture_link(own_run, monkeypatch):
    _evaluate(own_run)  # the bundle's card and picture, from every example readable
    assert (own_run / "bundle" / CARD_SHEET).is_file()

    def moved(path, *args, **kwargs):
        raise ImageError(f"{path}: no such file")

    monkeypatch.setattr("pawnet.data.images.load_preview", moved)  # as if all were moved
    folder = _evaluate(own_run)
    card = (folder / CARD).read_text()
    assert "|  | true | predicted as |" in card  # the confusions are still listed
    assert "![" not in card and CARD_SHEET not in card
    assert not (folder / CARD_SHEET).exists()
    assert (own_run / "bundle" / CARD).read_text() == card
    assert not (own_run / "bundle" / CARD_SHEET).exists()  # the earlier picture went too
    assert "(not available)" not in (folder / "report.html").read_text()


def test_a_class_absent_from_the_photos_is_named_not_measured(trained_run, tmp_path):
    photos = copy_photos(tmp_path / "photos", 4, classes=("cat",), split="test")
    report = pawnet.evaluate(trained_run, photos, runtime="keras")
    folder = report.write(tmp_path / "eval")
    card = (folder / CARD).read_text()
    assert report.per_class["dog"]["support"] == 0
    _check_card(card, report.to_json(), resolve(trained_run))  # dog's recall: n/a
    assert _rows(card, "| class | precision |")["dog"][1] == "n/a"


def test_an_old_bundle_without_data_or_metrics_still_gets_its_card(own_run):
    provenance = own_run / "bundle" / "provenance.json"
    record = json.loads(provenance.read_text())
    assert "data" in record and "metrics" in record
    provenance.write_text(json.dumps({"versions": record["versions"]}))
    _evaluate(own_run)
    card = (own_run / "bundle" / CARD).read_text()
    training = card[card.index("## Training data"):card.index("## Performance")]
    assert "Not known: not recorded in the bundle." in training
    temperature = resolve(own_run).spec.temperature
    assert temperature != 1.0  # trained runs are calibrated
    assert f"{temperature:.3f} (where it was fitted is not recorded)" in card
    assert "error, validation photos" not in card
    assert "its training folder (its held-out test split)" in card


@pytest.mark.integration  # the built-in model: a full-size network over photos
def test_a_builtin_model_gets_its_card_in_the_report_folder_only(tmp_path):
    photos = copy_photos(tmp_path / "photos", 2, split="test")
    report = pawnet.evaluate("imagenet-catdog", photos, runtime="keras")
    folder = report.write(tmp_path / "eval")
    card = (folder / CARD).read_text()
    assert "`imagenet-catdog` is built into pawnet; its training data is not recorded" in card
    assert f"Accuracy {report.accuracy:.3f} [" in card
    assert not report.held_out and report.bundle_card is None
    assert 'id="model-card"' in (folder / "report.html").read_text()


@pytest.mark.integration  # trains a model
def test_three_classes(tmp_path):
    photos = copy_photos(tmp_path / "photos", 12)
    (photos / "street").mkdir()
    for src in sorted((SHARED_DATA / "ood_photos").glob("*.jpg"))[:12]:
        shutil.copy(src, photos / "street" / src.name)
    run = pawnet.train(photos, model="pawnet-cnn", epochs=1, image_size=32, batch_size=8,
                       val_fraction=0.25, test_fraction=0.25, out=str(tmp_path / "run"))
    report = pawnet.evaluate(run, runtime="keras")  # no conversion: seconds
    folder = report.write(tmp_path / "eval")
    card = (folder / CARD).read_text()
    assert report.classes == ["cat", "dog", "street"]
    _check_card(card, report.to_json(), resolve(run))
    _check_sheet(folder, card, report.to_json())
    assert report.bundle_card == Path(run) / "bundle" / CARD
    assert report.bundle_card.read_text() == card
    page = (folder / "report.html").read_text()
    assert all(f"<td><code>{c}</code></td>" in page for c in report.classes)
