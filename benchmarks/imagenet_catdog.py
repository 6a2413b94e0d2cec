"""How the built-in `imagenet-catdog` threshold was set, and what it costs.

Prints, per folder of real cat and dog photos, the accuracy of the shipped model (mean
class probability rule, `neither` counted wrong) next to the plain sum-of-probabilities
rule it replaced, the percentiles of the cat+dog mass, and the false `neither` rate at the
shipped threshold. The threshold is the 0.1th percentile of the mass on the first folder.

    .venv/bin/python benchmarks/imagenet_catdog.py ../shared/data/cdfiltered/train \
        ../shared/data/cvtricks/test ../shared/data/tongpython
"""

import sys
import time

import keras
import numpy as np

from pawnet.data.pipeline import pixel_dataset
from pawnet.data.scan import scan
from pawnet.models.builtin import BACKBONE, THRESHOLD, CatDogVerdict
from pawnet.models.efficientnet_lite import (
    IMAGENET_CAT_CLASSES,
    IMAGENET_DOG_CLASSES,
    image_size,
)
from pawnet.models.efficientnet_lite_weights import load_pretrained


def imagenet_probabilities(model, paths):
    out = []
    for batch in pixel_dataset(paths, image_size(BACKBONE)).batch(32).prefetch(2):
        logits = model.predict_on_batch(keras.ops.cast(batch, "float32"))
        out.append(keras.ops.convert_to_numpy(keras.ops.softmax(logits)))
    return np.concatenate(out)


def main(folders):
    model = load_pretrained(BACKBONE, include_top=True)
    for i, folder in enumerate(folders):
        photos = scan(folder).photos
        started = time.monotonic()
        probs = imagenet_probabilities(model, [p.path for p in photos])
        seconds = time.monotonic() - started
        cat = probs[:, list(IMAGENET_CAT_CLASSES)].sum(1)
        dog = probs[:, list(IMAGENET_DOG_CLASSES)].sum(1)
        is_dog = np.array([p.label.lower() == "dog" for p in photos])
        total = cat + dog
        shipped = np.asarray(CatDogVerdict()(probs)).argmax(1)  # 0 cat, 1 dog, 2 neither
        print(f"{folder}: {len(photos)} photos, {len(photos) / seconds:.1f} photos/s")
        print(f"  accuracy of imagenet-catdog (neither counted wrong): "
              f"{np.mean(shipped == is_dog):.4f}")
        print(f"  accuracy of the sum rule (dog mass > cat mass): "
              f"{np.mean((dog > cat) == is_dog):.4f}")
        print("  cat+dog mass percentiles 0.1/0.5/1/5: "
              + " ".join(f"{v:.4f}" for v in np.percentile(total, [0.1, 0.5, 1, 5])))
        if i == 0:
            print(f"  suggested threshold (0.1th percentile): {np.percentile(total, 0.1):.4f}")
        print(f"  at THRESHOLD={THRESHOLD}: false neither {np.mean(shipped == 2):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["../shared/data/cdfiltered/train"])
