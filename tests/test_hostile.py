"""Hostile and careless input, generated from real photos at test time, through every
surface that reads photos: the scan (`data check`, training), `predict` in each output
format, and the server. Nothing crashes, each bad file is skipped with a one-line reason,
and odd file names stay parseable in every output."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import real_photos
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from pawnet.cli import app
from pawnet.data.scan import scan
from pawnet.predict import load
from pawnet.serve.app import create_app
from pawnet.serve.settings import ServeSettings

FORMATS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
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

    for suffix, fmt in FORMATS.items():
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
