"""Compute limit of pawnet's models on whatever device Keras runs on, in float32 and in
mixed precision: the accelerator half of `pawnet bench`.

    KERAS_BACKEND=jax python benchmarks/gpu_compute.py PHOTOS [--json OUT]

`pawnet bench` needs TensorFlow, because its input pipeline is tf.data. The GPU machines
lent to this project have JAX but no TensorFlow, and none can be installed there (no
internet, and the wheel is far larger than what may be carried). pawnet's models are plain
Keras 3, so this script builds them under whatever backend `KERAS_BACKEND` names and times
training steps and inference on batches already on the device. It also times pawnet's
Pillow decoder (`pawnet.data.images.load_pixels`) on every CPU core: the input side that would
have to keep the accelerator busy.

Models, built exactly as pawnet builds them (the EfficientNet weights are random here:
speed does not depend on their values):

- tutorial-a-cnn at 150 px, pawnet-cnn at 96 px: training and inference;
- efficientnet-lite0 at 224 px, folded frozen backbone: feature extraction (inference);
- efficientnet-lite0 at 224 px, whole network trainable: fine-tuning steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import keras
import numpy as np

from pawnet.data.images import IMAGE_SUFFIXES, load_pixels
from pawnet.tools.bench import repeat_rate

MEASURE_SECONDS = 3.0
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _photos(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def decode_rate(paths: list[str], size: int) -> float:
    """Photos/s of pawnet's decoder (reduced-size JPEG decode + resize) on every core."""
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda p: load_pixels(p, size), paths[:64]))  # warm the file cache
        started = time.perf_counter()
        list(pool.map(lambda p: load_pixels(p, size), paths))
    return len(paths) / (time.perf_counter() - started)


def _build(name: str, num_classes: int) -> tuple[keras.Model, int, bool]:
    """(model, image size, trainable) as pawnet builds it."""
    from pawnet.models.efficientnet_lite import build_backbone
    from pawnet.models.pretrained import build_head, compose
    from pawnet.models.registry import get_model_spec

    if name == "lite0-features":
        backbone = build_backbone("lite0", folded=True)
        backbone.trainable = False
        return backbone, 224, False
    if name == "lite0-finetune":
        backbone = build_backbone("lite0")
        return compose(backbone, build_head(num_classes, backbone), "lite0"), 224, True
    spec = get_model_spec(name)
    return spec.build(num_classes), spec.image_size, True


def measure(name: str, precision: str, batch_size: int, pixels: np.ndarray) -> dict:
    """Training and inference photos/s of one model on one batch held on the device."""
    keras.backend.clear_session()
    keras.config.set_dtype_policy(precision)
    try:
        model, size, trainable = _build(name, num_classes=2)
    finally:
        keras.config.set_dtype_policy("float32")
    batch = np.resize(pixels[:, :size, :size], (batch_size, size, size, 3))
    x = keras.ops.convert_to_tensor(batch.astype("float32"))
    row = {"model": name, "precision": precision, "batch_size": batch_size, "image_size": size}
    row["inference"] = repeat_rate(lambda: model.predict_on_batch(x), batch_size,
                                   MEASURE_SECONDS)
    if trainable:
        binary = model.outputs[0].shape[-1] == 1
        y = keras.ops.convert_to_tensor(
            np.arange(batch_size) % 2 if binary else np.eye(2)[np.arange(batch_size) % 2],
            dtype="float32",
        )
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss="binary_crossentropy" if binary else "categorical_crossentropy",
        )
        row["train"] = repeat_rate(lambda: model.train_on_batch(x, y), batch_size,
                                   MEASURE_SECONDS)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", help="folder of photos (any nesting)")
    parser.add_argument(
        "--models", default="tutorial-a-cnn,pawnet-cnn,lite0-features,lite0-finetune"
    )
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    paths = _photos(args.photos)
    if not paths:
        sys.exit(f"error: no photos under {args.photos}. Try: a folder of .jpg files")
    devices = [str(d) for d in _devices()]
    result = {
        "backend": keras.backend.backend(),
        "devices": devices,
        "cpus": os.cpu_count(),
        "photos": len(paths),
        "decode_photos_per_s": {size: round(decode_rate(paths, size), 1) for size in (150, 224)},
        "rows": [],
    }
    print(f"backend {result['backend']}, devices {devices}, {result['cpus']} CPUs")
    print(f"pawnet decode on all cores: {result['decode_photos_per_s']} photos/s by size")
    pixels = np.stack([load_pixels(p, 224) for p in paths[:32]])
    print(f"{'model':16} {'precision':15} {'batch':>5} {'train/s':>9} {'infer/s':>9}")
    for name in args.models.split(","):
        for batch_size in map(int, args.batch_sizes.split(",")):
            for precision in args.precisions.split(","):
                row = measure(name, precision, batch_size, pixels)
                result["rows"].append(row)
                train = f"{row['train']:9.1f}" if "train" in row else f"{'-':>9}"
                print(
                    f"{name:16} {precision:15} {batch_size:5d} {train} {row['inference']:9.1f}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def _devices() -> list:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.list_logical_devices()
    if backend == "torch":
        import torch

        return ["cuda"] if torch.cuda.is_available() else ["cpu"]
    return [backend]


if __name__ == "__main__":
    main()
