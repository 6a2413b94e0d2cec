import functools
import http.server
import shutil
import threading
import zipfile

import pytest
from conftest import CDFILTERED, real_photos

from pawnet import demo
from pawnet.errors import DataError


@pytest.fixture
def photo_server(tmp_path):
    """A loopback HTTP server publishing a small zip of real photos, like the real set."""
    root = tmp_path / "site"
    src = tmp_path / "src" / "cats_and_dogs_filtered"
    for split in ("train", "validation"):
        for label in ("cat", "dog"):
            (src / split / f"{label}s").mkdir(parents=True)
            for p in real_photos(label, 3, "train" if split == "train" else "test"):
                shutil.copy(p, src / split / f"{label}s" / p.name)
    root.mkdir()
    with zipfile.ZipFile(root / "photos.zip", "w") as zf:
        for p in src.rglob("*"):
            zf.write(p, p.relative_to(src.parent))
    (root / "broken.zip").write_bytes(b"not a zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", demo.content_fingerprint(src)
    server.shutdown()


def test_download_extracts_and_checks_content(photo_server, tmp_path):
    url, fingerprint = photo_server
    got = demo.download_dataset(f"{url}/photos.zip", fingerprint, dest=tmp_path / "cache")
    assert sorted(p.name for p in got.iterdir()) == ["train", "validation"]
    assert len(list(got.rglob("*.jpg"))) == 12
    again = demo.download_dataset(f"{url}/missing.zip", fingerprint, dest=tmp_path / "cache")
    assert again == got  # cached: no second download


def test_download_with_wrong_content_is_refused_and_leaves_nothing(photo_server, tmp_path):
    url, _ = photo_server
    with pytest.raises(DataError, match="does not match the expected photos"):
        demo.download_dataset(f"{url}/photos.zip", "0" * 64, dest=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(DataError, match="not a valid zip"):
        demo.download_dataset(f"{url}/broken.zip", "0" * 64, dest=tmp_path / "cache")


def test_offline_download_says_how_to_point_at_photos(tmp_path):
    with pytest.raises(DataError, match="PAWNET_DATA=/path/to/photos"):
        demo.download_dataset("http://127.0.0.1:9/none.zip", "0" * 64, dest=tmp_path)


def test_shipped_fingerprint_matches_the_local_copy_of_the_real_set():
    assert demo.content_fingerprint(CDFILTERED) == demo.FILTERED_FINGERPRINT


def test_photo_search_order(monkeypatch, tmp_path):
    monkeypatch.setenv("PAWNET_DATA", str(tmp_path))
    assert demo.find_photos() == tmp_path
    monkeypatch.setenv("PAWNET_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="is not a folder"):
        demo.find_photos()
