"""What a trained model says about photos that are not its classes, and about its own.

Prints, per set of photos, the share labelled `neither`, `unsure` and each class: the
non-pet CIFAR-10 photos in `ood/`, the sample photos that ship inside scikit-learn and
scikit-image (when installed), and folders of real cats and dogs as they are and shrunk
to 32 px (a small photo of a cat is still a cat).

    .venv/bin/python benchmarks/ood.py RUN ../shared/data/ood \
        ../shared/data/cvtricks/test ../shared/data/tongpython/test
"""

import glob
import io
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image

import pawnet
from pawnet.predict import expand_paths

SKIMAGE_PETS = ("chelsea",)  # scikit-image's sample photos include one cat


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def _shrunk(paths: list[str], side: int = 32) -> list[bytes]:
    out = []
    for path in paths:
        image = Image.open(path)
        image.thumbnail((side, side))
        out.append(_png(image))
    return out


def _samples() -> dict[str, tuple[list, list[str]]]:
    from sklearn.datasets import load_sample_images

    found = {"sklearn samples": ([_png(Image.fromarray(a)) for a in
                                  load_sample_images().images], ["china", "flower"])}
    try:
        import skimage
    except ImportError:
        return found
    paths = sorted(p for p in glob.glob(str(Path(skimage.data.data_dir) / "*"))
                   if p.endswith((".png", ".jpg")))
    photos = [p for p in paths if Image.open(p).mode in ("RGB", "RGBA")]
    pets = [p for p in photos if Path(p).stem in SKIMAGE_PETS]
    others = [p for p in photos if Path(p).stem not in SKIMAGE_PETS]
    found["skimage colour samples (not pets)"] = (others, [Path(p).stem for p in others])
    found["skimage cat (chelsea)"] = (pets, [Path(p).stem for p in pets])
    return found


def report(predictor, name: str, sources: list, names: list[str] | None = None) -> None:
    started = time.monotonic()
    results = [r for r in predictor.predict(sources, names=names) if not r.error]
    labels = Counter(r.label for r in results)
    n = sum(labels.values())
    shares = ", ".join(f"{label} {count / n:.1%}" for label, count in labels.most_common())
    print(f"{name:44s} {n:5d} photos: {shares}  ({time.monotonic() - started:.1f}s)")
    if n <= 30:  # a handful of named photos: say what each was called
        print("    " + ", ".join(f"{Path(r.path).stem}: {r.label} ({r.ood_score:.3f})"
                                 for r in results if r.ood_score is not None))


def main(run: str, folders: list[str]) -> None:
    predictor = pawnet.load(run)
    spec = predictor.spec
    print(f"{run}: {spec.model_name}, neither above OOD score {spec.ood_threshold}, unsure "
          f"below {predictor.min_confidence:.4f}")
    for folder in folders:
        paths = expand_paths([folder])
        report(predictor, folder, paths)
        if "ood" not in Path(folder).parts:
            report(predictor, f"{folder} shrunk to 32 px", _shrunk(paths),
                   [f"{p} (32 px)" for p in paths])
    for name, (sources, names) in _samples().items():
        report(predictor, name, sources, names)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
