"""Every supported image format reads to the same [0, 1] pixels the model sees."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image, ImageOps
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from reportgen.compute.data import (
    MAX_PIXELS,
    PNG_SIGNATURE,
    SampleRef,
    aspect_change,
    aspect_warning,
    check_inputs,
    load_sample,
    prepare,
    read_image,
    read_mask,
)
from reportgen.errors import DataError
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
    # and the report says so once, above the image pages
    changes = [aspect_change(sample.original_size, (32, 32)),
               aspect_change(kept.original_size, (24, 32))]
    assert aspect_warning(changes) == [
        "1 of 2 image(s) were resized to the model's input with a change of aspect ratio (up "
        "to 33%): their maps and metrics are computed on the stretched images (see each "
        "image's notes)"]
    assert aspect_warning([aspect_change((48, 64), (24, 32))]) == []


# ---------------------------------------------------------------- hostile and unusual files


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A greyscale PNG whose header claims width x height: a few kB of zlib'd zero rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = zlib.compressobj(9)
    pixels = b"".join(rows.compress(b"\0" * (width + 1)) for _ in range(64)) + rows.flush()
    path.write_bytes(PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                                0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def _ref(tmp_path: Path, name: str, mask: str | None = None) -> SampleRef:
    return SampleRef(Path(name).stem, tmp_path / name, tmp_path / mask if mask else None)


def test_decompression_bomb_is_refused_from_its_header_and_listed_as_excluded(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "good.png"), RAMP)
    _png_claiming(tmp_path / "bomb.png", 60000, 60000)  # 3.6 gigapixels in ~12 kB
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(DataError, match=r"bomb\.png: image of 60000x60000 pixels .*limit"):
        read_image(tmp_path / "bomb.png")
    usable, excluded = check_inputs([_ref(tmp_path, "good.png"), _ref(tmp_path, "bomb.png")],
                                    (32, 32), 3, IMAGENET, keep_going=True)
    assert [r.path.name for r in usable] == ["good.png"]
    assert [(r.path.name, "60000x60000" in why) for r, why in excluded] == [("bomb.png", True)]


def test_oversized_tiff_and_dicom_are_refused_before_their_pixels_are_decoded(tmp_path: Path):
    side = 9000  # 81 megapixels, just over MAX_PIXELS; written tile by tile, zlib'd
    assert side * side > MAX_PIXELS > 8000 * 8000
    tile = np.zeros((512, 512), np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", (tile for _ in range(18 * 18)), shape=(side, side),
                     dtype=np.uint8, tile=(512, 512), compression="zlib")
    with pytest.raises(DataError, match=r"big\.tif: image of 9000x9000 pixels"):
        read_image(tmp_path / "big.tif")
    write_dicom(tmp_path / "big.dcm", np.zeros((4, 4), np.uint16), 1.0, 0.0)
    ds = pydicom.dcmread(tmp_path / "big.dcm")
    ds.Rows = ds.Columns = 12000  # the header alone decides: the pixels are never read
    ds.save_as(tmp_path / "big.dcm")
    with pytest.raises(DataError, match=r"big\.dcm: image of 12000x12000 pixels"):
        read_image(tmp_path / "big.dcm")


def test_multi_page_tiff_is_refused_as_not_a_single_image(tmp_path: Path):
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([RAMP] * 5))
    with pytest.raises(DataError, match=r"stack\.tif: array of shape \(5, 48, 64\): not a "
                                        r"single 2-D image"):
        load_sample(_ref(tmp_path, "stack.tif"), (32, 32), 3, IMAGENET)
    rgb = np.dstack([RAMP, RAMP // 2, 255 - RAMP])  # one RGB page stored as 3 planes reads
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")
    values, _ = read_image(tmp_path / "planar.tif")
    assert np.array_equal(values, rgb / np.float32(255.0))


def test_dicom_with_zero_window_width_or_corrupt_jpeg2000_is_refused_naming_it(tmp_path: Path):
    write_dicom(tmp_path / "flat.dcm", RAMP.astype(np.uint16), 1.0, 0.0, center=40.0, width=0.0)
    with pytest.raises(DataError, match=r"flat\.dcm: not a readable DICOM image"):
        read_image(tmp_path / "flat.dcm")
    ds = pydicom.dcmread(tmp_path / "flat.dcm")
    del ds.WindowCenter, ds.WindowWidth
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
    ds.save_as(tmp_path / "broken.dcm")
    with pytest.raises(DataError, match=r"broken\.dcm: not a readable DICOM image"):
        read_image(tmp_path / "broken.dcm")


def _with_orientation(path: Path, array: np.ndarray, orientation: int) -> None:
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_show_the_image(tmp_path: Path, orientation):
    path = tmp_path / "oriented.png"
    _with_orientation(path, RAMP + np.arange(48, dtype=np.uint8)[:, None], orientation)
    values, notes = read_image(path)
    with Image.open(path) as shown:
        expected = np.asarray(ImageOps.exif_transpose(shown))
    assert np.array_equal(values[:, :, 0], expected / np.float32(255.0))
    assert (f"EXIF orientation {orientation} applied" in notes) == (orientation != 1)


def test_mask_drawn_on_a_rotated_photo_lines_up_with_the_rotated_image(tmp_path: Path):
    # a camera photo stored 64 wide x 48 high, shown rotated (Orientation 6): 48 x 64
    photo = np.zeros((48, 64, 3), np.uint8)
    photo[:, :16] = 255  # the stored left edge is the top as shown
    _with_orientation(tmp_path / "photo.jpg", photo, 6)
    shown = np.zeros((64, 48), np.uint8)
    shown[:16, :] = 255  # the annotator marked the bright band as the viewer shows it
    cv2.imwrite(str(tmp_path / "mask.png"), shown)
    sample = load_sample(_ref(tmp_path, "photo.jpg", "mask.png"), (64, 48), 3, IMAGENET)
    assert sample.original_size == (64, 48) and "EXIF orientation 6 applied" in sample.notes
    bright = sample.display[:, :, 0] > 128
    assert sample.gt_mask is not None and np.array_equal(bright, sample.gt_mask)
    _with_orientation(tmp_path / "rotated_mask.png", np.rot90(shown, -1).copy(), 8)
    mask, notes = read_mask(tmp_path / "rotated_mask.png", (64, 48))
    assert np.array_equal(mask, shown > 0)
    assert notes == ["mask rotated_mask.png: EXIF orientation 8 applied"]


LABELS = np.zeros((48, 64), np.uint8)
LABELS[5:20, 5:25], LABELS[25:40, 30:60] = 1, 2  # background 0, class 1, class 2


def test_label_map_mask_gives_the_target_class_only(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "labels.png"), LABELS)
    binary, notes = read_mask(tmp_path / "labels.png", (48, 64))  # default: binary masks
    assert np.array_equal(binary, LABELS > 0) and "binarised at half maximum" in notes[0]
    target, notes = read_mask(tmp_path / "labels.png", (48, 64), mask_label=2, mask_classes=3)
    assert np.array_equal(target, LABELS == 2)
    assert notes == ["mask labels.png: label map, ground truth where the label is 2"]
    half, _ = read_mask(tmp_path / "labels.png", (24, 32), mask_label=1, mask_classes=3)
    nearest = cv2.resize(LABELS, (32, 24), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(half, nearest == 1)  # never an interpolated (blended) label
    tifffile.imwrite(tmp_path / "labels16.tif", LABELS.astype(np.uint16) * 300)
    sample = load_sample(_ref(tmp_path, "labels.png", "labels16.tif"), (48, 64), 3, IMAGENET,
                         mask_label=600)
    assert sample.gt_mask is not None and np.array_equal(sample.gt_mask, LABELS == 2)


def test_palette_label_map_is_read_as_its_class_indices(tmp_path: Path):
    palette = Image.fromarray(LABELS, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])  # class 1 red, class 2 green
    palette.save(tmp_path / "voc.png")
    target, _ = read_mask(tmp_path / "voc.png", (48, 64), mask_label=1, mask_classes=3)
    assert np.array_equal(target, LABELS == 1)


def test_label_map_with_a_class_beyond_the_model_or_non_integer_values_is_refused(
        tmp_path: Path):
    cv2.imwrite(str(tmp_path / "m255.png"), (LABELS > 0).astype(np.uint8) * 255)
    with pytest.raises(DataError, match=r"m255\.png: label map holds the value 255 .* 3 "
                       r"classes.*set data\.mask_values: binary if the masks mark only"):
        read_mask(tmp_path / "m255.png", (48, 64), mask_label=2, mask_classes=3)
    tifffile.imwrite(tmp_path / "soft.tif", LABELS.astype(np.float32) / 2)
    with pytest.raises(DataError, match=r"soft\.tif: .*integer class indices"):
        read_mask(tmp_path / "soft.tif", (48, 64), mask_label=1, mask_classes=3)
    cv2.imwrite(str(tmp_path / "image.png"), RAMP)
    refs = [_ref(tmp_path, "image.png", "m255.png")]
    with pytest.raises(DataError, match=r"1 of 1 input\(s\) cannot be used"):
        check_inputs(refs, (48, 64), 3, IMAGENET, mask_label=2, mask_classes=3)


def test_a_dicom_without_a_suffix_is_read_as_dicom(tmp_path: Path):
    stored = np.tile(np.arange(0, 2000, 25, dtype=np.uint16), (10, 1))
    write_dicom(tmp_path / "IM0001", stored, slope=1.0, intercept=-1000.0)
    values, notes = read_image(tmp_path / "IM0001")
    assert "DICOM: modality rescale applied" in notes and values.shape == (10, 80, 1)


def test_binary_masks_of_a_multi_class_model_are_not_taken_for_class_1(tmp_path: Path):
    """0/1 masks read as label maps mark class 1: for target class 2 that is an empty
    ground truth everywhere, which must not pass silently."""
    cv2.imwrite(str(tmp_path / "image.png"), RAMP)
    cv2.imwrite(str(tmp_path / "m01.png"), (LABELS > 0).astype(np.uint8))
    refs = [_ref(tmp_path, "image.png", "m01.png")]
    with pytest.raises(DataError, match=r"no mask holds the target class's label 2.*set "
                                        r"data\.mask_values: binary"):
        check_inputs(refs, (48, 64), 3, IMAGENET, mask_label=2, mask_classes=3)
    usable, _ = check_inputs(refs, (48, 64), 3, IMAGENET, mask_label=1, mask_classes=3)
    assert len(usable) == 1


def test_a_colour_mask_of_a_multi_class_model_names_the_binary_setting(tmp_path: Path):
    red = np.zeros((48, 64, 3), np.uint8)
    red[LABELS > 0] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "red.png"), red)
    with pytest.raises(DataError, match=r"not 3 channels; set data\.mask_values: binary"):
        read_mask(tmp_path / "red.png", (48, 64), mask_label=1, mask_classes=3)
