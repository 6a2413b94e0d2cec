"""`pawnet bench`: where the time goes when one model trains and predicts on this machine.

Every figure is photos per second on the photos given, measured in this process:

- input pipeline: the first pass (decode + resize, which fills the uint8 cache), then
  cached passes without and with the model's augmentation;
- compute limit: training and inference on batches already in memory, the best the model
  can do here;
- end to end: training from the second epoch on, through the same pipeline `pawnet train`
  uses, and `predict` over the folder with the bundle's start-up (and the one-time
  conversion to the fast runtime) shown apart;
- efficiency = end to end / compute limit, and a verdict naming the bottleneck.

Transfer models train in two steps (features, then head), so their training figure is
feature extraction plus head training, and their compute limit is the same two steps on
photos already in memory: the backbone's in-memory inference plus the head's training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pawnet.errors import ConfigError, DataError

MEASURE_SECONDS = 8.0  # how long each in-memory compute measurement runs
WELL_FED = 0.9  # efficiency above which the pipeline is keeping the model busy


def _rate(photos: int, seconds: float) -> float:
    return round(photos / seconds, 1) if seconds > 0 else float("inf")


def _timed(func) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def _drain(ds) -> None:
    for _ in ds:
        pass


def repeat_rate(step, photos_per_step: int, seconds: float | None = None) -> float:
    """Photos/s of `step()` after a warm-up, run for about `seconds` (MEASURE_SECONDS)."""
    step()  # traces and warms caches
    once = _timed(step)
    seconds = MEASURE_SECONDS if seconds is None else seconds
    repeats = max(2, math.ceil(seconds / max(once, 1e-3)))
    return _rate(repeats * photos_per_step, _timed(lambda: [step() for _ in range(repeats)]))


def _peak_memory_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _photos(folder: str | Path, max_pixels: int, limit: int | None) -> tuple[list[str], list]:
    """(classes, photos): all photos of the folder, or `limit` of them picked by content
    hash (classes stay mixed), all in the train split."""
    from pawnet.data.scan import scan

    photoset = scan(folder, max_pixels=max_pixels)
    chosen = photoset.photos
    if limit is not None and limit < len(chosen):
        chosen = sorted(chosen, key=lambda p: p.sha256)[:limit]
    if len(photoset.classes) < 2 or not chosen:
        raise DataError(f"bench needs photos of at least 2 classes, found {photoset.classes} "
                        f"in {folder}. Try: a folder with one sub-folder per class")
    return photoset.classes, [dataclasses.replace(p, split="train") for p in chosen]


def bench(
    photos: str | Path,
    *,
    model: str | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    augment: str | list[str] | None = None,
    limit: int | None = None,
    epochs: int = 3,
) -> dict[str, Any]:
    """Measure input, compute and end-to-end speed of one model on a folder of photos.

    Args:
        photos: folder of photos (any layout `pawnet train` reads); all splits are used.
        model: registered model name; defaults to `pawnet train`'s default.
        image_size, batch_size, augment: override the model's own (augment as for
            `pawnet train --augment`).
        limit: use only this many photos.
        epochs: end-to-end training epochs (at least 2: the first fills the cache).

    Returns:
        The figures, as printed by `pawnet bench --json`.
    """
    import keras
    import tensorflow as tf

    from pawnet.config import resolve_config
    from pawnet.data.augment import build_augmenter
    from pawnet.models.registry import get_model_spec
    from pawnet.training.plan import Plan

    if epochs < 2:
        raise ConfigError(f"--epochs must be at least 2 (the first fills the cache), "
                          f"received: {epochs}")
    cfg = resolve_config(photos=str(photos), model=model, image_size=image_size,
                         batch_size=batch_size, augment=augment)
    spec = get_model_spec(cfg.model)
    classes, chosen = _photos(photos, cfg.max_pixels, limit)
    paths = [p.path for p in chosen]
    n, size, bs = len(chosen), cfg.image_size, cfg.batch_size
    transfer = spec.pretrained
    result: dict[str, Any] = {
        "model": cfg.model, "photos": n, "classes": len(classes), "image_size": size,
        "batch_size": bs, "cpus": os.cpu_count(),
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
    }
    keras.utils.set_random_seed(cfg.seed)
    augmenter = build_augmenter(cfg.augment, cfg.augment_strengths(), cfg.seed)

    in_memory = _bench_input(result, paths, cfg, None if transfer else augmenter)

    plan = Plan(cfg=cfg, run_dir=Path(), classes=classes, photos=chosen)
    if transfer:
        model_obj = _bench_transfer(result, plan, spec, paths, in_memory)
    else:
        model_obj = _bench_scratch(result, plan, spec, in_memory, epochs)

    with tempfile.TemporaryDirectory(prefix="pawnet-bench-") as tmp:
        _bench_predict(result, model_obj, cfg, classes, paths, Path(tmp))
    return _conclude(result, transfer)


def _conclude(result: dict, transfer: bool) -> dict:
    """Efficiencies (end to end / compute limit), the verdict and peak memory."""
    result["efficiency"] = round(result["end_to_end"]["train"]
                                 / result["compute_limit"]["train"], 3)
    result["inference_efficiency"] = round(result["end_to_end"]["inference"]
                                           / result["compute_limit"]["inference"], 3)
    result["bound"], result["verdict"] = _verdict(result, transfer)
    result["peak_memory_mb"] = _peak_memory_mb()
    return result


def _bench_input(result: dict, paths: list[str], cfg, augmenter) -> Any:
    """Input pipeline photos/s; returns one decoded batch for the in-memory measurements."""
    from pawnet.data.pipeline import batched, decoded_dataset

    n, bs = len(paths), cfg.batch_size
    decoded = decoded_dataset(paths, np.zeros(n, "int64"), cfg.image_size, cache="memory",
                              max_pixels=cfg.max_pixels)
    first = _timed(lambda: _drain(batched(decoded, bs)))  # also fills the cache
    shuffled = batched(decoded, bs, shuffle=(n, cfg.seed))
    cached = min(_timed(lambda: _drain(shuffled)) for _ in range(2))
    result["input"] = {"first_pass": _rate(n, first), "cached": _rate(n, cached),
                       "first_pass_augmented": None, "cached_augmented": None}
    if augmenter is not None:
        augmented = batched(decoded, bs, shuffle=(n, cfg.seed), augment=augmenter)
        result["input"]["cached_augmented"] = _rate(n, _timed(lambda: _drain(augmented)))
        uncached = decoded_dataset(paths, np.zeros(n, "int64"), cfg.image_size,
                                   max_pixels=cfg.max_pixels)
        fresh = batched(uncached, bs, augment=augmenter)
        result["input"]["first_pass_augmented"] = _rate(n, _timed(lambda: _drain(fresh)))
    return next(iter(batched(decoded, bs).take(1)))[0]


def _bench_scratch(result: dict, plan, spec, in_memory, epochs: int) -> Any:
    import keras
    import tensorflow as tf

    from pawnet.models.spec import output_kind
    from pawnet.training.recipe import compile_model, image_datasets, steps_per_epoch, targets

    photos, cfg = plan.photos, plan.cfg
    model = spec.build(len(plan.classes), cfg.image_size)
    binary = output_kind(model) == "sigmoid"
    compile_model(model, cfg, steps_per_epoch(len(photos), cfg))

    y = targets(photos[: len(in_memory)], plan.classes, binary)
    x, y = tf.constant(in_memory), tf.constant(y)
    limit_train = repeat_rate(lambda: model.train_on_batch(x, y), len(in_memory))

    with tempfile.TemporaryDirectory(prefix="pawnet-bench-") as tmp:
        # the pipeline `pawnet train` uses; every photo is in the train split here
        train_ds, _ = image_datasets(dataclasses.replace(plan, run_dir=Path(tmp)), binary)
        times: list[float] = []
        timer = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda e, logs: times.append(time.perf_counter()),
            on_epoch_end=lambda e, logs: times.append(time.perf_counter() - times.pop()),
        )
        model.fit(train_ds, epochs=epochs, callbacks=[timer], shuffle=False, verbose=0)
    steady = float(np.mean(times[1:]))
    result["compute_limit"] = {"train": limit_train}
    result["end_to_end"] = {"train": _rate(len(photos), steady),
                            "first_epoch_seconds": round(times[0], 2),
                            "epoch_seconds": [round(t, 2) for t in times]}
    return model


def _bench_transfer(result: dict, plan, spec, paths: list[str], in_memory) -> Any:

    from pawnet.features import extract_features, frozen_backbone
    from pawnet.models.pretrained import build_head, compose, load_backbone
    from pawnet.training.head import fit_linear
    from pawnet.training.recipe import targets

    photos, cfg = plan.photos, plan.cfg
    runtime = frozen_backbone(spec, cfg.image_size, cfg.weights).runtime  # what training runs
    limit = repeat_rate(lambda: runtime(in_memory), len(in_memory))

    started = time.perf_counter()
    features = extract_features(runtime, paths, cfg.image_size, cfg.batch_size,
                                max_pixels=cfg.max_pixels)
    extract_seconds = time.perf_counter() - started
    y = targets(photos, plan.classes, binary=len(plan.classes) == 2)
    fitted = []
    head_seconds = _timed(lambda: fitted.append(
        fit_linear(features, y, features[:0], y[:0], max_iter=cfg.epochs)))
    n = len(photos)
    result["compute_limit"] = {"train": _rate(n, n / limit + head_seconds)}
    result["end_to_end"] = {"train": _rate(n, extract_seconds + head_seconds)}
    result["transfer"] = {"runtime": runtime.name,
                          "feature_extraction": _rate(n, extract_seconds),
                          "backbone_limit": limit, "head_seconds": round(head_seconds, 4),
                          "head_iterations": len(fitted[0].rows)}
    backbone = load_backbone(spec, cfg.image_size, weights=cfg.weights)
    head = build_head(len(plan.classes), backbone)
    head.get_layer("predictions").set_weights([fitted[0].kernel, fitted[0].bias])
    return compose(backbone, head, spec.name)


def _bench_predict(result: dict, model, cfg, classes: list[str], paths: list[str],
                   tmp: Path) -> None:
    from pawnet.inference.bundle import BundleSpec, save_bundle
    from pawnet.inference.predictor import load
    from pawnet.models.spec import output_kind

    spec = BundleSpec(model_name=cfg.model, class_names=classes, image_size=cfg.image_size,
                      output=output_kind(model))
    save_bundle(tmp / "bundle", model, spec, {"bench": True}, cfg.to_yaml())
    conversion = _timed(lambda: load(tmp / "bundle"))  # once per model, then cached
    started = time.perf_counter()
    predictor = load(tmp / "bundle")
    predictor.predict(paths[:1])  # what a later process pays before the first answer
    startup = time.perf_counter() - started
    predict_seconds = _timed(lambda: predictor.predict(paths))

    pixels = np.stack([predictor.decode(p) for p in paths[: predictor.batch_size]])
    limit = repeat_rate(lambda: predictor.probabilities(pixels), len(pixels))
    result["compute_limit"]["inference"] = limit
    result["end_to_end"]["inference"] = _rate(len(paths), predict_seconds)
    result["end_to_end"]["predict_startup_seconds"] = round(startup, 2)
    result["end_to_end"]["conversion_seconds"] = round(conversion, 2)
    result["end_to_end"]["inference_runtime"] = predictor.runtime.name
    result["decode_ms_per_photo"] = round(1000 * _timed(
        lambda: [predictor.decode(p) for p in paths[:200]]) / len(paths[:200]), 2)
    result["runtimes"] = _bench_runtimes(tmp / "bundle", paths, pixels)


RUNTIME_BATCHES = (1, 8, 32)


def _bench_runtimes(bundle: Path, paths: list[str], pixels: np.ndarray) -> dict[str, Any]:
    """Per installed runtime: in-memory photos/s at a few batch sizes, end-to-end `predict`
    photos/s over the folder, and the largest probability difference to Keras."""
    from pawnet.inference.predictor import load
    from pawnet.inference.runtimes import AUTO_ORDER, installed

    out: dict[str, Any] = {}
    reference = None
    for name in reversed(AUTO_ORDER):  # keras first: the reference
        if not installed(name):
            continue
        predictor = load(bundle, runtime=name)  # converts once, outside the timings
        probs = predictor.probabilities(pixels)
        reference = probs if reference is None else reference
        run = predictor.runtime
        figures = {f"batch_{b}": repeat_rate(lambda b=b, run=run: run(pixels[:b]),
                                             len(pixels[:b]), MEASURE_SECONDS / 4)
                   for b in RUNTIME_BATCHES}
        figures["end_to_end"] = _rate(len(paths), _timed(lambda p=predictor: p.predict(paths)))
        figures["max_abs_diff"] = float(np.abs(probs - reference).max())
        out[name] = figures
    return out


def _verdict(result: dict, transfer: bool) -> tuple[str, str]:
    limit = result["compute_limit"]["train"]
    inputs = result["input"]
    if result["efficiency"] >= WELL_FED:
        return "compute", ("compute-bound: the model itself is the limit here; a smaller "
                           "--image-size or model is the way to go faster")
    if transfer or inputs["first_pass"] < limit:
        return "input", ("input-bound: decoding photos is slower than the model. Fix: store "
                         "the photos smaller (about 2x the training size is enough), or "
                         "train from the feature cache of an earlier run")
    if inputs["cached_augmented"] is not None and inputs["cached_augmented"] < 2 * limit:
        return "input", ("input-bound: augmentation is slower than the model. Fix: fewer "
                         "or cheaper augmentations (--augment flip)")
    return "overhead", ("neither input nor compute: per-step overhead. Fix: a larger "
                        "--batch-size")


def format_bench(result: dict[str, Any]) -> str:
    """The figures of `bench` as a short report for people."""
    inputs, limit, e2e = result["input"], result["compute_limit"], result["end_to_end"]
    augmented = inputs["cached_augmented"]
    first_augmented = inputs["first_pass_augmented"]
    lines = [
        f"{result['model']} at {result['image_size']}px, batch {result['batch_size']}, "
        f"{result['photos']} photos, {result['cpus']} CPUs, {result['device']}",
        f"input pipeline     first pass {inputs['first_pass']:.0f} photos/s, cached "
        f"{inputs['cached']:.0f}" + (f"; with augmentation: first pass {first_augmented:.0f}, "
                                     f"cached {augmented:.0f}" if augmented else ""),
        f"compute limit      train {limit['train']:.1f} photos/s, inference "
        f"{limit['inference']:.1f}",
        f"end to end         train {e2e['train']:.1f} photos/s, inference "
        f"{e2e['inference']:.1f} on {e2e['inference_runtime']} "
        f"(+{e2e['predict_startup_seconds']:.1f}s start-up; converting once took "
        f"{e2e['conversion_seconds']:.1f}s)",
    ]
    if "transfer" in result:
        t = result["transfer"]
        lines.append(f"transfer           features {t['feature_extraction']:.1f} photos/s "
                     f"(backbone limit {t['backbone_limit']:.1f}), head "
                     f"{t['head_seconds']:.2f}s for {t['head_iterations']} iterations")
    lines.append(f"decoding           {result['decode_ms_per_photo']:.2f} ms a photo on one core")
    for name, r in result["runtimes"].items():
        lines.append(f"runtime {name:<10} " + ", ".join(
            f"batch {b} {r[f'batch_{b}']:.0f}" for b in RUNTIME_BATCHES)
            + f" photos/s in memory; predict {r['end_to_end']:.0f} photos/s end to end; "
            f"max diff to keras {r['max_abs_diff']:.1g}")
    lines += [
        f"efficiency         train {result['efficiency']:.2f}, inference "
        f"{result['inference_efficiency']:.2f}",
        f"peak memory        {result['peak_memory_mb']:.0f} MB",
        f"verdict            {result['verdict']}",
    ]
    return "\n".join(lines)
