import numpy as np
import pytest
from helpers import real_photos

from pawnet.data.images import ImageError, inspect_image, load_pixels


def test_real_photo_becomes_square_uint8_rgb():
    pixels = load_pixels(real_photos("dog", 1)[0], 64)
    assert pixels.shape == (64, 64, 3)
    assert pixels.dtype == np.uint8
    assert 20 < pixels.mean() < 235  # a real photo, not a blank


def test_bytes_and_path_give_identical_pixels():
    path = real_photos("cat", 1)[0]
    assert np.array_equal(load_pixels(path, 96), load_pixels(path.read_bytes(), 96))


def test_every_odd_file_is_converted_or_refused_with_its_reason(odd_files):
    folder, expected = odd_files
    for name, reason in expected.items():
        if reason is None:
            pixels = load_pixels(folder / name, 48)
            assert pixels.shape == (48, 48, 3), name
            assert pixels.dtype == np.uint8
        else:
            with pytest.raises(ImageError, match=reason):
                inspect_image(folder / name)


def test_alpha_is_composited_on_white_and_sixteen_bit_is_scaled(odd_files):
    folder, _ = odd_files
    gray = load_pixels(folder / "grayscale.jpg", 32).astype(int)
    deep = load_pixels(folder / "sixteen_bit.png", 32).astype(int)
    assert np.abs(gray - deep).mean() < 3  # 16-bit scaled down, not clipped to white
    assert (load_pixels(folder / "alpha.png", 32) >= 100).all()  # half-transparent on white


def test_low_pixel_limit_refuses_normal_photo():
    with pytest.raises(ImageError, match="decompression bomb"):
        load_pixels(real_photos("cat", 1)[0], 32, max_pixels=1000)


# the stored pixels of a photo taken with the camera turned, for each EXIF orientation
@pytest.mark.parametrize("orientation, stored_as", [(3, "ROTATE_180"), (6, "ROTATE_90"),
                                                    (8, "ROTATE_270")])
def test_exif_orientation_is_applied_before_resizing(tmp_path, orientation, stored_as):
    from PIL import Image

    upright = Image.open(real_photos("cat", 1)[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.png"  # lossless, so the pixels can be compared exactly
    upright.transpose(getattr(Image.Transpose, stored_as)).save(path, exif=exif)
    want = np.asarray(upright.resize((64, 64), Image.Resampling.BILINEAR))
    assert np.array_equal(load_pixels(path, 64), want)


# --- small files that decode to a lot of memory --------------------------------------------


def _png(img) -> bytes:
    import io

    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def test_sixteen_bit_is_scaled_a_band_at_a_time_with_the_exact_result():
    import tracemalloc

    from PIL import Image

    deep = np.random.default_rng(0).integers(0, 65536, (3000, 3000)).astype(np.uint16)
    want = load_pixels(_png(Image.fromarray(np.rint(deep / 257.0).astype(np.uint8))), 64)
    data = _png(Image.fromarray(deep))
    tracemalloc.start()
    got = load_pixels(data, 64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(got, want)
    assert peak < 2 * deep.size  # was over 8 bytes a pixel: float64 copies of the whole image


def test_a_large_transparent_image_is_reduced_before_it_is_composited():
    from PIL import Image

    photo = Image.open(real_photos("cat", 1)[0]).convert("RGB").resize((2000, 1600))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    white = Image.new("RGBA", photo.size, (255, 255, 255, 255))
    full = Image.alpha_composite(white, rgba).convert("RGB")
    want = np.asarray(full.resize((64, 64), Image.Resampling.BILINEAR)).astype(int)
    got = load_pixels(_png(rgba), 64).astype(int)
    assert np.abs(got - want).mean() < 0.6 and np.abs(got - want).max() <= 4


def test_the_limit_counts_decoded_bytes_not_only_pixels():
    from PIL import Image

    rgb = Image.open(real_photos("dog", 1)[0]).convert("RGB").resize((1000, 900))
    assert load_pixels(_png(rgb), 32, max_pixels=1_000_000).shape == (32, 32, 3)
    with pytest.raises(ImageError, match=r"too large to decode .*--max-pixels"):
        load_pixels(_png(rgb.convert("RGBA")), 32, max_pixels=1_000_000)


def test_a_budget_runs_no_more_decodes_at_once_than_there_are_cores(monkeypatch):
    import os
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pawnet.data import images

    running, most, lock = 0, 0, threading.Lock()
    convert = images._to_8bit

    def slow(img, image_size, resample):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return convert(img, image_size, resample)

    monkeypatch.setattr(images, "_to_8bit", slow)
    data = real_photos("cat", 1)[0].read_bytes()
    budget = images.DecodeBudget.for_this_machine()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda _: load_pixels(data, 32, budget=budget), range(32)))
    assert 1 <= most <= (os.cpu_count() or 2)

    # and together they hold no more decoded bytes than the budget: large ones take turns
    from PIL import Image

    budget = images.DecodeBudget(4, 5_000_000)
    large = _png(Image.open(real_photos("dog", 1)[0]).convert("RGB").resize((1500, 1000)))
    most = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: load_pixels(large, 32, budget=budget), range(8)))  # 4.5 MB
    assert most == 1
    most = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: load_pixels(data, 32, budget=budget), range(16)))  # small: 4
    assert most == 4


def test_a_predictor_decodes_within_its_own_budget(trained_run, monkeypatch):
    import pawnet
    from pawnet.data import images

    held = []
    hold = images.DecodeBudget.hold
    monkeypatch.setattr(images.DecodeBudget, "hold",
                        lambda self, nbytes: held.append(self) or hold(self, nbytes))
    predictor = pawnet.load(trained_run)
    predictor.predict(real_photos("cat", 2, "test"))
    assert held and all(b is predictor.decodes for b in held)


def test_formats_pawnet_does_not_accept_are_never_parsed(monkeypatch):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(real_photos("cat", 1)[0]).save(buffer, "TIFF")
    Image.init()
    _factory, accept = Image.OPEN["TIFF"]
    parsed = []
    monkeypatch.setitem(Image.OPEN, "TIFF", (lambda *a: parsed.append(a), accept))
    with pytest.raises(ImageError, match="unsupported format TIFF; allowed: BMP, GIF, JPEG"):
        load_pixels(buffer.getvalue(), 32)
    assert parsed == []
