"""`pawnet data show`: one training batch as the model will see it, to check the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pawnet.data import assign_splits, scan
from pawnet.plots import plot_grid

GRID_SIZE = 64  # an 8x8 grid, like tutorial D's loader check


def show_batch(photos: str | Path, out: str | Path, *, config=None, **settings) -> Path:
    """Draw 64 training photos, augmented as in training, each captioned with its class.

    Args:
        photos: folder of photos.
        out: PNG file to write.
        config: YAML file or dict of settings; `settings` (e.g. augment, image_size, seed)
            win over it.

    Returns:
        The path of the PNG.
    """
    from pawnet.augment import build_augmenter
    from pawnet.pipeline import labelled_dataset
    from pawnet.train import resolve_training_config

    cfg = resolve_training_config(config, data=str(photos), **settings)
    image_size = cfg.image_size
    photoset = scan(photos, max_pixels=cfg.max_pixels)
    train = [p for p in assign_splits(photoset.photos, cfg.seed, cfg.val_fraction,
                                      cfg.test_fraction) if p.split == "train"]
    rng = np.random.default_rng(cfg.seed)
    chosen = [train[i] for i in rng.permutation(len(train))[:GRID_SIZE]]
    ds = labelled_dataset(
        [p.path for p in chosen], np.arange(len(chosen)), image_size, GRID_SIZE,
        augment=build_augmenter(cfg.augment, cfg.augment_strengths(), cfg.seed),
        max_pixels=cfg.max_pixels,
    )
    images, order = next(iter(ds))
    captions = [chosen[int(i)].label for i in order.numpy()]
    augment = ", ".join(cfg.augment) or "none"
    return plot_grid(images.numpy(), captions, out,
                     title=f"{photoset.root}: training batch at {image_size}px, augment: {augment}")
