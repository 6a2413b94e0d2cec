"""How the built-in `imagenet-catdog` threshold was set, and what it costs.

Prints, per folder of real cat and dog photos, the cat-vs-dog accuracy of the ImageNet mass
rule, the percentiles of the cat+dog mass, and the false `neither` rate at the shipped
threshold. The threshold is the 0.1th percentile of the mass on the first folder given.

    .venv/bin/python benchmarks/imagenet_catdog.py ../shared/data/cdfiltered/train \
        ../shared/data/cvtricks/test ../shared/data/tongpython
"""

import sys
import time

import keras
import numpy as np

from pawnet.builtin import BACKBONE, THRESHOLD
from pawnet.data import scan
from pawnet.models.efficientnet_lite import (
    IMAGENET_CAT_CLASSES,
    IMAGENET_DOG_CLASSES,
    image_size,
    load_pretrained,
)
from pawnet.pipeline import pixel_dataset


def masses(model, paths):
    out = []
    for batch in pixel_dataset(paths, image_size(BACKBONE)).batch(32).prefetch(2):
        logits = model.predict_on_batch(keras.ops.cast(batch, "float32"))
        out.append(keras.ops.convert_to_numpy(keras.ops.softmax(logits)))
    probs = np.concatenate(out)
    return (probs[:, list(IMAGENET_CAT_CLASSES)].sum(1),
            probs[:, list(IMAGENET_DOG_CLASSES)].sum(1))


def main(folders):
    model = load_pretrained(BACKBONE, include_top=True)
    for i, folder in enumerate(folders):
        photos = scan(folder).photos
        started = time.monotonic()
        cat, dog = masses(model, [p.path for p in photos])
        seconds = time.monotonic() - started
        is_dog = np.array([p.label.lower() == "dog" for p in photos])
        total = cat + dog
        accuracy = np.mean((dog > cat) == is_dog)
        print(f"{folder}: {len(photos)} photos, {len(photos) / seconds:.1f} photos/s")
        print(f"  cat-vs-dog accuracy of the mass rule: {accuracy:.4f}")
        print("  cat+dog mass percentiles 0.1/0.5/1/5: "
              + " ".join(f"{v:.4f}" for v in np.percentile(total, [0.1, 0.5, 1, 5])))
        if i == 0:
            print(f"  suggested threshold (0.1th percentile): {np.percentile(total, 0.1):.4f}")
        false_neither = np.mean(total < THRESHOLD)
        verdict = np.where(total < THRESHOLD, -1, (dog > cat).astype(int))
        print(f"  at THRESHOLD={THRESHOLD}: false neither {false_neither:.4f}, "
              f"accuracy with neither counted wrong {np.mean(verdict == is_dog):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["../shared/data/cdfiltered/train"])
