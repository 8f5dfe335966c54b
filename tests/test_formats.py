"""Every supported image format reads to the same [0, 1] pixels the model sees."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from reportgen.data import SampleRef, load_sample, prepare, read_image, read_mask
from reportgen.spec import IMAGENET

RAMP = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 48 x 64, 0..252


def write_dicom(path: Path, stored: np.ndarray, slope: float, intercept: float,
                center: float | None = None, width: float | None = None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp"])
def test_8bit_formats_scale_by_255(tmp_path: Path, suffix: str):
    path = tmp_path / f"ramp{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, RAMP)
    else:
        cv2.imwrite(str(path), RAMP)
    values, _ = read_image(path)
    assert values.shape == (48, 64, 1)
    tolerance = 3 / 255 if suffix == ".jpg" else 1e-6
    assert np.abs(values[:, :, 0] - RAMP / 255.0).max() <= tolerance


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_images_scale_by_type_range_or_minmax(tmp_path: Path, suffix: str):
    image = (RAMP.astype(np.uint16) * 16 + 100)
    path = tmp_path / f"deep{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, image)
    else:
        cv2.imwrite(str(path), image)
    values, notes = read_image(path, "dtype")
    assert np.allclose(values[:, :, 0], image / 65535.0) and "1/65535" in notes[0]
    values, notes = read_image(path, "minmax")
    assert values.min() == 0 and values.max() == 1 and "min..max" in notes[0]


def test_dicom_applies_rescale_and_window(tmp_path: Path):
    stored = np.tile(np.arange(0, 2000, 25, dtype=np.uint16), (10, 1))  # 10 x 80
    path = tmp_path / "slice.dcm"
    # Hounsfield units = stored - 1000; window centre 40, width 400 -> [-160, 240] visible
    write_dicom(path, stored, slope=1.0, intercept=-1000.0, center=40.0, width=400.0)
    values, notes = read_image(path)
    hu = stored.astype(float) - 1000.0
    assert "DICOM: VOI window applied" in notes
    assert np.all(values[:, :, 0][hu <= -160] == 0) and np.all(values[:, :, 0][hu >= 240] == 1)
    inside = (hu > -150) & (hu < 230)
    expected = (hu[inside] - hu[inside].min()) / (hu[inside].max() - hu[inside].min())
    got = values[:, :, 0][inside]
    assert np.corrcoef(got, expected)[0, 1] > 0.999
    assert pydicom.dcmread(path).RescaleIntercept == -1000


def test_grayscale_is_replicated_to_the_model_channels():
    values = (RAMP / 255.0).astype(np.float32)[:, :, None]
    tensor, display = prepare(values, (32, 32), 3, IMAGENET)
    assert tensor.shape == (3, 32, 32) and display.shape == (32, 32, 3)
    unnormalised = tensor.numpy() * np.array(IMAGENET.std)[:, None, None] + np.array(
        IMAGENET.mean)[:, None, None]
    assert np.allclose(unnormalised[0], unnormalised[2], atol=1e-5)


def test_rgba_drops_alpha_and_masks_binarise(tmp_path: Path):
    rgba = np.dstack([RAMP, RAMP, RAMP, np.full_like(RAMP, 128)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    values, notes = read_image(tmp_path / "rgba.png")
    assert values.shape[2] == 3 and "alpha channel dropped" in notes
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 10:30] = 1
    cv2.imwrite(str(tmp_path / "m01.png"), mask)
    binary, notes = read_mask(tmp_path / "m01.png", (48, 64))
    assert binary.sum() == 200 and notes == []
    cv2.imwrite(str(tmp_path / "m255.png"), mask * 255)
    binary, _ = read_mask(tmp_path / "m255.png", (24, 32))
    assert binary.shape == (24, 32) and binary.sum() == 50


def test_image_squashed_to_the_model_input_says_so_and_at_what_size(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "wide.png"), RAMP)  # 64 wide x 48 high
    cv2.imwrite(str(tmp_path / "mask.png"), (RAMP > 128).astype(np.uint8) * 255)
    ref = SampleRef("wide", tmp_path / "wide.png", tmp_path / "mask.png")
    sample = load_sample(ref, (32, 32), 3, IMAGENET)
    resized = [note for note in sample.notes if note.startswith("image resized")]
    assert resized == ["image resized from 64x48 to 32x32, aspect ratio (width/height) 1.33 "
                       "to 1.00, changed by 33%: maps, Dice and all metrics are computed at "
                       "32x32"]
    assert ref.notes == sample.notes  # and so the manifest's
    kept = load_sample(ref, (24, 32), 3, IMAGENET)  # half size, same shape
    assert not [note for note in kept.notes if note.startswith("image resized")]
