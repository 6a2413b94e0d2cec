"""`pawnet data show`: one training batch as the model will see it, to check the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pawnet.config import resolve_config
from pawnet.data.scan import scan
from pawnet.data.splits import assign_splits
from pawnet.reporting.plots import is_own_png, plot_grid
from pawnet.storage import check_output_file

GRID_SIZE = 64  # an 8x8 grid


def show_batch(photos: str | Path, out: str | Path, *, config=None, **settings) -> Path:
    """Draw 64 training photos, augmented as training will augment them, each captioned
    with its class.

    Args:
        photos: folder of photos.
        out: PNG file to write; an existing file is replaced only when pawnet drew it.
        config: YAML file or dict of settings; `settings` (e.g. augment, image_size, seed,
            model) win over it.

    Returns:
        The path of the PNG.

    Raises:
        ConfigError: `out` is a folder, or a file pawnet did not draw.
    """
    from pawnet.data.augment import build_augmenter
    from pawnet.data.pipeline import labelled_dataset
    from pawnet.training.recipe import augmentation_used

    check_output_file(out, "PNG grid", is_own_png)
    cfg = resolve_config(config, photos=str(photos), **settings)
    photoset = scan(photos, max_pixels=cfg.max_pixels)
    train = [p for p in assign_splits(photoset.photos, cfg.seed, cfg.val_fraction,
                                      cfg.test_fraction) if p.split == "train"]
    rng = np.random.default_rng(cfg.seed)
    chosen = [train[i] for i in rng.permutation(len(train))[:GRID_SIZE]]
    augment = augmentation_used(cfg)
    ds = labelled_dataset(
        [p.path for p in chosen], np.arange(len(chosen)), cfg.image_size, GRID_SIZE,
        augment=build_augmenter(augment, cfg.augment_strengths(), cfg.seed),
        max_pixels=cfg.max_pixels,
    )
    images, order = next(iter(ds))
    captions = [chosen[int(i)].label for i in order.numpy()]
    shown = ", ".join(augment) or "none"
    if cfg.augment and not augment:
        shown += f" ({cfg.model} trains its head on plain photos)"
    return plot_grid(images.numpy(), captions, out,
                     title=f"{photoset.root}: training batch at {cfg.image_size}px, "
                           f"augment: {shown}")
