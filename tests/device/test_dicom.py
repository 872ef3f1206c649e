"""DICOM input: the real MR files bundled with pydicom, and hand-made edge cases, through the loader, the CLI and
the API."""
import json
import shutil

import numpy as np
import pytest

from tests.device.conftest import classify

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage, generate_uid  # noqa: E402

from device.preprocess import ImageError, load_image, load_scan  # noqa: E402


def bundled(name):
    return get_testdata_file(name, download=False)  # other names make pydicom try a download


def make_dicom(path, pixels, photometric="MONOCHROME2", window=None, rescale=None, syntax=ExplicitVRLittleEndian):
    """A minimal MR image file: pixels (H, W) or (frames, H, W), int16 or uint16."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    raw = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.PixelData = encapsulate([raw]) if syntax.is_compressed else raw  # (a compressed file is refused unread)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(h=40, w=60, dtype=np.uint16):
    return (np.arange(h * w).reshape(h, w) % 1000).astype(dtype)


def test_bundled_mr_files_load_in_both_byte_orders():
    little, notes = load_scan(bundled("MR_small.dcm"), 32)
    big = load_image(bundled("MR_small_bigendian.dcm"), 32)
    assert little.shape == (32, 32) and little.dtype == np.uint8 and little.std() > 20 and notes == []
    assert np.array_equal(little, big)  # same scan, other byte order


def test_window_rescale_and_monochrome1(tmp_path):
    px = ramp(40, 40)  # square, framed by v1 (no head crop): only the pixel values are compared
    plain = load_image(make_dicom(tmp_path / "a.dcm", px, window=(500, 1000)), 40, contract=1)
    inverted = load_image(make_dicom(tmp_path / "b.dcm", px, photometric="MONOCHROME1", window=(500, 1000)), 40,
                          contract=1)
    assert np.array_equal(plain, 255 - inverted)  # MONOCHROME1: low values are white
    # slope 2 / intercept -1000 with the window moved to match gives the same picture as no rescale
    rescaled = load_image(make_dicom(tmp_path / "c.dcm", px, window=(0, 2000), rescale=(2, -1000)), 40, contract=1)
    assert np.abs(rescaled.astype(int) - plain.astype(int)).max() <= 1
    # a narrow window saturates: everything above it is white
    narrow = load_image(make_dicom(tmp_path / "d.dcm", px, window=(100, 50)), 40, contract=1)
    assert (narrow == 255).mean() > 0.5


def test_signed_16_bit_without_window_tags_uses_a_robust_window(tmp_path):
    px = ramp(dtype=np.int16) - 500
    px[0, 0] = 32767  # one hot pixel must not squash the rest to black
    a = load_image(make_dicom(tmp_path / "s.dcm", px), 64)
    assert a.std() > 40


def test_multi_frame_takes_the_middle_frame_and_says_so(tmp_path):
    frames = np.stack([np.full((30, 30), v, np.uint16) for v in (0, 0, 900, 0)])
    frames[2, :15] = 100
    a, notes = load_scan(make_dicom(tmp_path / "m.dcm", frames), 30, contract=2)  # (the window, unstandardised)
    assert a.max() == 255 and a.min() == 0  # frame 2 of 0..3: the only one with structure
    assert notes == ["multi-frame DICOM: frame 3 of 4 (the middle one) classified"]


def test_compressed_and_broken_dicom_are_one_line(tmp_path):
    with pytest.raises(ImageError, match="compressed DICOM .*needs a codec") as e:
        load_image(make_dicom(tmp_path / "j.dcm", ramp(), syntax=JPEG2000Lossless), 32)
    assert "\n" not in str(e.value)
    (tmp_path / "cut.dcm").write_bytes(make_dicom(tmp_path / "ok.dcm", ramp()).read_bytes()[:400])
    with pytest.raises(ImageError, match="DICOM") as e:
        load_image(tmp_path / "cut.dcm", 32)
    assert "\n" not in str(e.value)


def test_cli_reads_dcm_files_and_extensionless_dicom_in_folders(model, tmp_path):
    d = tmp_path / "series"
    d.mkdir()
    shutil.copy(bundled("MR_small.dcm"), d / "IM0001")       # as scanners write them: no extension
    make_dicom(d / "multi.dcm", np.stack([ramp(), ramp() * 0, ramp()]))
    (d / "README").write_text("not a scan, no extension")
    code, out, err = classify("--model", model, "--json", d)
    rows = {r["path"].rsplit("/", 1)[1]: r for r in map(json.loads, out.splitlines())}
    assert code == 0 and set(rows) == {"IM0001", "multi.dcm"}, (out, err)
    assert rows["multi.dcm"]["note"].startswith("multi-frame DICOM: frame 2 of 3")
    assert "note" not in rows["IM0001"]


def test_api_classifies_a_dicom_file(model):
    from device.runtime import Classifier, ClassifierOptions

    preds = Classifier(model, ClassifierOptions(top_k=4)).classify(bundled("MR_small.dcm"))
    assert len(preds) == 4 and abs(sum(p.probability for p in preds) - 1) < 0.02
