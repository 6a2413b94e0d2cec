"""pawnet against the plain Keras 3 route, in one run, on the same photos and architecture.

    .venv/bin/python benchmarks/compare_keras.py ../shared/data/cdfiltered/train \
        [--epochs 2] [--rounds 3] [--time-to-accuracy ../shared/data/cvtricks]

(a) plain Keras: `keras.utils.image_dataset_from_directory` + augmentation layers mapped on
    the dataset + prefetch, tutorial A's CNN (3 conv blocks, Dense 512) at 150 px, batch
    32, flip/zoom/shear, Adam; run with TensorFlow's default settings.
(a') the same with TensorFlow's oneDNN kernels switched on (TF_ENABLE_ONEDNN_OPTS=1), which
    TensorFlow leaves off on CPUs without AVX-512 and pawnet switches on: the ratio against
    it is what pawnet wins beyond that one setting.
(b) pawnet: `pawnet.tools.bench.bench` with `tutorial-a-cnn` and the same augmentation, which
    trains through the same pipeline as `pawnet train`.

Each side runs in its own fresh process, so peak memory (ru_maxrss) is its own. Printed:
steady training photos/s (epochs after the first), input pipeline photos/s, each training
process' peak memory (pawnet's once it has trained and predicted, before `bench` times
every installed runtime), and pawnet's ratios to (a) and (a').

Inference is measured apart, end to end on the same files (those `image_dataset_from_
directory` lists) with the same weights (a)'s training gave, copied into a pawnet bundle:
in `--rounds` rounds, (a), (a') and `pawnet.load(bundle).predict(files)` (its converted file
made before the rounds, as a second `pawnet predict` finds it) each run in a fresh process,
taking turns, so other jobs on shared cores slow every side alike; the best round of each
is printed, with CPU milliseconds a photo (what the other jobs change least), seconds from
the process' start to its first answer, and the predicting process' peak memory. With
--time-to-accuracy, also the wall seconds of `pawnet train FOLDER` (default model) until
the bundle is saved, and the accuracy it reaches on that folder's test split, starting
from an empty cache (no stored features or converted weights).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # first: a predicting process' start-up counts from here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

IMAGE_SIZE, BATCH_SIZE = 150, 32
AUGMENT = "flip,zoom,shear"


def plain_dataset(folder: str, shuffle: bool):
    import keras

    return keras.utils.image_dataset_from_directory(
        folder, image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH_SIZE,
        label_mode="binary", shuffle=shuffle, seed=1, verbose=False)


def plain_model():
    """Tutorial A's CNN as the tutorial writes it."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
        layers.Rescaling(1 / 255),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dropout(0.5),
        layers.Dense(512, activation="relu"),
        layers.Dense(1, activation="sigmoid"),
    ])


def plain_keras(folder: str, epochs: int, save: str | None = None) -> dict:
    """The route a Keras 3 user writes from the tutorial; runs in its own process. `save`:
    where to write the trained weights (after peak memory is read)."""
    import resource

    import keras
    import tensorflow as tf
    from keras import layers

    def load(shuffle: bool):
        return plain_dataset(folder, shuffle)

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

    model = plain_model()
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
    result = {
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
    if save:
        model.save_weights(save)  # HDF5, written as it goes (a .keras zip is built in memory)
    return result


def pawnet_route(folder: str, epochs: int) -> dict:
    # No `import keras` before pawnet: pawnet switches TensorFlow's oneDNN kernels on, which
    # only works before TensorFlow is imported (importing keras first had measured pawnet
    # at plain Keras' speed).
    import resource

    from pawnet.models.registry import get_model_spec
    from pawnet.tools import bench as bench_module

    # the route's peak is read once it has trained and predicted like (a), before bench's
    # sweep over every installed runtime, which (a) has nothing like
    sweep, before_sweep = bench_module._bench_runtimes, []

    def measured_sweep(*args, **kwargs):
        before_sweep.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return sweep(*args, **kwargs)

    bench_module._bench_runtimes = measured_sweep
    result = bench_module.bench(folder, model="tutorial-a-cnn", image_size=IMAGE_SIZE,
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
        "peak_memory_mb": before_sweep[0],
        "bench_peak_memory_mb": result["peak_memory_mb"],
    }


def _timed_pass(predict, n: int) -> dict:
    """One timed pass of `predict()` over `n` photos after the first answer: photos/s, CPU
    ms a photo (every thread of the process), start-up and peak memory of the process."""
    import resource

    startup = time.perf_counter() - STARTED
    cpu, started = os.times(), time.perf_counter()
    predict()
    seconds, cpu_after = time.perf_counter() - started, os.times()
    cpu_seconds = cpu_after.user - cpu.user + cpu_after.system - cpu.system
    return {"photos": n, "inference": n / seconds, "cpu_ms_per_photo": 1000 * cpu_seconds / n,
            "startup_seconds": startup, "process_seconds": startup + seconds,
            "predict_peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def plain_predict(folder: str, weights: str) -> dict:
    """Plain Keras labelling the folder, as the tutorial does, in a fresh process."""
    model = plain_model()
    model.load_weights(weights)
    n = len(plain_dataset(folder, False).file_paths)
    model.predict(plain_dataset(folder, False).take(1), verbose=0)  # the first answer
    return _timed_pass(lambda: model.predict(plain_dataset(folder, False), verbose=0), n)


def make_bundle(folder: str, weights: str, bundle: str, paths: str) -> dict:
    """The plain route's trained weights in a pawnet bundle, converted once for the fast
    runtime; the files `image_dataset_from_directory` reads, written to `paths`."""
    from pawnet.inference.bundle import BundleSpec, save_bundle
    from pawnet.inference.predictor import load
    from pawnet.models.registry import get_model_spec
    from pawnet.models.spec import output_kind

    plain = plain_model()
    plain.load_weights(weights)
    model = get_model_spec("tutorial-a-cnn").build(2, IMAGE_SIZE)
    model.set_weights(plain.get_weights())
    files = plain_dataset(folder, False)
    spec = BundleSpec(model_name="tutorial-a-cnn", class_names=files.class_names,
                      image_size=IMAGE_SIZE, output=output_kind(model))
    save_bundle(bundle, model, spec, {"benchmark": "compare_keras"})
    Path(paths).write_text(json.dumps(files.file_paths))
    return {"runtime": load(bundle).runtime.name}


def pawnet_predict(bundle: str, paths: str) -> dict:
    """`pawnet predict` on the same files, as a second run finds it (converted file
    cached), in a fresh process."""
    from pawnet.inference.predictor import load

    files = json.loads(Path(paths).read_text())
    predictor = load(bundle)
    predictor.predict(files[:1])  # the first answer
    return {**_timed_pass(lambda: predictor.predict(files), len(files)),
            "runtime": predictor.runtime.name}


def run_side(side: str, folder: str, epochs: int = 2, onednn: str | None = None,
             args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict:
    """One route in a fresh process; `onednn` sets TF_ENABLE_ONEDNN_OPTS (None: unset)."""
    env = {k: v for k, v in (env or os.environ).items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    out = subprocess.run(
        [sys.executable, __file__, "--side", side, "--epochs", str(epochs), *args, folder],
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


PREDICT_SIDES = {"plain": ("plain-predict", None), "plain_onednn": ("plain-predict", "1"),
                 "pawnet": ("pawnet-predict", None)}


def interleaved_inference(folder: str, weights: Path, rounds: int) -> dict[str, dict]:
    """Per route (keys of `PREDICT_SIDES`), its fastest of `rounds` fresh predicting
    processes, the routes taking turns (each round starting with the next route)."""
    tmp = weights.parent
    bundle, paths = str(tmp / "bundle"), str(tmp / "paths.json")
    env = {**os.environ, "PAWNET_CACHE_DIR": str(tmp / "cache")}
    made = run_side("bundle", folder, env=env,
                    args=("--weights", str(weights), "--bundle", bundle, "--paths", paths))
    print(f"inference: {rounds} rounds of fresh processes taking turns; pawnet runs on "
          f"{made['runtime']}")
    runs: dict[str, list[dict]] = {route: [] for route in PREDICT_SIDES}
    routes = list(PREDICT_SIDES)
    for r in range(rounds):
        for route in routes[r % 3:] + routes[: r % 3]:
            side, onednn = PREDICT_SIDES[route]
            runs[route].append(run_side(side, folder, onednn=onednn, env=env, args=(
                "--weights", str(weights), "--bundle", bundle, "--paths", paths)))
    for route, found in runs.items():
        print(f"  {route:14} photos/s " + " ".join(f"{r['inference']:6.1f}" for r in found))
    return {route: {key: (max if key == "inference" else min)(r[key] for r in found)
                    for key in found[0] if key != "runtime"}
            for route, found in runs.items()}


def run_predict_side(args: argparse.Namespace) -> dict:
    if args.side == "plain-predict":
        return plain_predict(args.photos, args.weights)
    if args.side == "bundle":
        return make_bundle(args.photos, args.weights, args.bundle, args.paths)
    return pawnet_predict(args.bundle, args.paths)


ROWS = [
    ("training photos/s (steady)", "train", True),
    ("inference photos/s", "inference", True),
    ("inference CPU ms a photo", "cpu_ms_per_photo", False),
    ("start-up to first answer s", "startup_seconds", False),
    ("predicting process s, all", "process_seconds", False),
    ("input first pass photos/s", "input_first_pass", True),
    ("input cached pass photos/s", "input_cached", True),
    ("input + augment, first pass", "input_first_pass_augmented", True),
    ("input + augment, cached pass", "input_cached_augmented", True),
    ("peak memory MB, training", "peak_memory_mb", False),
    ("peak memory MB, predicting", "predict_peak_memory_mb", False),
]


def print_table(plain: dict, plain_onednn: dict, ours: dict) -> None:
    print(f"{'':30} {'plain Keras':>12} {'+ oneDNN':>12} {'pawnet':>12} {'ratios':>16}")
    for label, key, higher_better in ROWS:
        ratios = "  ".join(f"{ours[key] / base[key]:6.2f}x" if base[key] else "    nan"
                           for base in (plain, plain_onednn))
        print(f"{label:30} {plain[key]:12.1f} {plain_onednn[key]:12.1f} {ours[key]:12.1f} "
              f"{ratios}" + ("" if higher_better else "  (lower is better)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", help="class folders (e.g. ../shared/data/cdfiltered/train)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="fresh predicting processes per route, taking turns (default 3)")
    parser.add_argument("--time-to-accuracy", metavar="FOLDER",
                        help="also time `pawnet train FOLDER` (train/test folders)")
    parser.add_argument("--side", choices=["plain", "pawnet", "plain-predict", "bundle",
                                           "pawnet-predict"], help=argparse.SUPPRESS)
    for hidden in ("--save", "--weights", "--bundle", "--paths"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side in ("plain", "pawnet"):
        print(json.dumps(plain_keras(args.photos, args.epochs, args.save) if args.side == "plain"
                         else pawnet_route(args.photos, args.epochs)))
        return
    if args.side:
        print(json.dumps(run_predict_side(args)))
        return

    print(f"{os.cpu_count()} CPUs; {args.photos}; tutorial A CNN at {IMAGE_SIZE}px, batch "
          f"{BATCH_SIZE}, {AUGMENT}, {args.epochs} epochs; each route in its own process")
    with tempfile.TemporaryDirectory(prefix="pawnet-compare-") as tmp:
        weights = Path(tmp) / "plain.weights.h5"
        # TensorFlow's defaults
        plain = run_side("plain", args.photos, args.epochs, args=("--save", str(weights)))
        # TensorFlow leaves oneDNN off on CPUs without AVX-512 and pawnet turns it on; this
        # column shows what is left of pawnet's lead when a Keras user turns it on too
        plain_onednn = run_side("plain", args.photos, args.epochs, onednn="1")
        ours = run_side("pawnet", args.photos, args.epochs)
        assert plain["params"] == ours["params"], (plain["params"], ours["params"])
        predicting = interleaved_inference(args.photos, weights, args.rounds)
    assert predicting["plain"]["photos"] == predicting["pawnet"]["photos"]
    print_table({**plain, **predicting["plain"]},
                {**plain_onednn, **predicting["plain_onednn"]}, {**ours, **predicting["pawnet"]})
    print(f"pawnet efficiency: training {ours['efficiency']:.3f} of its compute limit "
          f"({ours['train_compute_limit']:.1f} photos/s), inference in the training process "
          f"{ours['inference']:.1f} photos/s, {ours['inference_efficiency']:.3f} of its "
          f"compute limit ({ours['inference_compute_limit']:.1f} photos/s); peak memory "
          f"with bench's sweep over every runtime {ours['bench_peak_memory_mb']:.0f} MB")
    if args.time_to_accuracy:
        tta = time_to_accuracy(args.time_to_accuracy)
        print(f"time to accuracy: `pawnet train {args.time_to_accuracy}` saved its bundle "
              f"after {tta['train_wall_seconds']:.1f}s wall; test accuracy "
              f"{tta['test_accuracy']:.4f} on {tta['test_photos']} photos")


if __name__ == "__main__":
    main()
