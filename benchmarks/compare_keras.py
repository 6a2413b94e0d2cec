"""pawnet against the plain Keras 3 route, in one run, on the same photos and architecture.

    .venv/bin/python benchmarks/compare_keras.py ../shared/data/cdfiltered/train \
        [--epochs 2] [--time-to-accuracy ../shared/data/cvtricks]

(a) plain Keras: `keras.utils.image_dataset_from_directory` + augmentation layers mapped on
    the dataset + prefetch, tutorial A's CNN (3 conv blocks, Dense 512) at 150 px, batch
    32, flip/zoom/shear, Adam; run with TensorFlow's default settings.
(a') the same with TensorFlow's oneDNN kernels switched on (TF_ENABLE_ONEDNN_OPTS=1), which
    TensorFlow leaves off on CPUs without AVX-512 and pawnet switches on: the ratio against
    it is what pawnet wins beyond that one setting.
(b) pawnet: `pawnet.tools.bench.bench` with `tutorial-a-cnn` and the same augmentation, which
    trains through the same pipeline as `pawnet train`.

Each side runs in its own fresh process, so peak memory (ru_maxrss) is its own. Printed:
steady training photos/s (epochs after the first), inference photos/s (start-up apart),
input pipeline photos/s, peak memory, and pawnet's ratios to (a) and (a'). With
--time-to-accuracy, also the wall seconds of `pawnet train FOLDER` (default model) until
the bundle is saved, and the accuracy it reaches on that folder's test split, starting
from an empty cache (no stored features or converted weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE_SIZE, BATCH_SIZE = 150, 32
AUGMENT = "flip,zoom,shear"


def plain_keras(folder: str, epochs: int) -> dict:
    """The route a Keras 3 user writes from the tutorial; runs in its own process."""
    import resource

    import keras
    import tensorflow as tf
    from keras import layers

    def load(shuffle: bool):
        return keras.utils.image_dataset_from_directory(
            folder, image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH_SIZE,
            label_mode="binary", shuffle=shuffle, seed=1, verbose=False)

    augment = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomZoom(0.2),
                                layers.RandomShear(0.2, 0.2)])
    train = load(True).map(lambda x, y: (augment(x, training=True), y),
                           num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    n = sum(int(x.shape[0]) for x, _ in load(False))  # also warms the file cache
    started = time.perf_counter()
    for _ in load(False).prefetch(tf.data.AUTOTUNE):
        pass
    input_rate = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in train:
        pass
    augmented_rate = n / (time.perf_counter() - started)

    model = keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
        layers.Rescaling(1 / 255),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dropout(0.5),
        layers.Dense(512, activation="relu"),
        layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    times: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: times.append(time.perf_counter()),
        on_epoch_end=lambda e, logs: times.append(time.perf_counter() - times.pop()))
    model.fit(train, epochs=epochs, callbacks=[timer], verbose=0)

    started = time.perf_counter()
    model.predict(load(False).take(1), verbose=0)
    startup = time.perf_counter() - started
    started = time.perf_counter()
    model.predict(load(False), verbose=0)
    predict_seconds = time.perf_counter() - started
    return {
        "photos": n,
        "params": model.count_params(),
        "train": n * (len(times) - 1) / sum(times[1:]),
        "inference": n / predict_seconds,
        "predict_startup_seconds": startup,
        "input_first_pass": input_rate,
        "input_cached": input_rate,  # no cache: every epoch decodes again
        "input_first_pass_augmented": augmented_rate,
        "input_cached_augmented": augmented_rate,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def pawnet_route(folder: str, epochs: int) -> dict:
    # No `import keras` before pawnet: pawnet switches TensorFlow's oneDNN kernels on, which
    # only works before TensorFlow is imported (importing keras first had measured pawnet
    # at plain Keras' speed).
    from pawnet.models.registry import get_model_spec
    from pawnet.tools.bench import bench

    result = bench(folder, model="tutorial-a-cnn", image_size=IMAGE_SIZE,
                   batch_size=BATCH_SIZE, augment=AUGMENT, epochs=epochs)
    params = get_model_spec("tutorial-a-cnn").build(2, IMAGE_SIZE).count_params()
    return {
        "photos": result["photos"],
        "params": params,
        "train": result["end_to_end"]["train"],
        "train_compute_limit": result["compute_limit"]["train"],
        "efficiency": result["efficiency"],
        "inference": result["end_to_end"]["inference"],
        "inference_compute_limit": result["compute_limit"]["inference"],
        "inference_efficiency": result["inference_efficiency"],
        "predict_startup_seconds": result["end_to_end"]["predict_startup_seconds"],
        "input_first_pass": result["input"]["first_pass"],
        "input_cached": result["input"]["cached"],
        "input_first_pass_augmented": result["input"]["first_pass_augmented"],
        "input_cached_augmented": result["input"]["cached_augmented"],
        "peak_memory_mb": result["peak_memory_mb"],
    }


def run_side(side: str, folder: str, epochs: int, onednn: str | None = None) -> dict:
    """One route in a fresh process; `onednn` sets TF_ENABLE_ONEDNN_OPTS (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    out = subprocess.run(
        [sys.executable, __file__, "--side", side, "--epochs", str(epochs), folder],
        capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        sys.exit(f"{side} route failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_to_accuracy(folder: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="pawnet-tta-") as tmp:
        run_dir = Path(tmp) / "run"
        cold = {**os.environ, "PAWNET_CACHE_DIR": str(Path(tmp) / "cache")}  # no features yet
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pawnet.cli", "train", folder, "--out",
                        str(run_dir)], check=True, capture_output=True, env=cold)
        wall = time.perf_counter() - started
        code = (f"import json, pawnet; r = pawnet.evaluate({str(run_dir)!r}, split='test'); "
                f"r.write({tmp + '/eval'!r}); print(json.dumps([r.n, r.accuracy]))")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True)
        n, accuracy = json.loads(out.stdout.strip().splitlines()[-1])
    return {"train_wall_seconds": wall, "test_photos": n, "test_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", help="class folders (e.g. ../shared/data/cdfiltered/train)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--time-to-accuracy", metavar="FOLDER",
                        help="also time `pawnet train FOLDER` (train/test folders)")
    parser.add_argument("--side", choices=["plain", "pawnet"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        route = plain_keras if args.side == "plain" else pawnet_route
        print(json.dumps(route(args.photos, args.epochs)))
        return

    print(f"{os.cpu_count()} CPUs; {args.photos}; tutorial A CNN at {IMAGE_SIZE}px, batch "
          f"{BATCH_SIZE}, {AUGMENT}, {args.epochs} epochs; each route in its own process")
    plain = run_side("plain", args.photos, args.epochs)  # TensorFlow's defaults
    # TensorFlow leaves oneDNN off on CPUs without AVX-512 and pawnet turns it on; this
    # column shows what is left of pawnet's lead when a Keras user turns it on too
    plain_onednn = run_side("plain", args.photos, args.epochs, onednn="1")
    ours = run_side("pawnet", args.photos, args.epochs)
    assert plain["params"] == ours["params"], (plain["params"], ours["params"])
    rows = [
        ("training photos/s (steady)", "train", True),
        ("inference photos/s", "inference", True),
        ("inference start-up s", "predict_startup_seconds", False),
        ("input first pass photos/s", "input_first_pass", True),
        ("input cached pass photos/s", "input_cached", True),
        ("input + augment, first pass", "input_first_pass_augmented", True),
        ("input + augment, cached pass", "input_cached_augmented", True),
        ("peak memory MB", "peak_memory_mb", False),
    ]
    print(f"{'':30} {'plain Keras':>12} {'+ oneDNN':>12} {'pawnet':>12} {'ratios':>16}")
    for label, key, higher_better in rows:
        ratios = "  ".join(f"{ours[key] / base[key]:6.2f}x" if base[key] else "    nan"
                           for base in (plain, plain_onednn))
        print(f"{label:30} {plain[key]:12.1f} {plain_onednn[key]:12.1f} {ours[key]:12.1f} "
              f"{ratios}" + ("" if higher_better else "  (lower is better)"))
    print(f"pawnet efficiency: training {ours['efficiency']:.3f} of its compute limit "
          f"({ours['train_compute_limit']:.1f} photos/s), inference "
          f"{ours['inference_efficiency']:.3f} ({ours['inference_compute_limit']:.1f} photos/s)")
    if args.time_to_accuracy:
        tta = time_to_accuracy(args.time_to_accuracy)
        print(f"time to accuracy: `pawnet train {args.time_to_accuracy}` saved its bundle "
              f"after {tta['train_wall_seconds']:.1f}s wall; test accuracy "
              f"{tta['test_accuracy']:.4f} on {tta['test_photos']} photos")


if __name__ == "__main__":
    main()
