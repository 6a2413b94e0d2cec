"""What trained models say about photos that are not their classes, and about their own.

For each run and each folder, prints the share of photos flagged (`unsure` or `neither`),
the count per reason (too small, unlike the training photos, no class likely enough), and,
where the folder's class folders are the model's classes, the share answered and the
accuracy on those answered. With no folders given, the shared sets are used: everyday
photos with no animal (`ood_photos/`), 32-px CIFAR-10 vehicles (`ood/`), and two test sets
of cats and dogs (`tongpython/test`, `cvtricks/test`).

    .venv/bin/python benchmarks/ood.py RUN [RUN ...] [-- FOLDER ...]
    .venv/bin/python benchmarks/ood.py --tasks [SETTING=VALUE ...]

`--tasks` trains on two multi-class tasks instead (with the settings given, e.g.
`model=pawnet-cnn`) and measures each on its own test split (30% of the photos, so that
the answered share and accuracy rest on a few hundred photos): the four vehicle classes of
`ood/` (32-px photos, 250 each), and those four with 250 cats and 250 dogs of
`cvtricks/train` (full-size photos) as six classes.
"""

import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pawnet
from pawnet.data.scan import scan
from pawnet.errors import DataError
from pawnet.inference.predictor import expand_paths
from pawnet.trust.verdict import NEITHER, REASONS, UNSURE, reason_kind

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLDERS = ("ood_photos", "ood", "tongpython/test", "cvtricks/test")


def _photos(folder: str) -> tuple[list[str], list[str | None]]:
    """Paths, and the class of each when the folder has class folders."""
    try:
        found = scan(folder)
        return [p.path for p in found.photos], [p.label for p in found.photos]
    except DataError:  # not a folder of classes: plain photos
        paths = expand_paths([folder])
        return paths, [None] * len(paths)


def measure(predictor, folder: str) -> dict:
    paths, truth = _photos(folder)
    started = time.monotonic()
    results = predictor.predict(paths)
    seconds = time.monotonic() - started
    kept = [(r, t) for r, t in zip(results, truth, strict=True) if not r.error]
    flagged = [r for r, _ in kept if r.label in (UNSURE, NEITHER)]
    reasons = Counter(reason_kind(r.reason) for r in flagged)
    row = {"folder": folder, "photos": len(kept), "flagged": len(flagged) / max(1, len(kept)),
           **{kind: reasons[kind] for kind in REASONS}, "seconds": seconds}
    known = [(r, t) for r, t in kept if t in predictor.classes]
    if known:
        answered = [(r, t) for r, t in known if r.label not in (UNSURE, NEITHER)]
        row["answered"] = len(answered) / len(known)
        row["accuracy"] = sum(r.top_class == t for r, t in known) / len(known)
        row["answered_accuracy"] = (sum(r.label == t for r, t in answered) / len(answered)
                                    if answered else None)
    return row


VEHICLES = ("airplane", "automobile", "ship", "truck")


def _task(folder: Path, with_pets: bool) -> Path:
    for kind in VEHICLES:
        shutil.copytree(SHARED / "ood" / kind, folder / kind)
    for kind in ("cat", "dog") if with_pets else ():
        (folder / kind).mkdir()
        for path in sorted((SHARED / "cvtricks" / "train" / kind).glob("*.jpg"))[:250]:
            shutil.copy(path, folder / kind / path.name)
    return folder


def tasks(settings: dict) -> None:
    """Train on each multi-class task and print its test split's row."""
    print("| task | n | flagged | too small | unlike | not likely | answered | "
          "accuracy (all) | accuracy (answered) | min_confidence |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, with_pets in (("4 vehicles (32 px)", False), ("4 vehicles + cat, dog", True)):
            photos = _task(Path(tmp) / name.split(" ")[0] / ("pets" if with_pets else "v"),
                           with_pets)
            run = pawnet.train(photos, out=f"{photos}-run", **{"test_fraction": 0.3, **settings})
            report = pawnet.evaluate(run)
            report.write(f"{photos}-eval")
            v = report.verdicts
            flagged = (v["unsure"] + v["neither"]) / report.n
            answered = "-" if v["answered_accuracy"] is None else f"{v['answered_accuracy']:.4f}"
            print(f"| {name} | {report.n} | {flagged:.1%} | "
                  + " | ".join(str(v["reasons"][kind]) for kind in REASONS)
                  + f" | {v['answered'] / report.n:.1%} | {report.accuracy:.4f} | "
                  f"{answered} | {v['min_confidence']:.4f} |", flush=True)


def _share(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def main(runs: list[str], folders: list[str]) -> None:
    print("| run | photos | n | flagged | too small | unlike | not likely | answered | "
          "accuracy (all) | accuracy (answered) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        predictor = pawnet.load(run)
        spec = predictor.spec
        print(f"<!-- {run}: {spec.model_name}; too small under {spec.min_side} px, neither "
              f"above {spec.ood_threshold}, unsure below {predictor.min_confidence:.4f} -->")
        for folder in folders:
            r = measure(predictor, folder)
            accuracy = "-" if "accuracy" not in r else f"{r['accuracy']:.4f}"
            answered_accuracy = ("-" if r.get("answered_accuracy") is None
                                 else f"{r['answered_accuracy']:.4f}")
            name = folder.split("shared/data/")[-1]
            print(f"| {Path(run).name} | {name} | {r['photos']} | {r['flagged']:.1%} | "
                  f"{r['too small']} | {r['unlike the training photos']} | "
                  f"{r['no class likely enough']} | {_share(r.get('answered'))} | {accuracy} | "
                  f"{answered_accuracy} |", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--tasks"]:
        tasks(dict(arg.split("=", 1) for arg in args[1:]))
        sys.exit()
    split = args.index("--") if "--" in args else len(args)
    main(args[:split], args[split + 1:] or [str(SHARED / f) for f in FOLDERS])
