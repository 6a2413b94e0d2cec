import gc
import weakref

import numpy as np
from helpers import real_photos

from pawnet.data.images import decode_ahead, load_pixels
from pawnet.data.pipeline import batch_function, labelled_dataset
from pawnet.models.registry import get_model_spec


def _photos(n_per_class: int = 3) -> tuple[list[str], np.ndarray]:
    paths = [str(p) for label in ("cat", "dog") for p in real_photos(label, n_per_class)]
    return paths, np.array([0] * n_per_class + [1] * n_per_class)


def test_batches_are_the_decoder_pixels_as_float32_in_order():
    paths, labels = _photos()
    batches = list(labelled_dataset(paths, labels, 64, batch_size=4, cache=""))
    images = np.concatenate([x.numpy() for x, _ in batches])
    assert [len(x) for x, _ in batches] == [4, 2]
    assert images.dtype == np.float32 and images.shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(images[5], load_pixels(paths[5], 64))
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in batches]), labels)


def test_shuffled_epochs_differ_but_repeat_with_the_seed():
    paths, labels = _photos(4)

    def epochs(seed: int) -> list[list[int]]:
        ds = labelled_dataset(paths, labels, 32, batch_size=8, cache="", shuffle_seed=seed)
        return [[int(v) for v in x.numpy()[:, 0, 0, 0]] for x, _ in (next(iter(ds)),
                                                                    next(iter(ds)))]

    first, second = epochs(7)
    assert sorted(first) == sorted(second) and first != second
    assert epochs(7) == [first, second]


def test_training_pipeline_runs_without_tf_data_autotuning():
    # the autotuner stalled whole epochs at random (about half speed) on 2 cores
    paths, labels = _photos(1)
    ds = labelled_dataset(paths, labels, 32, batch_size=2, augment=lambda x: x)
    assert ds.options().autotune.enabled is False


def test_decode_ahead_yields_batches_in_order_with_their_start():
    items = list(range(10))
    got = list(decode_ahead(items, lambda i: i * i, batch_size=3))
    assert got == [(0, [0, 1, 4]), (3, [9, 16, 25]), (6, [36, 49, 64]), (9, [81])]


def test_batch_function_compiles_once_for_any_batch_size_and_keeps_the_model_free():
    model = get_model_spec("pawnet-cnn").build(2, 32)
    forward = batch_function(model, "uint8")
    pixels = np.stack([load_pixels(p, 32) for p in _photos()[0]])
    np.testing.assert_allclose(forward(pixels).numpy(),
                               model.predict(pixels.astype("float32"), verbose=0), atol=1e-5)
    assert forward(pixels[:1]).shape[0] == 1
    assert batch_function(model, "uint8") is forward  # later loops reuse it
    assert forward.experimental_get_tracing_count() == 1
    held = weakref.ref(model)
    del model, forward
    gc.collect()
    assert held() is None
