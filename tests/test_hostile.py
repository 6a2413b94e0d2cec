"""Hostile and careless input, generated from real photos at test time, through every
surface that reads photos: the scan (`data check`, training), `predict` in each output
format, and the server. Nothing crashes, each bad file is skipped with a one-line reason,
and odd file names stay parseable in every output."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import CVTRICKS, copy_photos, real_photos
from PIL import Image
from typer.testing import CliRunner

from pawnet.cli import app
from pawnet.data.scan import scan
from pawnet.inference.predictor import load
from pawnet.serve.app import create_app
from pawnet.serve.settings import ServeSettings

IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
ODD_NAMES = ['quote"d \'name\'.jpg', "new\nline.jpg", "ünïcödé 猫.jpg", "comma, semi;.jpg",
             "tab\tname.jpg", "escape\x1b[31mred.jpg", "-starts-with-dash.jpg"]


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def make_hostile_files(root) -> dict[str, bool]:
    """`root/cat/*` hostile and odd files plus real photos in `root/dog/`.

    Returns {path relative to root: whether it must be usable}.
    """
    cats, dogs = root / "cat", root / "dog"
    cats.mkdir(parents=True)
    dogs.mkdir()
    photo = Image.open(real_photos("cat", 1)[0]).convert("RGB")
    usable: dict[str, bool] = {}

    def put(name: str, data: bytes, ok: bool) -> None:
        (cats / name).write_bytes(data)
        usable[f"cat/{name}"] = ok

    for suffix, fmt in IMAGE_FORMATS.items():
        whole = _encoded(photo, fmt)
        put(f"whole.{suffix}", whole, True)
        put(f"truncated.{suffix}", whole[: len(whole) // 2], False)
        put(f"header-only.{suffix}", whole[:40], False)
    # wrong extensions: the content decides (turned, so no file duplicates another)
    put("png-named.jpg", _encoded(photo.rotate(90), "PNG"), True)
    put("gif-named.jpg", _encoded(photo.rotate(180), "GIF"), True)
    put("jpeg-named.png", _encoded(photo.rotate(270), "JPEG"), True)
    small = photo.resize((24, 24)).convert("P")
    put("3000-frames.gif", _encoded(small, "GIF", save_all=True, append_images=[
        small.rotate(i % 360) for i in range(2999)]), True)
    put("html-named.jpg", b"<html><body>not a photo</body></html>\n", False)
    put("broken\nname.jpg", b"\xff\xd8\xff\xe0 not really", False)  # shown in reports
    put("broken\x1b[31mred.png", b"\x89PNG\r\n\x1a\n", False)
    for name, src in zip(ODD_NAMES, real_photos("cat", 1 + len(ODD_NAMES))[1:], strict=True):
        put(name, src.read_bytes(), True)
    for src in real_photos("dog", 8):
        shutil.copy(src, dogs / src.name)
        usable[f"dog/{src.name}"] = True
    (root / "empty-folder").mkdir()
    return usable


def _relative(root, path: str) -> str:
    return str(Path(path).relative_to(root))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "photos"
    return root, make_hostile_files(root)


def test_the_scan_skips_each_bad_file_with_a_one_line_reason(hostile):
    root, usable = hostile
    found = scan(root)
    used = {_relative(root, p.path) for p in found.photos}
    skipped = {_relative(root, s.path): s.reason for s in found.skipped}
    assert used == {name for name, ok in usable.items() if ok}
    assert set(skipped) == {name for name, ok in usable.items() if not ok}
    assert all(reason and "\n" not in reason for reason in skipped.values())
    report = found.report()
    assert len(report.splitlines()) == report.count("\n") + 1
    assert "broken\\nname.jpg: " in report and "broken\\x1b[31mred.png: " in report


def test_data_check_lists_odd_names_one_per_line(hostile):
    root, usable = hostile
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output  # a name cannot send terminal escapes
    for name in ODD_NAMES:
        shown = name.encode("unicode_escape").decode() if not name.isprintable() else name
        assert sum(line.endswith(shown) or shown + ":" in line
                   for line in result.output.splitlines()) <= 1
    result = CliRunner().invoke(app, ["data", "check", str(root), "--json"])
    report = json.loads(result.stdout)
    assert report["classes"] == {"cat": sum(ok for n, ok in usable.items() if n[:4] == "cat/"),
                                 "dog": 8}
    assert len(report["skipped"]) == sum(not ok for ok in usable.values())


@pytest.fixture(scope="module")
def predictions(trained_run, hostile):
    root, _ = hostile
    runner = CliRunner()
    return {fmt: runner.invoke(app, ["predict", str(trained_run), str(root), "--format", fmt])
            for fmt in ("csv", "table", "json")}


def test_predict_csv_parses_back_to_every_file_name(predictions, hostile):
    root, usable = hostile
    result = predictions["csv"]
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    by_name = {_relative(root, row["path"]): row for row in rows}
    assert set(by_name) == set(usable)
    for name, ok in usable.items():
        assert bool(by_name[name]["label"]) == ok, name
        assert bool(by_name[name]["error"]) != ok, name


def test_predict_table_keeps_one_line_per_file(predictions, hostile):
    _, usable = hostile
    table = predictions["table"].stdout.rstrip("\n").split("\n")
    assert len(table) == 1 + len(usable)  # the header, then one line per file
    assert "\x1b" not in predictions["table"].stdout


def test_predict_json_round_trips_the_names(predictions, hostile):
    root, usable = hostile
    rows = json.loads(predictions["json"].stdout)
    assert {_relative(root, r["path"]) for r in rows} == set(usable)


def _as_a_form_sends(name: str) -> str:
    """A file name as HTML5 forms (and httpx) encode it: quotes and controls but ESC as %XX."""
    return "".join(f"%{ord(c):02X}" if c == '"' or (ord(c) < 32 and c != "\x1b") else c
                   for c in name)


def test_the_server_answers_every_hostile_file_with_200_or_a_one_line_422(trained_run,
                                                                          hostile):
    root, usable = hostile
    with TestClient(create_app(load(trained_run), ServeSettings(max_wait_ms=2))) as client:
        for name, ok in usable.items():
            upload = (name.split("/")[-1], (root / name).read_bytes(), "image/jpeg")
            response = client.post("/v1/predict", files={"file": upload})
            assert response.status_code == (200 if ok else 422), (name, response.text)
            if not ok:
                detail = response.json()["detail"]
                assert isinstance(detail, str) and "\n" not in detail
            else:
                assert response.json()[0]["path"] == _as_a_form_sends(upload[0])
        assert client.get("/healthz").status_code == 200


@pytest.mark.integration
def test_training_on_hostile_photos_uses_the_good_ones(hostile, tmp_path):
    import pawnet

    root, usable = hostile
    run = pawnet.train(root, model="pawnet-cnn", epochs=1, image_size=32, batch_size=8,
                       val_fraction=0.25, test_fraction=0.25, out=str(tmp_path / "run"))
    data = json.loads((run / "data.json").read_text())
    assert len(data["skipped"]) == sum(not ok for ok in usable.values())
    assert (run / "bundle" / "model.keras").exists()


@pytest.mark.parametrize(("layout", "message"), [
    ("empty", "no usable photos"),
    ("one class", "training needs at least 2 classes"),
])
def test_folders_that_cannot_train_say_why_in_one_line(tmp_path, layout, message):
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    if layout == "one class":
        for src in real_photos("cat", 6):
            shutil.copy(src, root / "cat" / src.name)
    result = CliRunner().invoke(app, ["train", str(root), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


@pytest.mark.integration
def test_a_class_with_one_photo_trains_with_a_warning(tmp_path):
    import pawnet

    root = tmp_path / "photos"
    for label, n in (("cat", 12), ("dog", 1)):
        (root / label).mkdir(parents=True)
        for src in real_photos(label, n):
            shutil.copy(src, root / label / src.name)
    result = CliRunner().invoke(app, ["train", str(root), "--model", "pawnet-cnn", "--epochs",
                                      "1", "--image-size", "32", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "warning: class 'dog' has 1 photo, none in val" in result.output
    assert pawnet.load(tmp_path / "r").classes == ["cat", "dog"]


# --- destinations: nothing of the user's is ever replaced -------------------------------


def _users_folder(path: Path) -> Path:
    (path / "taxes").mkdir(parents=True)
    (path / "notes.txt").write_text("keep")
    return path


def _untouched(path: Path) -> bool:
    return (path / "notes.txt").read_text() == "keep" and (path / "taxes").is_dir()


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the tiny run, so a command that wrongly replaced its folders harms no
    other test."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


def _one_error(result, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(p in errors[0] for p in phrases), result.output


@pytest.mark.parametrize("command", [
    ["export", "{run}", "--format", "saved_model", "--out", "{mine}"],
    ["evaluate", "{run}", "--out", "{mine}"],
    ["explain", "{run}", "{photo}", "--out", "{mine}"],
    ["predict", "{run}", "{photo}", "--out", "{mine}"],
    ["data", "show", "{photos}", "--out", "{mine}"],
    ["data", "issues", "{photos}", "--out", "{mine}"],
])
def test_no_command_replaces_a_users_folder(run_copy, tmp_path, command):
    # before: export renamed mydocs aside and removed it; evaluate and explain wrote into
    # it; predict failed with IsADirectoryError after labelling every photo
    mine = _users_folder(tmp_path / "mydocs")
    photos = tmp_path / "photos"
    shutil.copytree(CVTRICKS / "train", photos, ignore=lambda d, names: names[6:])
    args = [a.format(run=run_copy, mine=mine, photo=real_photos("cat", 1)[0], photos=photos)
            for a in command]
    result = CliRunner().invoke(app, args)
    _one_error(result, "mydocs", "Try:")
    assert _untouched(mine) and sorted(p.name for p in tmp_path.iterdir()) == [
        "mydocs", "photos", "run"]


@pytest.mark.parametrize("out", [".", "{cwd}", "{run}/bundle", "{run}", "{photos}"])
def test_export_refuses_the_current_folder_the_bundle_and_the_photos(run_copy, tmp_path,
                                                                      monkeypatch, out):
    # before: each of these was renamed aside and removed (`--out .`: a ValueError)
    photos = _users_folder(copy_photos(tmp_path / "photos", 4))
    cwd = _users_folder(tmp_path / "cwd")
    monkeypatch.chdir(cwd)
    bundle = sorted(p.name for p in (run_copy / "bundle").iterdir())
    target = out.format(cwd=cwd, run=run_copy, photos=photos)
    result = CliRunner().invoke(app, ["export", str(run_copy), "--out", target,
                                      "--photos", str(photos)])
    _one_error(result, "Try:")
    assert _untouched(photos) and _untouched(cwd)
    assert sorted(p.name for p in (run_copy / "bundle").iterdir()) == bundle


@pytest.mark.parametrize("command", [
    ["predict", "{run}", "{photo}", "--format", "csv", "--out", "{file}"],
    ["evaluate", "{run}", "--out", "{file}"],
    ["explain", "{run}", "{photo}", "--out", "{file}"],
    ["data", "show", "{photos}", "--out", "{file}"],
    ["data", "issues", "{photos}", "--out", "{file}"],
])
def test_no_command_overwrites_a_users_file(run_copy, tmp_path, command):
    mine = tmp_path / "thesis.csv"
    mine.write_text("chapter,page\n1,12\n")
    photos = copy_photos(tmp_path / "photos", 4)
    args = [a.format(run=run_copy, file=mine, photo=real_photos("dog", 1)[0], photos=photos)
            for a in command]
    _one_error(CliRunner().invoke(app, args), "thesis.csv", "Try:")
    assert mine.read_text() == "chapter,page\n1,12\n"


def test_pawnets_own_outputs_are_replaced(run_copy, tmp_path):
    photo = str(real_photos("cat", 1)[0])
    for command in (["predict", str(run_copy), photo, "--format", "csv",
                     "--out", str(tmp_path / "p.csv")],
                    ["evaluate", str(run_copy), "--out", str(tmp_path / "eval")],
                    ["explain", str(run_copy), photo, "--out", str(tmp_path / "explain")],
                    ["export", str(run_copy), "--format", "onnx", "--out",
                     str(tmp_path / "onnx")],
                    ["data", "issues", str(run_copy), "--out", str(tmp_path / "sheet.html")]):
        for _ in range(2):
            result = CliRunner().invoke(app, command)
            assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "onnx" / "model.onnx").is_file()


@pytest.mark.integration
def test_train_never_writes_into_an_existing_folder(tmp_path):
    mine = _users_folder(tmp_path / "mydocs")
    photos = copy_photos(tmp_path / "photos", 8)
    result = CliRunner().invoke(app, ["train", str(photos), "--model", "pawnet-cnn",
                                      "--epochs", "1", "--image-size", "32", "--out", str(mine)])
    assert result.exit_code == 0, result.output
    assert _untouched(mine) and sorted(p.name for p in mine.iterdir()) == ["notes.txt", "taxes"]
    assert (tmp_path / "mydocs2" / "bundle" / "model.keras").is_file()


def test_a_bad_weights_file_stops_before_a_run_folder_is_made(tmp_path):
    # before: the run folder was made, then training failed: an "interrupted" run was left
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"not an HDF5 file")
    photos = copy_photos(tmp_path / "photos", 4)
    result = CliRunner().invoke(app, ["train", str(photos), "--model", "keras:MobileNetV3Small",
                                      "--weights", str(bad), "--out", str(tmp_path / "run")])
    _one_error(result, "weights", "Try:")
    assert not (tmp_path / "run").exists()


# --- damaged run folders -----------------------------------------------------------------


def test_runs_lists_damaged_run_folders_without_a_traceback_or_a_hang(trained_run, tmp_path):
    # before: an extra history field or a short manifest row was a traceback, and a FIFO
    # named history.csv or provenance.json made `pawnet runs` wait forever
    root = tmp_path / "runs"
    damage = {
        "extra-field": lambda run: (run / "history.csv").write_text(
            (trained_run / "history.csv").read_text() + "2,0.5,0.5,0.5,0.1,1e-05,surplus\n"),
        "short-manifest-row": lambda run: (run / "manifest.csv").write_text(
            (trained_run / "manifest.csv").read_text() + "only/a/path.jpg,cat\n"),
        "fifo-history": lambda run: ((run / "history.csv").unlink(),
                                     os.mkfifo(run / "history.csv")),
        "fifo-provenance": lambda run: ((run / "bundle" / "provenance.json").unlink(),
                                        os.mkfifo(run / "bundle" / "provenance.json")),
    }
    for name, damaging in damage.items():
        shutil.copytree(trained_run, root / name, ignore=shutil.ignore_patterns("eval*"))
        damaging(root / name)
    for args in (["runs", root], ["runs", root, "--json"],
                 ["runs", "--compare", root / "extra-field", root / "fifo-history"]):
        done = subprocess.run([sys.executable, "-m", "pawnet.cli", *map(str, args)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    rows = {Path(r["run"]).name: r for r in json.loads(subprocess.run(
        [sys.executable, "-m", "pawnet.cli", "runs", str(root), "--json"],
        capture_output=True, text=True, timeout=120).stdout)}
    assert set(rows) == set(damage) and rows["extra-field"]["best_epoch"] == 1
    assert rows["short-manifest-row"]["data_fingerprint"]  # from provenance.json


# --- names are text: never parsed as mathtext, never a second line on the terminal -------

MATH_CLASS, FORGING_CLASS = "$\\foo$", "dog\nforged row\x1b[31m"
FORGING_PHOTO = "new\nforged row\x1b[2J.jpg"


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory) -> tuple[Path, Path, str]:
    """Photos in class folders named `$\\foo$` (mathtext) and with a newline and terminal
    escapes, one photo named so too, and a tiny run trained on them (its output too)."""
    root = tmp_path_factory.mktemp("odd-names")
    photos = copy_photos(root / "photos", 10)
    (photos / "cat").rename(photos / MATH_CLASS)
    (photos / "dog").rename(photos / FORGING_CLASS)
    shutil.copy(real_photos("cat", 11)[10], photos / MATH_CLASS / FORGING_PHOTO)
    result = CliRunner().invoke(app, ["train", str(photos), "--model", "pawnet-cnn",
                                      "--epochs", "1", "--image-size", "32", "--out",
                                      str(root / "run"), "--test-fraction", "0.3"])
    assert result.exit_code == 0, result.output
    return photos, root / "run", result.output


def _one_line_per_name(output: str) -> None:
    assert "\x1b" not in output
    assert not [line for line in output.splitlines() if line.startswith("forged row")], output


def test_every_commands_text_keeps_each_name_on_its_line(odd_names, tmp_path):
    # before: a class or file name with a newline forged a row in evaluate, runs, explain
    # and the training log, and escape sequences reached the terminal
    photos, run, train_output = odd_names
    _one_line_per_name(train_output)
    shutil.copytree(run, tmp_path / "run2", ignore=shutil.ignore_patterns("eval*", "export"))
    photo = str(photos / MATH_CLASS / FORGING_PHOTO)
    commands = [["data", "check", str(photos)],
                ["evaluate", str(run), "--out", str(tmp_path / "eval")],
                ["predict", str(run), str(photos)],
                ["explain", str(run), photo, "--out", str(tmp_path / "explain")],
                ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx")],
                ["runs", str(tmp_path)],
                ["runs", "--compare", str(run), str(tmp_path / "run2")],
                ["data", "show", str(photos), "--out", str(tmp_path / "grid.png")],
                ["data", "issues", str(photos), "--out", str(tmp_path / "sheet.html")]]
    for command in commands:
        result = CliRunner().invoke(app, command, color=True)
        assert result.exit_code == 0, (command, result.output)
        _one_line_per_name(result.output)


def test_class_names_with_mathtext_are_drawn_as_text(odd_names, tmp_path):
    # before: matplotlib parsed `$\foo$` and evaluate stopped with a traceback
    _, run, _ = odd_names
    result = CliRunner().invoke(app, ["evaluate", str(run), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    for name in ("confusion.png", "roc.png", "reliability.png", "risk_coverage.png",
                 "report.html"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["classes"] == sorted([MATH_CLASS, FORGING_CLASS])


@pytest.mark.parametrize("workers", ["localhost:1", [1, 2], ["a:1", None], {"0": "a:1"},
                                     ["a:1", "evil\x1b[31m\n:2"]])
def test_a_tf_config_whose_workers_are_not_host_port_strings_is_one_error_line(
        monkeypatch, tmp_path, workers):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": workers},
                                                "task": {"type": "worker", "index": 0}}))
    photos = copy_photos(tmp_path / "photos", 2)
    result = CliRunner().invoke(app, ["train", str(photos), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith('error: TF_CONFIG\'s job "worker" must be a list of HOST:PORT '
                               "strings, received: ")
    assert lines[0].isprintable() and not (tmp_path / "run").exists()
