"""What tests share besides fixtures: where the shared photos are, real photos copied into
folders of every layout, odd files made from them, running the CLI in-process, and checks
used by several test modules. Fixtures are in conftest.py."""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pawnet  # sets TensorFlow's environment, so it goes before any test imports TensorFlow

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PAWNET_SHARED_DATA", REPO.parent / "shared" / "data"))
CVTRICKS = SHARED_DATA / "cvtricks"
CDFILTERED = SHARED_DATA / "cdfiltered"
TONGPYTHON = SHARED_DATA / "tongpython"

if not CVTRICKS.is_dir():
    raise RuntimeError(f"the shared photos are missing: {SHARED_DATA} (expected ../shared/data)")


def invoke(*args):
    """Run the `pawnet` command in this process; returns click's Result."""
    from typer.testing import CliRunner

    from pawnet.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def real_photos(label: str, n: int, split: str = "train", dataset: Path = CVTRICKS) -> list[Path]:
    """The first `n` real photos of a class, in a stable order."""
    return sorted((dataset / split / label).glob("*.jpg"))[:n]


def copy_photos(dest: Path, per_class: int = 12, classes=("cat", "dog"), split="train",
                offset: int = 0) -> Path:
    for label in classes:
        (dest / label).mkdir(parents=True, exist_ok=True)
        for src in real_photos(label, offset + per_class, split)[offset:]:
            shutil.copy(src, dest / label / src.name)
    return dest


def _jpeg_bytes() -> bytes:
    return real_photos("cat", 1)[0].read_bytes()


def make_odd_files(folder: Path) -> dict[str, str | None]:
    """Write one file of every odd kind into `folder`, made from a real photo.

    Returns {file name: expected skip reason prefix, or None when it must be usable}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(io.BytesIO(_jpeg_bytes())).convert("RGB")
    data = _jpeg_bytes()
    expected: dict[str, str | None] = {}

    def save(name, img, reason=None, **kw):
        img.save(folder / name, **kw)
        expected[name] = reason

    (folder / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "empty file"
    (folder / "notes.txt").write_text("not a photo\n")
    expected["notes.txt"] = "not an image"
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expected["truncated.jpg"] = "truncated or corrupt"
    junk = np.random.default_rng(0).integers(0, 256, len(data) - 400, dtype=np.uint8)
    (folder / "corrupt.jpg").write_bytes(data[:400] + junk.tobytes())
    expected["corrupt.jpg"] = "truncated or corrupt|not an image"
    save("unsupported.tiff", photo, "unsupported format TIFF")
    save("grayscale.jpg", photo.convert("L"))
    save("cmyk.jpg", photo.convert("CMYK"))
    save("palette.png", photo.convert("P"))
    alpha = photo.convert("RGBA")
    alpha.putalpha(128)
    save("alpha.png", alpha)
    save("sixteen_bit.png", Image.fromarray(
        (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)))
    frames = [photo.convert("P"), photo.rotate(90).convert("P")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    expected["animated.gif"] = None
    save("bitmap.bmp", photo)
    save("web.webp", photo)
    Image.new("1", (9500, 9500)).save(folder / "bomb.png")  # 90.25 M pixels, a few KB
    expected["bomb.png"] = "too many pixels"
    return expected


def assert_runtimes_agree(model, photos, atol=1e-5) -> None:
    """Every fp32 runtime gives the Keras runtime's probabilities on real photos."""
    keras_probs = pawnet.load(model, runtime="keras").predict(photos)
    for name in ("onnx", "litert", "auto"):
        predictor = pawnet.load(model, runtime=name)
        assert predictor.runtime.name == (name if name != "auto" else "onnx")
        for got, want in zip(predictor.predict(photos), keras_probs, strict=True):
            assert got.label == want.label
            assert (got.ood_score is None) == (want.ood_score is None)
            if got.ood_score is not None:
                assert got.ood_score == pytest.approx(want.ood_score, abs=atol)
            for c in predictor.classes:
                assert got.probabilities[c] == pytest.approx(want.probabilities[c], abs=atol)


def free_ports(n: int) -> list[int]:
    """`n` loopback ports free right now, for local workers."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def has_chromium() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def chromium(profile, size: str = "1000,800", *, console: bool = False,
             network: bool = False):
    """Debian's headless Chromium through Selenium, with a profile folder of its own;
    `console`: keep the page's console messages for `get_log("browser")`; `network`: keep
    every request for `get_log("performance")`, and resolve no host but 127.0.0.1."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size}")
    logs = {"browser": "ALL"} if console else {}
    if network:
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        logs["performance"] = "ALL"
    if logs:
        options.set_capability("goog:loggingPrefs", logs)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
