"""The studio's API on real photos: photos named by id only, decisions written to the labels
file and nowhere else, thumbnails, the jobs (answers, issues, growth, inbox queue) and
retraining from the page."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import copy_photos, real_photos

import pawnet
from pawnet.data.labels import read_labels, relative_path
from pawnet.data.splits import read_manifest
from pawnet.run_folder import RunFolder
from pawnet.studio.app import create_app, open_studio


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def _client(studio) -> TestClient:
    return TestClient(create_app(studio), base_url="http://127.0.0.1")


@pytest.fixture
def photos(tmp_path) -> Path:
    return copy_photos(tmp_path / "photos", 6)


@pytest.fixture
def no_run(photos, tmp_path):
    studio = open_studio(photos, labels=tmp_path / "labels.csv")
    return studio, _client(studio)


def test_photos_are_named_by_id_only(no_run, tmp_path):
    studio, client = no_run
    (tmp_path / "secret.jpg").write_bytes(real_photos("cat", 1)[0].read_bytes())
    for bad in ("../secret.jpg", "..%2Fsecret.jpg", "%2e%2e", "-1", "12abc", "99999",
                "/etc/passwd", "0x1", " 1", "%C2%B2", "1" * 5000, "%EF%BC%91"):
        for suffix in ("", "/thumb", "/image", "/explain"):
            response = client.get(f"/api/photos/{bad}{suffix}")
            assert response.status_code == 404, (bad, suffix)
    names = [item["name"] for item in client.get("/api/photos?limit=500").json()["items"]]
    assert len(names) == len(studio.catalog.entries) == 12
    assert all(not name.startswith(("/", "..")) for name in names)
    assert client.get("/api/photos?q=../").json()["total"] == 0


def test_requests_from_other_sites_are_refused(no_run):
    _, client = no_run
    assert client.get("/api/state", headers={"host": "evil.example:8000"}).status_code == 403
    for loopback in ("localhost:8000", "[::1]:8000", "[::1]", "127.0.0.1"):
        assert client.get("/api/state", headers={"host": loopback}).status_code == 200
    form = client.post("/api/photos/0/label", data={"label": "dog"})
    assert form.status_code == 415  # a cross-site form cannot send JSON
    assert client.post("/api/photos/0/label", json={"label": "../dog"}).status_code == 400
    for body in ({}, [], {"label": ["dog"]}, {"label": {"x": 1}}, {"lable": "dog"}):
        assert client.post("/api/photos/0/label", json=body).status_code == 400, body
    deep = b"[" * 5000 + b"]" * 5000
    assert client.post("/api/photos/0/label", content=deep,
                       headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/api/photos/0/label", content=b"{" * 20_000,
                       headers={"content-type": "application/json"}).status_code == 413
    assert client.get("/api/photos?order=evil").status_code == 400


def test_decisions_go_to_the_labels_file_only(no_run, photos, tmp_path):
    studio, client = no_run
    before = _digest(photos)
    cat = next(e for e in studio.catalog.entries if e.folder_label == "cat")
    dog = next(e for e in studio.catalog.entries if e.folder_label == "dog")
    answer = client.post(f"/api/photos/{cat.id}/label", json={"label": "dog"}).json()
    assert answer["label"] == "dog"
    client.post(f"/api/photos/{dog.id}/label", json={"label": "exclude"})
    client.post(f"/api/photos/{dog.id}/label", json={"label": "cat"})
    assert client.post("/api/undo", json={}).json()["undone"]["label"] == "exclude"
    decisions = read_labels(tmp_path / "labels.csv")
    assert {k: d.label for k, d in decisions.items()} == {cat.name: "dog", dog.name: "exclude"}
    assert client.get("/api/photos?decided=yes").json()["total"] == 2
    assert client.get("/api/photos?label=exclude").json()["items"][0]["id"] == dog.id
    counts = client.get("/api/state").json()["counts"]
    assert counts["decided"] == 2 and counts["by_label"]["exclude"] == 1
    assert _digest(photos) == before
    # a new session reads the same decisions back
    again = open_studio(photos, labels=tmp_path / "labels.csv")
    assert again.catalog.label(again.catalog.entries[cat.id]) == "dog"


def test_thumbnails_are_small_and_cached(no_run):
    from PIL import Image

    studio, client = no_run
    first = client.get("/api/photos/3/thumb")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    import io

    assert max(Image.open(io.BytesIO(first.content)).size) <= 192
    entry = studio.catalog.entries[3]
    assert list(studio.thumbs.folder.rglob(f"{entry.sha256}*"))
    assert client.get("/api/photos/3/thumb").content == first.content
    preview = Image.open(io.BytesIO(client.get("/api/photos/3/image").content))
    assert max(preview.size) <= 1024


def test_a_photo_damaged_or_gone_after_the_scan_is_a_4xx(no_run):
    studio, client = no_run
    Path(studio.catalog.entries[2].path).write_bytes(b"not a jpeg any more")
    response = client.get("/api/photos/2/image")
    assert response.status_code == 422 and "\n" not in response.json()["detail"]
    Path(studio.catalog.entries[3].path).unlink()
    for suffix in ("thumb", "image"):
        assert client.get(f"/api/photos/3/{suffix}").status_code == 404


def test_a_decision_holds_for_every_copy_of_a_photo(photos, tmp_path):
    cat = sorted((photos / "cat").iterdir())[0]
    (photos / "cat" / "copy.jpg").write_bytes(cat.read_bytes())
    studio = open_studio(photos, labels=tmp_path / "labels.csv")
    client = _client(studio)
    entry = next(e for e in studio.catalog.entries if e.copies)
    client.post(f"/api/photos/{entry.id}/label", json={"label": "exclude"})
    assert sorted(read_labels(tmp_path / "labels.csv")) == sorted(["cat/copy.jpg",
                                                                   f"cat/{cat.name}"])
    assert client.post("/api/undo", json={}).json()["undone"]["id"] == entry.id
    assert read_labels(tmp_path / "labels.csv") == {}


def test_a_labels_file_that_cannot_be_written_is_a_503_and_changes_nothing(no_run, tmp_path,
                                                                          monkeypatch):
    import errno

    from pawnet.data import labels

    studio, client = no_run
    client.post("/api/photos/0/label", json={"label": "dog"})

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(labels, "write_labels", full)
        response = client.post("/api/photos/1/label", json={"label": "dog"})
        assert response.status_code == 503
        assert "No space left on device" in response.json()["detail"]
        assert client.post("/api/undo", json={}).status_code == 503
    assert list(read_labels(tmp_path / "labels.csv")) == [studio.catalog.entries[0].name]
    assert studio.catalog.decision(studio.catalog.entries[1]) is None
    assert client.post("/api/undo", json={}).json()["undone"]["id"] == 0  # no false step
    assert read_labels(tmp_path / "labels.csv") == {}


def _wait(studio, *jobs: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [studio.jobs.status[j]["state"] for j in jobs]
        if all(s in ("done", "failed") for s in states):
            assert "failed" not in states, studio.jobs.status
            return
        time.sleep(0.2)
    raise AssertionError(f"jobs not done: {studio.jobs.status}")


@pytest.fixture
def run_copy(transfer_run, tmp_path) -> Path:
    """The shared transfer run, copied: retraining writes next to it."""
    return Path(shutil.copytree(transfer_run, tmp_path / "runs" / "train"))


@pytest.mark.integration
def test_answers_issues_and_retraining(run_copy, tmp_path):
    folder = Path(RunFolder(run_copy).config.read_text().split("photos: ")[1].split("\n")[0])
    studio = open_studio(folder, run_copy, tmp_path / "labels.csv")
    client = _client(studio)
    studio.jobs.start()
    try:
        _wait(studio, "answers", "issues", "growth")
        items = client.get("/api/photos?limit=500").json()["items"]
        assert all(item["answer"]["label"] for item in items)
        detail = client.get(f"/api/photos/{items[0]['id']}").json()
        assert abs(sum(detail["answer"]["probabilities"].values()) - 1) < 1e-4
        found = client.get(f"/api/photos/{items[0]['id']}/explain").json()
        assert found["path"] == items[0]["name"] and found["method"] == "layer-cam"
        assert found["resolution"] == [8, 8] == list(np.shape(found["heatmap"]))  # 64 px / 8
        assert client.get("/api/photos?issue=any").json()["total"] >= 1
        growth = client.get("/api/growth").json()["curves"]
        assert set(growth["recall"]) == {"cat", "dog"} and growth["advice"]["text"]

        cats = client.get("/api/photos?label=cat&split=train").json()["items"]
        client.post(f"/api/photos/{cats[0]['id']}/label", json={"label": "dog"})
        client.post(f"/api/photos/{cats[1]['id']}/label", json={"label": "exclude"})
        assert client.post("/api/retrain", json={}).status_code == 202
        _wait(studio, "retrain")
        result = client.get("/api/state").json()["retrained"]
        assert result["runs"][0].endswith("train") and result["runs"][1].endswith("train2")
        assert set(result["metrics"]) >= {"val_loss", "val_accuracy"}
        new_run = RunFolder(studio.jobs.run)
        manifest = {Path(p.path).name: p for p in read_manifest(new_run.manifest)}
        assert manifest[cats[0]["name"].split("/")[-1]].label == "dog"
        assert manifest[cats[0]["name"].split("/")[-1]].label_source == "labels.csv"
        assert cats[1]["name"].split("/")[-1] not in manifest
        _wait(studio, "answers", "issues")
    finally:
        studio.jobs.stop()


@pytest.mark.integration
def test_an_inbox_is_queued_and_its_labels_train(run_copy, tmp_path):
    folder = Path(RunFolder(run_copy).config.read_text().split("photos: ")[1].split("\n")[0])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, path in enumerate(real_photos("cat", 4, "test") + real_photos("dog", 4, "test")):
        shutil.copy(path, inbox / f"new_{i:02d}.jpg")  # no class in the name or folder
    studio = open_studio(inbox, run_copy, tmp_path / "labels.csv")
    assert studio.catalog.inbox and studio.jobs.labels_root == folder.resolve()
    client = _client(studio)
    studio.jobs.start()
    try:
        _wait(studio, "answers", "queue")
        queued = client.get("/api/photos?order=queue").json()["items"]
        assert sorted(item["queue"] for item in queued) == list(range(1, 9))
        assert client.get(f"/api/photos/{queued[0]['id']}").json()["why"]["uncertainty"] >= 0
        first = queued[0]
        client.post(f"/api/photos/{first['id']}/label", json={"label": "dog"})
        known = studio.jobs._known_photos()  # what the queue and curves learn from
        assert len(known) == len(read_manifest(RunFolder(run_copy).manifest)) + 1
    finally:
        studio.jobs.stop()
    decisions = read_labels(tmp_path / "labels.csv")
    assert list(decisions) == [relative_path(inbox / first["name"], folder)]
    assert next(iter(decisions)).startswith("../")
    run = pawnet.train(folder, model="efficientnet-lite0", image_size=64, epochs=3,
                       labels=str(tmp_path / "labels.csv"),
                       out=str(tmp_path / "runs" / "grown"))
    manifest = {Path(p.path).name: p for p in read_manifest(RunFolder(run).manifest)}
    assert manifest[first["name"]].label == "dog"
