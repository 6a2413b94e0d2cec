"""Choosing the presets for generalisation: train each candidate on one shared source and
measure it on photos from another, never on the sets the README reports.

Protocol: train on `cvtricks/train` (1,000 photos; the run's own split for validation),
then measure on `cdfiltered/validation` (1,000 other photos of the Kaggle set, disjoint
from cvtricks): accuracy, expected calibration error, and the share of those pets flagged
(unsure or neither); and the share flagged of `ood_photos/` and `ood/`. Also the training
time (features of the training photos cached beforehand, except with --cold).

    .venv/bin/python benchmarks/presets.py [NAME ...] [--cold]
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ood import SHARED, measure

import pawnet
from pawnet.data.scan import scan
from pawnet.trust.calibration import expected_calibration_error

CANDIDATES = {
    "lite0": {"model": "efficientnet-lite0"},
    "lite0-views1": {"model": "efficientnet-lite0", "feature_views": 1},
    "lite0-smooth": {"model": "efficientnet-lite0", "label_smoothing": 0.1},
    "lite0-288": {"model": "efficientnet-lite0", "image_size": 288},
    "lite1": {"model": "efficientnet-lite1"},
    "lite2": {"model": "efficientnet-lite2"},
    "lite1+lite2": {"model": "efficientnet-lite1+lite2"},
    "lite0+lite1+lite2": {"model": "efficientnet-lite0+lite1+lite2"},
    "lite0-finetune2": {"model": "efficientnet-lite0", "fine_tune": 2, "fine_tune_epochs": 3},
}


def evaluate(run: Path) -> dict:
    predictor = pawnet.load(run)
    found = scan(SHARED / "cdfiltered" / "validation")
    results = predictor.predict([p.path for p in found.photos])
    truth = np.array([predictor.classes.index(p.label) for p in found.photos])
    probs = np.array([[r.probabilities[c] for c in predictor.classes] for r in results])
    pets = measure(predictor, str(SHARED / "cdfiltered" / "validation"))
    return {"accuracy": float((probs.argmax(1) == truth).mean()),
            "ece": expected_calibration_error(probs, truth),
            "pets flagged": pets["flagged"],
            "ood_photos flagged": measure(predictor, str(SHARED / "ood_photos"))["flagged"],
            "ood flagged": measure(predictor, str(SHARED / "ood"))["flagged"]}


def main(names: list[str], cold: bool) -> None:
    print("| candidate | train s | accuracy | ECE | pets flagged | ood_photos flagged | "
          "ood flagged |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            settings = CANDIDATES[name]
            if not cold:  # fill the feature cache first, so the time is the run's own
                pawnet.train(SHARED / "cvtricks" / "train", out=f"{tmp}/{name}-warm",
                             **settings)
            started = time.monotonic()
            run = pawnet.train(SHARED / "cvtricks" / "train", out=f"{tmp}/{name}", **settings)
            seconds = time.monotonic() - started
            r = evaluate(run)
            print(f"| {name} | {seconds:.1f} | {r['accuracy']:.4f} | {r['ece']:.4f} | "
                  f"{r['pets flagged']:.1%} | {r['ood_photos flagged']:.1%} | "
                  f"{r['ood flagged']:.1%} |", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--cold"]
    main(args or list(CANDIDATES), "--cold" in sys.argv)
