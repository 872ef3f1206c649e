import numpy as np
import pytest
from PIL import Image

from device.preprocess import MAX_PIXELS, ImageError, head_box, largest_region_box, load_image


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


def test_contract_v1_pads_a_non_square_image_instead_of_stretching(tmp_path):
    Image.fromarray(np.full((20, 40), 200, np.uint8)).save(tmp_path / "wide.png")
    a = load_image(tmp_path / "wide.png", 40, contract=1)
    assert a[0].max() == 0 and a[-1].max() == 0 and a[20, 20] == 200


def _head(w=120, h=150):
    """An elliptical 'head' with smooth internal structure, filling its own w x h frame."""
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 <= 1
    return np.where(inside, 90 + 100 * xx / w + 50 * yy / h, 0).astype(np.uint8)


def test_contract_v2_frames_the_head_whatever_the_canvas_text_or_noise(tmp_path):
    head = _head()
    Image.fromarray(np.pad(head, 8)).save(tmp_path / "tight.png")  # a scan framed closely around the head
    canvas = np.random.default_rng(0).integers(0, 6, (420, 700)).astype(np.uint8)  # dark noise
    canvas[200:350, 40:160] = head
    canvas[10:30, 500:680] = 255          # a burnt-in text line, far from the head
    canvas[400:405, 0:700] = 200          # a ruler along the bottom
    Image.fromarray(canvas).save(tmp_path / "framed.png")
    def framing(a):  # the head's share of the input and its centre (the box is found on a coarse thumbnail)
        yy, xx = np.nonzero(a > 40)
        return len(yy) / a.size, yy.mean(), xx.mean()

    tight, framed = (framing(load_image(tmp_path / n, 64)) for n in ("tight.png", "framed.png"))
    assert 0.65 < tight[0] < 0.85 and abs(framed[0] - tight[0]) < 0.08   # the head fills the input either way
    assert abs(framed[1] - tight[1]) < 2 and abs(framed[2] - tight[2]) < 2
    v1 = framing(load_image(tmp_path / "framed.png", 64, contract=1))
    assert v1[0] < 0.15                         # v1 kept the canvas (and the text and the ruler)


def test_contract_v3_gives_one_picture_whatever_the_intensity_curve(tmp_path):
    """A darker, flatter or gamma-bent copy of one scan (another window, scanner or source's look) is one model
    input under v3, and clearly not under v2; the black background stays black."""
    head = _head().astype(np.float64)
    curves = {"plain": head, "dark": head * 0.55, "gamma": 255 * (head / 255) ** 1.8,
              "flat": np.where(head > 0, 60 + head * 0.4, 0)}
    for name, a in curves.items():
        Image.fromarray(np.pad(np.round(a), 8).astype(np.uint8)).save(tmp_path / f"{name}.png")
    v2 = {n: load_image(tmp_path / f"{n}.png", 48, contract=2).astype(int) for n in curves}
    v3 = {n: load_image(tmp_path / f"{n}.png", 48, contract=3).astype(int) for n in curves}
    for n in ("dark", "gamma", "flat"):
        assert np.abs(v2[n] - v2["plain"]).mean() > 15, n
        assert np.abs(v3[n] - v3["plain"]).mean() < 3, (n, np.abs(v3[n] - v3["plain"]).mean())
    plain = v3["plain"]
    assert plain[0, 0] == 0 and plain[plain > 0].min() >= 1
    inside = plain[v2["plain"] > 60]   # equalised: the head's grey levels spread over the whole range
    assert abs(np.median(inside) - 127) < 20 and inside.max() - inside.min() > 200


def test_head_box_falls_back_to_the_whole_image_when_there_is_no_head():
    assert head_box(Image.new("L", (50, 40), 0)) is None
    assert head_box(Image.new("L", (1, 1), 128)) == (0, 0, 1, 1)
    speck = Image.new("L", (300, 300), 0)
    speck.putpixel((5, 5), 255)
    assert head_box(speck) is None     # a speck is not a head (below MIN_HEAD of the image)


def test_largest_region_is_8_connected_and_picks_the_biggest():
    m = np.zeros((10, 12), bool)
    m[1:3, 1:3] = True
    m[3, 3] = True                     # touches the first square only diagonally
    m[6:9, 6:11] = True                # 15 pixels: the biggest
    m[0, 11] = True
    assert largest_region_box(m) == (6, 6, 11, 9, 15)
    m[6:9, 6:11] = False
    assert largest_region_box(m) == (1, 1, 4, 4, 5)
    assert largest_region_box(np.zeros((4, 4), bool)) is None


@pytest.mark.parametrize("kind", ["16bit", "rgba", "cmyk", "apng"])
def test_unusual_but_valid_formats_load(tmp_path, kind):
    s = _scan()
    f = tmp_path / f"x.{ {'16bit': 'png', 'rgba': 'png', 'cmyk': 'jpg', 'apng': 'png'}[kind]}"
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


@pytest.mark.parametrize("ext, fmt", [(".tif", "TIFF"), (".gif", "GIF"), (".bmp", "BMP"), (".webp", "WEBP")])
def test_formats_outside_jpeg_png_dicom_are_refused_with_one_line(tmp_path, ext, fmt):
    """TIFF's tile and strip tables and BMP's run lengths had worst cases of their own (issue 40): only JPEG, PNG
    and DICOM are read, and the others are told to convert, not called 'not an image'; a TIFF renamed .png is not
    decoded either."""
    f = tmp_path / f"x{ext}"
    Image.fromarray(_scan()).save(f, fmt)
    with pytest.raises(ImageError, match="files are not read on this device .* convert it to PNG"):
        load_image(f, 32)
    disguised = tmp_path / "tiff_inside.png"
    Image.fromarray(_scan()).save(disguised, "TIFF")
    with pytest.raises(ImageError, match="not an image"):
        load_image(disguised, 32)


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
