import functools
import http.server
import shutil
import threading
import zipfile

import pytest
from helpers import CDFILTERED, real_photos

from pawnet.errors import DataError
from pawnet.tools import demo


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
    with zipfile.ZipFile(root / "planted.zip", "w") as zf:  # the set plus files it lacks
        for p in src.rglob("*"):
            zf.write(p, p.relative_to(src.parent))
        zf.writestr("cats_and_dogs_filtered/train/cats/planted.png", _png())
        zf.writestr("cats_and_dogs_filtered/vectorize.py", "print('hi')\n")
    with zipfile.ZipFile(root / "slip.zip", "w") as zf:
        zf.writestr("cats_and_dogs_filtered/../../evil.jpg", b"x")
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


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    return buffer.getvalue()


def test_only_the_photos_the_fingerprint_covers_are_extracted(photo_server, tmp_path):
    # before: a planted .png passed (only .jpg files were fingerprinted) and was trained on
    url, fingerprint = photo_server
    got = demo.download_dataset(f"{url}/planted.zip", fingerprint, dest=tmp_path / "cache")
    files = sorted(p.suffix for p in got.rglob("*") if p.is_file())
    assert files == [".jpg"] * 12


def test_nothing_is_written_before_the_content_is_checked(photo_server, tmp_path, monkeypatch):
    url, _ = photo_server
    written = []
    original = demo.Path.write_bytes
    monkeypatch.setattr(demo.Path, "write_bytes",
                        lambda self, data: written.append(self) or original(self, data))
    with pytest.raises(DataError, match="does not match the expected photos"):
        demo.download_dataset(f"{url}/photos.zip", "0" * 64, dest=tmp_path / "cache")
    assert written == []


def test_a_pinned_archive_hash_is_checked_before_the_zip_is_opened(photo_server, tmp_path,
                                                                  monkeypatch):
    import hashlib

    url, fingerprint = photo_server
    opened = []
    monkeypatch.setattr(demo, "_extract_verified", lambda *a: opened.append(a))
    with pytest.raises(DataError, match=r"has SHA-256 .* it was not opened"):
        demo.download_dataset(f"{url}/photos.zip", fingerprint, dest=tmp_path / "c",
                              sha256="0" * 64)
    assert opened == []
    monkeypatch.undo()
    right = hashlib.sha256((tmp_path / "site" / "photos.zip").read_bytes()).hexdigest()
    got = demo.download_dataset(f"{url}/photos.zip", fingerprint, dest=tmp_path / "c",
                                sha256=right)
    assert len(list(got.rglob("*.jpg"))) == 12


@pytest.mark.parametrize(("cap", "value", "message"), [
    ("MAX_TOTAL_BYTES", 50_000, "larger than"),
    ("MAX_MEMBERS", 5, "more than the 5 files"),
    ("MAX_MEMBER_BYTES", 1_000, "photos are smaller"),
])
def test_archives_over_the_caps_are_refused(photo_server, tmp_path, monkeypatch, cap, value,
                                            message):
    url, fingerprint = photo_server
    monkeypatch.setattr(demo, cap, value)
    with pytest.raises(DataError, match=message):
        demo.download_dataset(f"{url}/photos.zip", fingerprint, dest=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_name_outside_the_folder_is_refused(photo_server, tmp_path):
    url, fingerprint = photo_server
    with pytest.raises(DataError, match="unsafe name"):
        demo.download_dataset(f"{url}/slip.zip", fingerprint, dest=tmp_path / "cache")
    assert not (tmp_path / "evil.jpg").exists()


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
