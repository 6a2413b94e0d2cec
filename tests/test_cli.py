import csv
import io
import json
import os
import subprocess
import sys

import pytest
from helpers import TONGPYTHON, invoke, real_photos
from PIL import Image


def test_data_check_json_on_real_dataset():
    result = invoke("data", "check", TONGPYTHON, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layout"].startswith("split-folders")
    assert report["classes"] == {"cat": 1000, "dog": 1000}
    assert len(report["skipped"]) == 2 and len(report["duplicates"]) == 23
    assert all(set(s) == {"path", "reason"} for s in report["skipped"])


def test_data_check_text_lists_bad_files(class_folders, odd_files):
    folder, _ = odd_files
    folder.rename(class_folders / "dog" / "odd")
    result = invoke("data", "check", class_folders)
    assert result.exit_code == 0
    assert "zero.jpg: empty file" in result.stdout
    assert "Converted to RGB" in result.stdout


def test_data_show_draws_an_augmented_grid(class_folders, tmp_path):
    out = tmp_path / "grid.png"
    result = invoke("data", "show", class_folders, "--out", out, "--augment", "flip,rotate",
                    "--image-size", "48")
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.width > 600 and img.height > 150  # 8 columns; 24 photos leave 3 rows


def test_models_lists_one_line_each():
    from pawnet.models.registry import list_builtins, list_models

    result = invoke("models")
    names = [line.split()[0] for line in result.stdout.strip().splitlines()]
    assert names == ([s.name for s in list_models()] + ["keras:NAME"]
                     + [b.name for b in list_builtins()])
    assert "Tutorial A" in result.stdout and "built-in, no training" in result.stdout


@pytest.mark.integration
def test_train_evaluate_predict_end_to_end(class_folders, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", class_folders, "--model", "tutorial-d-conv16", "--epochs", "1",
                    "--image-size", "32", "--batch-size", "8", "--augment", "none",
                    "--val-fraction", "0.25", "--test-fraction", "0.25", "--out", run)
    assert result.exit_code == 0, result.output
    assert "Found 24 usable photos" in result.stdout
    result = invoke("evaluate", run, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    held_out = invoke("evaluate", run, class_folders, "--json")
    assert json.loads(held_out.stdout)["n"] == 24  # stdout stays pure JSON
    assert {"n", "accuracy", "classes", "per_class", "confusion_matrix"} <= set(report)
    assert set(report["per_class"]["cat"]) == {"precision", "recall", "f1", "support"}

    photos = real_photos("cat", 2, "test")
    result = invoke("predict", run, *photos, "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    keys = {"path", "label", "reason", "probabilities", "ood_score"}
    assert [set(r) for r in rows] == [keys] * 2

    result = invoke("predict", run, photos[0], "--format", "csv")
    [row] = list(csv.DictReader(io.StringIO(result.stdout)))
    assert row["path"] == str(photos[0])
    assert float(row["cat"]) + float(row["dog"]) == pytest.approx(1.0, abs=1e-5)

    result = invoke("predict", run, *photos, "--format", "kaggle")
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "id,label"
    assert [int(line.split(",")[0]) for line in lines[1:]] == sorted(
        int(p.stem.split(".")[1]) for p in photos)

    table = invoke("predict", run, photos[0], tmp_path / "nope.jpg")
    assert table.exit_code == 0 and "error: no such file" in table.stdout
    nothing = invoke("predict", run, tmp_path / "nope.jpg")
    assert nothing.exit_code == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{photos}", "--epochs", "0"], "epochs must be between"),
        (["train", "{photos}", "--model", "vgg"], "unknown model 'vgg'"),
        (["train", "{photos}", "--augment", "blur"], "unknown augmentation 'blur'"),
        (["train", "{photos}", "--config", "{tmp}/missing.yaml"], "config file not found"),
        (["train", "{tmp}/nowhere"], "photo folder not found"),
        (["evaluate", "{tmp}/nowhere"], "no model at"),
        (["predict", "{tmp}/nowhere", "x.jpg"], "no model at"),
        (["data", "check", "{tmp}/nowhere"], "photo folder not found"),
        (["train"], "no photos given. Try: pawnet train PATH/TO/PHOTOS"),
        (["serve", "{tmp}/nowhere", "--log-level", "loud"], "log_level must be one of"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(class_folders, tmp_path, args, message):
    args = [a.format(photos=class_folders, tmp=tmp_path) for a in args]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["train", "{photos}", "--epoch", "3"],
     "error: no such option --epoch. Did you mean --epochs? Try: pawnet train --help"),
    (["evaluate", "RUN", "--min-confidence", "1.5"],
     "error: Invalid value for '--min-confidence': Input should be less than or equal to 1. "
     "Try: pawnet evaluate --help"),
    (["predict", "RUN", "x.jpg", "--format", "xml"],
     "error: Invalid value for '--format': 'xml' is not one of table, csv, kaggle. Try: "
     "pawnet predict --help"),
    (["predict"], "error: Missing argument 'MODEL'. Try: pawnet predict --help"),
    (["trian"], "error: No such command 'trian'. Did you mean 'train'? Try: pawnet --help"),
    (["data", "issuez"], "error: No such command 'issuez'. Did you mean 'issues'? Try: "
     "pawnet data --help"),
    (["train", "{photos}", "--epochs", "three"], "error: Invalid value for '--epochs'"),
])
def test_a_flag_the_parser_refuses_is_one_error_line(class_folders, args, message):
    # before: a box of several lines drawn by the parser, with no "error:" line
    result = invoke(*[a.format(photos=class_folders) for a in args])
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.integration
def test_import_and_help_do_not_load_tensorflow():
    # TensorFlow takes seconds to import; `pawnet --help` and `import pawnet` must not pay it
    code = ("import sys, pawnet, pawnet.cli; "
            "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.integration
def test_importing_tensorflow_first_warns_that_onednn_may_be_off():
    # TensorFlow reads TF_ENABLE_ONEDNN_OPTS at import; pawnet sets it too late then
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    code = "import tensorflow, pawnet"
    # the two fresh interpreters start side by side: each spends its seconds importing
    late, chosen = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=e)
                    for e in (env, {**env, "TF_ENABLE_ONEDNN_OPTS": "0"})]
    late_err, chosen_err = late.communicate()[1], chosen.communicate()[1]
    assert late.returncode == chosen.returncode == 0, late_err + chosen_err
    assert "TensorFlow was imported before pawnet" in late_err
    assert "Fix: import pawnet before keras or tensorflow" in late_err
    assert "imported before pawnet" not in chosen_err


def test_json_is_spelled_one_way_and_the_old_spelling_still_works(trained_run):
    photo = real_photos("cat", 1, "test")[0]
    new = invoke("predict", trained_run, photo, "--json")
    old = invoke("predict", trained_run, photo, "--format", "json")
    assert new.exit_code == old.exit_code == 0
    assert json.loads(new.stdout) == json.loads(old.stdout)
    assert "json" not in invoke("predict", "--help").stdout.split("--format")[1].split("\n")[0]


def _pawnet(*args, **env):
    return subprocess.run([sys.executable, "-m", "pawnet.cli", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **env})


@pytest.mark.integration
def test_tensorflow_start_up_lines_are_hidden(tmp_path):
    quiet = _pawnet("evaluate", tmp_path / "nowhere", TF_CPP_MIN_LOG_LEVEL="0")
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [f"error: no model at {tmp_path / 'nowhere'}. Try: a run "
                                         "folder from `pawnet train` (e.g. runs/train), its "
                                         "bundle/ folder, or imagenet-catdog"]


