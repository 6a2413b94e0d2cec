"""`make demo`: find cats-vs-dogs photos, train the default model, evaluate it, predict a few.

Photos are looked for in this order: `$PAWNET_DATA`, `../shared/data/cdfiltered` (a local
copy of TensorFlow's `cats_and_dogs_filtered`), then the pawnet cache; failing all three,
the set is downloaded from its official address with a progress bar and a content check.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from pawnet.errors import DataError
from pawnet.storage import cache_dir, progress

FILTERED_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
# SHA-256 over the sorted SHA-256s of the set's 3,000 JPEGs, computed from an unchanged copy
# (../shared/data/cdfiltered). It checks the photos extracted, whatever the zip's packaging.
FILTERED_FINGERPRINT = "b06740c39dd0032057a2033c85070dfcfa8c3d7f7fbb087f040010260ea07315"
FILTERED_DIRNAME = "cats_and_dogs_filtered"


def content_fingerprint(folder: Path) -> str:
    """SHA-256 of the sorted SHA-256s of every .jpg under a folder (names do not matter)."""
    digests = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg"))
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def download_dataset(
    url: str = FILTERED_URL,
    expected_fingerprint: str = FILTERED_FINGERPRINT,
    dest: Path | None = None,
    dirname: str = FILTERED_DIRNAME,
) -> Path:
    """Download and extract a zip of photos into the cache, checking its content.

    Returns:
        The extracted folder (e.g. `~/.cache/pawnet/datasets/cats_and_dogs_filtered`).

    Raises:
        DataError: no network, a bad archive, or content that does not match.
    """
    dest = dest or cache_dir() / "datasets"
    target = dest / dirname
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(tmp) / "photos.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(archive, "wb") as f:
                total = int(response.headers.get("Content-Length") or 0) or None
                with progress(total, "Downloading", "B", unit_scale=True) as bar:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(
                f"could not download {url} ({reason}). Try: point pawnet at photos you have, "
                "e.g. PAWNET_DATA=/path/to/photos make demo"
            ) from None
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(Path(tmp) / "x")
        except zipfile.BadZipFile:
            raise DataError(f"the download from {url} is not a valid zip file") from None
        extracted = Path(tmp) / "x" / dirname
        if not extracted.is_dir():
            raise DataError(f"the download from {url} has no {dirname}/ folder")
        found = content_fingerprint(extracted)
        if found != expected_fingerprint:
            raise DataError(
                f"the download from {url} does not match the expected photos "
                f"(fingerprint {found[:12]}..., expected {expected_fingerprint[:12]}...)"
            )
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


def run_demo(photos: Path | None = None, epochs: int | None = None) -> Path:
    """Train the default model on cats vs dogs, evaluate on held-out photos, predict a few."""
    from pawnet.data.splits import read_manifest
    from pawnet.evaluation import confusion_text, evaluate
    from pawnet.predict import format_predictions, load
    from pawnet.training import train

    photos = photos or find_photos()
    print(f"== pawnet demo: photos from {photos}", flush=True)
    run_dir = train(photos, epochs=epochs, out="runs/demo")
    print("== Evaluating on the held-out test split", flush=True)
    report = evaluate(run_dir)
    print(f"Test accuracy {report['accuracy']:.4f} on {report['n']} photos")
    print(confusion_text(report))
    print("== Predicting a few held-out photos", flush=True)
    test = [p for p in read_manifest(run_dir / "manifest.csv") if p.split == "test"]
    sample = [p.path for c in sorted({p.label for p in test})
              for p in [p for p in test if p.label == c][:2]]
    sample += [m["path"] for m in report["misclassified"][:2]]
    predictor = load(run_dir)
    print(format_predictions(predictor.predict(sample), predictor.classes))
    print(f"== Done. Report: {report['out']}/report.md  Bundle: {run_dir / 'bundle'}\n"
          f"   Try: .venv/bin/pawnet predict {run_dir} YOUR_PHOTO.jpg")
    return run_dir
