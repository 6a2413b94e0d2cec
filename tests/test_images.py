import numpy as np
import pytest
from conftest import real_photos

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
