import numpy as np
import pytest
from PIL import Image

from device.preprocess import MAX_PIXELS, ImageError, load_image


def _scan(w=60, h=60):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 3 + yy) % 256).astype(np.uint8)  # asymmetric, so rotations are visible


def test_output_is_uint8_square_of_requested_size(tmp_path):
    Image.fromarray(_scan()).save(tmp_path / "a.png")
    a = load_image(tmp_path / "a.png", 32)
    assert a.shape == (32, 32) and a.dtype == np.uint8


def test_rgb_encoded_grayscale_equals_grayscale(tmp_path):
    g = Image.fromarray(_scan())
    g.save(tmp_path / "g.png")
    g.convert("RGB").save(tmp_path / "rgb.png")
    assert np.array_equal(load_image(tmp_path / "g.png", 32), load_image(tmp_path / "rgb.png", 32))


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(_scan(60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    img.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.jpg", quality=100)
    a, b = load_image(tmp_path / "rot.jpg", 32).astype(int), load_image(tmp_path / "upright.jpg", 32).astype(int)
    assert np.abs(a - b).mean() < 3  # same orientation (JPEG noise aside)
    assert np.abs(load_image(tmp_path / "rot.jpg", 32).astype(int) - np.rot90(b)).mean() > 10


def test_non_square_is_padded_not_stretched(tmp_path):
    Image.fromarray(np.full((20, 40), 200, np.uint8)).save(tmp_path / "wide.png")
    a = load_image(tmp_path / "wide.png", 40)
    assert a[0].max() == 0 and a[-1].max() == 0 and a[20, 20] == 200


@pytest.mark.parametrize("kind", ["16bit", "rgba", "cmyk", "gif", "tiff"])
def test_unusual_but_valid_formats_load(tmp_path, kind):
    s = _scan()
    f = tmp_path / f"x.{ {'16bit': 'png', 'rgba': 'png', 'cmyk': 'jpg', 'gif': 'gif', 'tiff': 'tif'}[kind]}"
    if kind == "16bit":
        Image.fromarray(s.astype(np.uint16) * 257).save(f)
        assert Image.open(f).mode.startswith("I")
    elif kind == "rgba":
        Image.fromarray(s).convert("RGBA").save(f)
    elif kind == "cmyk":
        Image.fromarray(s).convert("CMYK").save(f)
    else:  # multi-frame: frame 0 is the scan, frame 1 is blank; the first frame is used
        frames = [Image.fromarray(s), Image.fromarray(np.zeros_like(s))]
        frames[0].save(f, save_all=True, append_images=frames[1:])
        assert getattr(Image.open(f), "n_frames", 1) == 2
    a = load_image(f, 32)
    assert a.shape == (32, 32) and a.std() > 10  # the scan, not the blank frame


def test_bad_files_raise_one_line_image_errors(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    Image.fromarray(_scan()).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    side = int((MAX_PIXELS * 1.2) ** 0.5)
    Image.new("1", (side, side)).save(tmp_path / "huge.png")
    for name, words in (("zero.jpg", "empty"), ("text.jpg", "not an image"), ("trunc.jpg", "truncated"),
                        ("huge.png", "too large"), ("missing.jpg", "no such file")):
        with pytest.raises(ImageError, match=words) as e:
            load_image(tmp_path / name, 32)
        assert "\n" not in str(e.value)
