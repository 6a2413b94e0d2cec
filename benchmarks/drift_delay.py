"""How many requests `pawnet serve`'s drift monitor needs to warn once the stream changes.

Trains the default model on `PHOTOS/train` (or takes `--run`), answers `PHOTOS/test`'s cats
and dogs, the everyday photos of `ood_photos/` and more cats once each, then replays the
answers one photo per request into the server's `DriftMonitor`: `--fill` cats and dogs
first, then everyday photos or only cats. Prints the requests until the `warning:` line,
what fired and the KS statistic before and after, and the false alerts in
`--null` requests drawn from the cats and dogs alone.

    .venv/bin/python benchmarks/drift_delay.py ../shared/data/cvtricks
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

import pawnet
from pawnet.serve.drift import monitor_for

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _warnings() -> list[str]:
    found: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.WARNING:
                found.append(record.getMessage())

    logging.getLogger("pawnet.serve.drift").addHandler(Catch())
    return found


def _replay(predictor, window: int, first: list, then: list, warned: list[str]):
    """(requests until the warning or None, the warning, KS before, KS after)."""
    monitor = monitor_for(predictor, window)
    warned.clear()
    for answer in first:
        monitor.add([answer])
    before = monitor.summary()["score"]
    delay = None
    for i, answer in enumerate(then, 1):
        monitor.add([answer])
        if warned and delay is None:
            delay = i
    return delay, (warned[0] if warned else "-"), before, monitor.summary()["score"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, help="a folder with train/ and test/ cat and dog")
    parser.add_argument("--run", type=Path, help="a run trained on PHOTOS/train (default: "
                        "train the default model now)")
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--fill", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--null", type=int, default=20000)
    args = parser.parse_args()
    run = args.run or pawnet.train(args.photos / "train", test_fraction=0, verbose=False,
                                   out=tempfile.mkdtemp(prefix="drift-") + "/run")
    predictor = pawnet.load(run)
    test = args.photos / "test"
    cats, dogs = sorted(map(str, (test / "cat").glob("*.jpg"))), sorted(
        map(str, (test / "dog").glob("*.jpg")))
    half = len(cats) // 2
    pets = predictor.predict([p for pair in zip(cats[:half], dogs, strict=False) for p in pair])
    only_cats = predictor.predict(cats[half:])
    every_pet = pets + only_cats + predictor.predict(dogs[half:])
    everyday = predictor.predict(sorted(map(str, (SHARED / "ood_photos").glob("*.jpg"))))
    warned = _warnings()
    for fill in args.fill:
        for name, stream in (("everyday photos", everyday), ("only cats", only_cats)):
            delay, warning, before, after = _replay(predictor, args.window, pets[:fill],
                                                    stream, warned)
            print(f"{fill} cats and dogs, then {len(stream)} {name}: warning after {delay} "
                  f"requests; KS {before['statistic']:.3f} (p {before['p']:.2g}) -> "
                  f"{after['statistic']:.3f} (p {after['p']:.2g}); {warning[:140]}")
    rng = np.random.default_rng(0)
    monitor = monitor_for(predictor, args.window)
    warned.clear()
    for i in rng.integers(0, len(every_pet), args.null):
        monitor.add([every_pet[i]])
    print(f"no drift: {len(warned)} warnings in {args.null} requests drawn from the "
          f"{len(every_pet)} cats and dogs; {'; '.join(w[:140] for w in warned[:3])}")


if __name__ == "__main__":
    main()
