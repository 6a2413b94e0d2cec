"""The model card (reporting/card.py) on real photos: `pawnet evaluate RUN` writes the same
card into the report folder and the run's bundle, with the evaluation's own figures and
intervals; other photos, a built-in model and a bundle that cannot be written leave the
bundle's card alone; three classes work; the bundle still loads and exports."""

from __future__ import annotations

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
from pawnet.inference.bundle import BUNDLE_OUTPUT, CARD, CARD_SHEET, resolve, write_card
from pawnet.reporting.card import CAPTION, MAX_PAIRS, PER_PAIR, THUMB
from pawnet.storage import check_output_folder

SECTIONS = ("Intended use", "Training data", "Performance", "Calibration",
            "Answers on the photos measured", "Largest confusions", "Limits")


@pytest.fixture
def own_run(trained_run, tmp_path) -> Path:
    """A copy of the shared trained run, whose bundle a test may write into."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


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
        assert float(printed.split()[0]) == pytest.approx(m["recall"], abs=5e-4)
        if m["support"]:
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
    assert Image.open(sheet).size == (PER_PAIR * (THUMB + 2), pairs * (CAPTION + THUMB + 4))


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
    assert card.splitlines()[-1].startswith("Made on ")
    assert card.splitlines()[-1].endswith(f"by `pawnet evaluate {own_run}`.")
    assert f"[{CARD}]({CARD})" in (folder / "report.md").read_text()
    page = (folder / "report.html").read_text()
    assert 'id="model-card"' in page and "data:image/jpeg;base64," in page
    for c, row in _rows(card, "| class | precision |").items():  # the same table
        assert f"<td><code>{c}</code></td><td>{row[0]}</td><td>{row[1]}</td>" in page

    again = _evaluate(own_run)  # the same run: the same card and photos, but for the date
    assert (again / CARD).read_text().splitlines()[:-1] == card.splitlines()[:-1]
    assert (again / CARD_SHEET).read_bytes() == (folder / CARD_SHEET).read_bytes()
    assert (bundle / CARD).read_text().splitlines()[:-1] == card.splitlines()[:-1]

    # the card is no part of the model: same fingerprint, loads, predicts, is replaceable
    assert resolve(own_run).fingerprint == fingerprint
    check_output_folder(bundle, BUNDLE_OUTPUT)  # pawnet may replace it whole (retraining)
    predictions = pawnet.load(own_run).predict(real_photos("cat", 2, split="test"))
    assert all(p.error is None for p in predictions)
    result = invoke("export", own_run, "--format", "onnx", "--out", own_run / "onnx")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("extra", [["PHOTOS"], ["--split", "val"], ["--tta"]])
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
        assert mine.splitlines()[-1].endswith(f"`pawnet evaluate {own_run} --tta`.")


def test_a_bundle_that_cannot_be_written_gets_a_warning_not_an_error(own_run, monkeypatch,
                                                                     caplog):
    def refuse(path, *args):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("pawnet.inference.bundle.atomic_write_text", refuse)
    monkeypatch.setattr("pawnet.inference.bundle.atomic_write_bytes", refuse)
    with caplog.at_level(logging.WARNING, logger="pawnet"):
        folder = _evaluate(own_run)
    assert (folder / CARD).is_file()
    assert not (own_run / "bundle" / CARD).exists()
    assert not (own_run / "bundle" / CARD_SHEET).exists()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "Permission denied" in warned[0] and "Try:" in warned[0]


def test_only_a_runs_bundle_gets_a_card(trained_run, tmp_path):
    lone = Path(shutil.copytree(trained_run / "bundle", tmp_path / "lone"))
    assert write_card(resolve(lone), "card\n", b"sheet") is None
    assert sorted(p.name for p in lone.iterdir()) == sorted(
        p.name for p in (trained_run / "bundle").iterdir())
    assert write_card(resolve("imagenet-catdog"), "card\n", None) is None


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
