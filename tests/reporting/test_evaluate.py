import json
import shutil

import numpy as np
import pytest
from helpers import copy_photos

import pawnet
from pawnet.errors import DataError
from pawnet.reporting.evaluate import compute_metrics, expected_calibration_error, format_report


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


def test_evaluate_run_split_writes_reports_and_plots(trained_run):
    report = pawnet.evaluate(trained_run)
    out = trained_run / "eval"
    assert report["out"].startswith(str(out))
    for name in ("report.json", "report.md", "confusion.png"):
        assert (out.parent / report["out"].split("/")[-1] / name).is_file()
    saved = json.loads((out.parent / report["out"].split("/")[-1] / "report.json").read_text())
    assert {"n", "accuracy", "classes", "per_class", "confusion_matrix"} <= set(saved)
    assert sum(map(sum, saved["confusion_matrix"])) == saved["n"]


def test_evaluate_folder_of_photos_and_unknown_class(trained_run, tmp_path):
    photos = copy_photos(tmp_path / "held", 5, split="test")
    report = pawnet.evaluate(trained_run, photos, out=tmp_path / "out")
    assert report["n"] == 10
    wrong = report["misclassified"]
    assert len(wrong) == round((1 - report["accuracy"]) * report["n"])
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
    report = pawnet.evaluate(trained_run, split="val", out=tmp_path / "out")
    text = format_report(report)
    assert text.startswith(f"Evaluated {report['n']} photos from {trained_run} val split")
    assert f"accuracy {report['accuracy']:.4f}" in text
    assert "true \\ pred" in text and "precision" in text
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert markdown.startswith(f"# Evaluation of {trained_run}")
    assert "| cat |" in markdown and "![confusion matrix](confusion.png)" in markdown
