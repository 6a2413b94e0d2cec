"""`make demo`: find cats-vs-dogs photos, train the default model, evaluate it, predict a few.

Photos are looked for in this order: `$PAWNET_DATA`, `../shared/data/cdfiltered` (a local
copy of TensorFlow's `cats_and_dogs_filtered`), then the pawnet cache; failing all three,
the set is downloaded from its official address with a progress bar and a content check.

The check pins the photos, not the archive: their SHA-256s were computed from an
unchanged copy, while the zip's own bytes could not be (pawnet is built offline).
`download_dataset(sha256=...)` checks an archive's hash when it is known.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from pawnet import logs
from pawnet.errors import DataError
from pawnet.logs import progress
from pawnet.run_folder import RunFolder
from pawnet.storage import cache_dir

log = logging.getLogger(__name__)

FILTERED_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
# SHA-256 over the sorted SHA-256s of the set's 3,000 JPEGs, computed from an unchanged copy
# (../shared/data/cdfiltered). It checks the photos extracted, whatever the zip's packaging.
FILTERED_FINGERPRINT = "b06740c39dd0032057a2033c85070dfcfa8c3d7f7fbb087f040010260ea07315"
FILTERED_DIRNAME = "cats_and_dogs_filtered"


# Caps on what an archive may hold, checked from its directory before anything is read:
# the real set is 3,000 photos (and a few folders) in 68 MB.
MAX_MEMBERS = 5_000
MAX_TOTAL_BYTES = 200 * 1024 * 1024
MAX_MEMBER_BYTES = 20 * 1024 * 1024


def _fingerprint(digests: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def content_fingerprint(folder: Path) -> str:
    """SHA-256 of the sorted SHA-256s of every .jpg under a folder (names do not matter)."""
    return _fingerprint([hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in folder.rglob("*.jpg")])


def _photos_in(zf: zipfile.ZipFile, dirname: str, url: str) -> list[zipfile.ZipInfo]:
    """The archive's .jpg files under `dirname/`, after checking its directory against the
    caps and refusing names that would land outside the folder."""
    infos = zf.infolist()
    total = sum(i.file_size for i in infos)
    if len(infos) > MAX_MEMBERS or total > MAX_TOTAL_BYTES:
        raise DataError(f"the download from {url} holds {len(infos):,} files and "
                        f"{total / 1e6:,.0f} MB, more than the {MAX_MEMBERS:,} files and "
                        f"{MAX_TOTAL_BYTES / 1e6:,.0f} MB a photo set may")
    photos = []
    for info in infos:
        parts = PurePosixPath(info.filename).parts
        if info.filename.startswith("/") or ".." in parts or "\\" in info.filename:
            raise DataError(f"the download from {url} has an unsafe name "
                            f"{info.filename[:60]!r}")
        if info.file_size > MAX_MEMBER_BYTES:
            raise DataError(f"the download from {url} has a {info.file_size / 1e6:,.0f} MB "
                            f"file {info.filename[:60]!r}; photos are smaller")
        if not info.is_dir() and parts[0] == dirname and info.filename.endswith(".jpg"):
            photos.append(info)
    return photos


def _extract_verified(archive: Path, dirname: str, expected: str, out: Path, url: str) -> Path:
    """Check the photos' fingerprint reading the archive, then write exactly those photos
    (and nothing else the archive holds) under `out`."""
    with zipfile.ZipFile(archive) as zf:
        photos = _photos_in(zf, dirname, url)
        digests = {i.filename: hashlib.sha256(zf.read(i)).hexdigest() for i in photos}
        found = _fingerprint(list(digests.values()))
        if found != expected:
            raise DataError(
                f"the download from {url} does not match the expected photos "
                f"(fingerprint {found[:12]}..., expected {expected[:12]}...)"
            )
        for info in photos:
            data = zf.read(info)
            if hashlib.sha256(data).hexdigest() != digests[info.filename]:
                raise DataError(f"the download from {url} changed while it was read")
            target = out.joinpath(*PurePosixPath(info.filename).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    if not photos:
        raise DataError(f"the download from {url} has no {dirname}/ folder")
    return out / dirname


def _fetch(url: str, archive: Path, sha256: str | None) -> None:
    """Download `url` to `archive` with a progress bar, at most `MAX_TOTAL_BYTES`, checking
    the archive's SHA-256 when one is pinned."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(archive, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress(total, "Downloading", "B", unit_scale=True) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    if f.tell() > MAX_TOTAL_BYTES:
                        raise DataError(f"the download from {url} is larger than "
                                        f"{MAX_TOTAL_BYTES / 1e6:,.0f} MB; stopped")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not download {url} ({reason}). Try: point pawnet at photos you have, "
            "e.g. PAWNET_DATA=/path/to/photos make demo"
        ) from None
    if sha256 is not None and digest.hexdigest() != sha256:
        raise DataError(f"the download from {url} has SHA-256 {digest.hexdigest()[:12]}..., "
                        f"expected {sha256[:12]}...; it was not opened")


def download_dataset(
    url: str = FILTERED_URL,
    expected_fingerprint: str = FILTERED_FINGERPRINT,
    dest: Path | None = None,
    dirname: str = FILTERED_DIRNAME,
    sha256: str | None = None,
) -> Path:
    """Download a zip of photos into the cache, checking it before anything is extracted.

    When `sha256` is given the archive must have it, or it is not opened. Then its
    directory must stay within `MAX_MEMBERS` and `MAX_TOTAL_BYTES`, and the .jpg photos
    under `dirname/` must have `expected_fingerprint`; only those photos are extracted.

    Returns:
        The extracted folder (e.g. `~/.cache/pawnet/datasets/cats_and_dogs_filtered`).

    Raises:
        DataError: no network, a bad or oversized archive, or content that does not match.
    """
    dest = dest or cache_dir() / "datasets"
    target = dest / dirname
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(tmp) / "photos.zip"
        _fetch(url, archive, sha256)
        try:
            extracted = _extract_verified(archive, dirname, expected_fingerprint,
                                          Path(tmp) / "x", url)
        except zipfile.BadZipFile:
            raise DataError(f"the download from {url} is not a valid zip file") from None
        os.replace(extracted, target)
    return target


def find_photos() -> Path:
    """The demo's photos: $PAWNET_DATA, ../shared/data/cdfiltered, the cache, or a download."""
    env = os.environ.get("PAWNET_DATA")
    if env:
        if not Path(env).is_dir():
            raise DataError(f"PAWNET_DATA={env} is not a folder. Try: a folder of photos")
        return Path(env)
    shared = Path("../shared/data/cdfiltered")
    if shared.is_dir():
        return shared
    return download_dataset()


def _say(text: str) -> None:
    """Log `text` a line at a time (a log message is one line)."""
    for line in text.splitlines():
        log.info(line)


def run_demo(photos: Path | None = None, epochs: int | None = None,
             verbose: bool = True) -> Path:
    """Train the default model on cats vs dogs, evaluate on held-out photos (writing the
    report), predict a few; `verbose` shows each step and its figures."""
    from pawnet.data.splits import read_manifest
    from pawnet.inference.output import format_predictions
    from pawnet.inference.predictor import load
    from pawnet.reporting.evaluate import evaluate
    from pawnet.reporting.text import confusion_text
    from pawnet.training import train

    with logs.verbosity(verbose):
        photos = photos or find_photos()
        log.info(f"== pawnet demo: photos from {photos}")
        run_dir = train(photos, epochs=epochs, out="runs/demo")
        log.info("== Evaluating on the held-out test split")
        report = evaluate(run_dir)
        folder = report.write()
        log.info(f"Test accuracy {report.accuracy:.4f} on {report.n} photos")
        _say(confusion_text(report))
        log.info("== Predicting a few held-out photos")
        test = [p for p in read_manifest(RunFolder(run_dir).manifest) if p.split == "test"]
        sample = [p.path for c in sorted({p.label for p in test})
                  for p in [p for p in test if p.label == c][:2]]
        sample += [m["path"] for m in report.misclassified[:2]]
        predictor = load(run_dir)
        _say(format_predictions(predictor.predict(sample), predictor.classes))
        log.info(f"== Done. Report: {folder}/report.md  Bundle: {RunFolder(run_dir).bundle}")
        log.info(f"   Try: .venv/bin/pawnet predict {run_dir} YOUR_PHOTO.jpg")
    return run_dir
