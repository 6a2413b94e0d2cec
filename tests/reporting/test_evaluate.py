import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import copy_photos, invoke

import pawnet
from pawnet.errors import DataError
from pawnet.reporting.evaluate import compute_metrics, expected_calibration_error
from pawnet.reporting.figures import Figures
from pawnet.reporting.html import write_html
from pawnet.reporting.text import format_report, markdown

REPORT_KEYS = ["model", "tta", "source", "n", "accuracy", "classes", "per_class", "intervals",
               "confusion_matrix", "expected_calibration_error", "roc_auc", "log_loss",
               "failed", "temperature", "expected_calibration_error_uncalibrated",
               "reliability", "risk_coverage", "verdicts", "misclassified",
               "least_confident_correct"]


def test_metrics_on_known_predictions():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    truth = np.array([0, 0, 1, 1])
    m = compute_metrics(probs, truth, ["cat", "dog"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert m["per_class"]["cat"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["roc_auc"] == 1.0
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.7, 0.4])))


def test_calibration_error_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 1, 1, 1])) == pytest.approx(0.75)


def test_three_class_metrics_have_no_binary_only_fields():
    probs = np.eye(3)[[0, 1, 2, 2]] * 0.9 + 0.1 / 3
    m = compute_metrics(probs, np.array([0, 1, 2, 1]), ["a", "b", "c"])
    assert "roc_auc" not in m and m["accuracy"] == 0.75


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_evaluate_computes_and_writes_nothing_until_asked(trained_run, tmp_path):
    before = _files(trained_run)
    report = pawnet.evaluate(trained_run)
    assert _files(trained_run) == before  # no eval/ folder, nothing changed
    assert isinstance(report, pawnet.Report) and report.out is None
    assert list(report.to_json()) == REPORT_KEYS
    assert sum(map(sum, report.confusion_matrix)) == report.n == len(report.paths)
    assert report.probabilities.shape == (report.n, len(report.classes))
    folder = report.write(tmp_path / "report")
    assert folder == report.out == tmp_path / "report"
    saved = json.loads((folder / "report.json").read_text())
    assert saved == report.to_json() and saved["out"] == str(folder)
    assert list(saved)[: len(REPORT_KEYS) + 1] == [*REPORT_KEYS, "out"]


def test_write_defaults_to_the_runs_eval_folders(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval*"))
    report = pawnet.evaluate(run)
    assert report.write() == run / "eval" and report.write() == run / "eval2"
    for name in ("report.json", "report.md", "report.html", "confusion.png", "roc.png"):
        assert (run / "eval" / name).is_file() and (run / "eval2" / name).is_file()
    assert json.loads((run / "eval2" / "report.json").read_text())["out"] == str(run / "eval2")


def test_write_gives_the_files_the_cli_writes(trained_run, tmp_path):
    result = invoke("evaluate", trained_run, "--out", tmp_path / "cli", "--json")
    assert result.exit_code == 0, result.output
    report = pawnet.evaluate(trained_run)
    assert report.write(tmp_path / "python") == tmp_path / "python"
    cli, python = _files(tmp_path / "cli"), _files(tmp_path / "python")
    assert sorted(cli) == sorted(python)
    cli_json = json.loads(cli.pop(Path("report.json")))
    python_json = json.loads(python.pop(Path("report.json")))
    assert cli == python  # the Markdown, the HTML and every plot, byte for byte
    assert cli_json == json.loads(result.stdout)  # what --json prints is report.json
    assert cli_json == {**python_json, "out": str(tmp_path / "cli")}


def test_evaluate_folder_of_photos_and_unknown_class(trained_run, tmp_path, caplog):
    photos = copy_photos(tmp_path / "held", 5, split="test")
    with caplog.at_level(logging.INFO, logger="pawnet"):
        report = pawnet.evaluate(trained_run, photos, verbose=False)
    assert not [r for r in caplog.records if r.levelno == logging.INFO]  # held back
    assert not (tmp_path / "out").exists()
    report.write(tmp_path / "out")
    assert report.n == 10
    wrong = report.misclassified
    assert len(wrong) == round((1 - report.accuracy) * report.n)
    assert [m["confidence"] for m in wrong] == sorted((m["confidence"] for m in wrong),
                                                      reverse=True)
    assert (tmp_path / "out" / "misclassified.png").is_file() == bool(wrong)
    shutil.copytree(photos / "cat", photos / "horse")
    (photos / "horse" / "x.jpg").write_bytes((photos / "cat").iterdir().__next__().read_bytes()
                                             + b"\0")
    with pytest.raises(DataError, match="classes the model does not know: horse"):
        pawnet.evaluate(trained_run, photos)


def test_missing_split_is_a_clear_error(trained_run, tmp_path):
    copy_photos(tmp_path / "p" / "train", 3)
    with pytest.raises(DataError, match="has no test folder; it has train"):
        pawnet.evaluate(trained_run, tmp_path / "p")


def test_a_bare_bundle_needs_photos(trained_run, tmp_path):
    shutil.copytree(trained_run / "bundle", tmp_path / "bundle")
    with pytest.raises(DataError, match=r"has no split manifest. Try: pawnet evaluate"):
        pawnet.evaluate(tmp_path / "bundle")


def test_reports_for_people(trained_run, tmp_path):
    report = pawnet.evaluate(trained_run, split="val")
    report.write(tmp_path / "out")
    text = format_report(report)
    assert text.startswith(f"Evaluated {report.n} photos from {trained_run} val split")
    assert f"accuracy {report.accuracy:.4f}" in text
    assert "true \\ pred" in text and "precision" in text
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert markdown.startswith(f"# Evaluation of {trained_run}")
    assert "| cat |" in markdown and "![confusion matrix](confusion.png)" in markdown


def _figures(classes: list[str], **figures) -> Figures:
    """A report's figures, made up: what the renderers read, without a model."""
    k = len(classes)
    return Figures(**{
        "model": "m", "tta": False, "source": "photos", "n": 4, "accuracy": 0.5,
        "classes": classes,
        "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1}
                      for c in classes},
        "confusion_matrix": np.eye(k, dtype=int).tolist(), "expected_calibration_error": 0.1,
        "failed": [], "temperature": 1.0, "expected_calibration_error_uncalibrated": 0.2,
        "reliability": [], "risk_coverage": {"curve": [], "at": []},
        "verdicts": {"answered": 4, "unsure": 0, "neither": 0, "reasons": {},
                     "answered_accuracy": 0.5, "min_confidence": 0.0},
        "misclassified": [], "least_confident_correct": [], **figures})


def _renderings(report: Figures, folder) -> dict[str, str]:
    bundle = SimpleNamespace(provenance={}, fingerprint="f", path=None, run_dir=None,
                             spec=SimpleNamespace(model_name="m", class_names=report.classes))
    return {"text": format_report(report), "markdown": markdown(report),
            "html": write_html(report, folder, bundle, [], []).read_text()}


@pytest.mark.parametrize(("roc_auc", "shown"), [(0.0, "0.0000"), (0.75, "0.7500"), (None, None)])
def test_every_renderer_shows_the_same_roc_auc(tmp_path, roc_auc, shown):
    # before: a ROC-AUC of 0.0 (a model that ranks every photo backwards) was in the
    # Markdown but left out of the text and the HTML
    report = _figures(["cat", "dog"], roc_auc=roc_auc, log_loss=0.69)
    assert report.to_json()["roc_auc"] == roc_auc
    got = _renderings(report, tmp_path)
    if shown is None:
        assert not any("ROC-AUC 0" in text for text in got.values())
        assert "<td>ROC-AUC</td><td>-</td>" in got["html"]
    else:
        assert f"ROC-AUC {shown}" in got["text"] and f"ROC-AUC {shown}" in got["markdown"]
        assert f"<td>ROC-AUC</td><td>{shown}</td>" in got["html"]
    assert all("0.6900" in text for text in got.values())  # the log loss, everywhere


def test_three_classes_have_no_roc_auc_anywhere(tmp_path):
    report = _figures(["a", "b", "c"])
    assert "roc_auc" not in report.to_json() and "log_loss" not in report.to_json()
    got = _renderings(report, tmp_path)
    assert "ROC-AUC" not in got["text"] + got["markdown"]
    assert "<td>ROC-AUC</td><td>-</td>" in got["html"]
