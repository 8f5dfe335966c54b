"""Data stage: read images and masks of every common medical format, prepare tensors.

Rules (recorded per image in `Sample.notes`, and so in the manifest):
- 8-bit images are scaled by 1/255; 16-bit by 1/65535 (`data.intensity: dtype`) or by
  their own min..max (`minmax`). DICOM pixel data get the file's rescale slope and
  intercept, then its VOI window (centre/width or LUT), then min..max of the window.
- Grayscale is replicated to the model's input channels; an alpha channel is dropped;
  palette images are expanded to RGB; CMYK TIFFs are converted to RGB. An animated PNG or
  GIF gives its first frame, and says so.
- Images and masks are resized to the model's input size (images bilinear, masks
  nearest); an image whose aspect ratio this changes says so, since every map and
  metric is then computed on the stretched image. A mask is foreground where > 0 when
  its values are {0, 1} or {0, 255}; any other values are binarised at half their
  maximum. A colour mask is foreground where any channel is; a mask of one colour whose
  alpha channel holds the shape is read from its alpha. A mask whose aspect ratio
  differs from its image's is refused (it cannot be the same field of view); one of
  another size but the same aspect ratio is resized like the image.
- Zero-byte, truncated and undecodable files (a non-image with an image extension)
  are refused with the file named; so are non-finite pixels, images over `MAX_PIXELS`
  (measured from the file's header, before any pixel is decoded) and stacks (a
  multi-page TIFF, a multi-frame DICOM): a page is one [H, W] or [H, W, C] image. So are,
  from the header before the file is read, a raster file far larger than its pixels can
  need (a padded tail) and an image beyond the sizes OpenCV decodes.
- An EXIF (or TIFF) orientation tag is applied to images and masks as viewers apply
  it, so a mask drawn on the image as shown lines up with the pixels the model sees.
- A mask given with `mask_label=k` is a label map of class indices: the ground truth
  is where it equals k (compared before resizing, so labels are never interpolated).

`check_inputs` reads every image and mask once before a build computes anything, so a
bad file found late never costs a half build: by default it refuses them all at once;
with keep-going it sets them aside as excluded inputs, each with its reason.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin

from reportgen.compute.discovery import find_images, mask_for
from reportgen.errors import DataError
from reportgen.spec import DataSection, Normalization

DICOM_SUFFIXES = (".dcm", ".dicom")
TIFF_SUFFIXES = (".tif", ".tiff")
# The largest image read, in pixels: 8192 x 8192 (64 megapixels). The largest medical
# images in scope (mammograms, about 4000 x 5000; full-field radiographs) fit with room
# to spare; the model sees about 640 x 640. Above it a float copy of an RGB image takes
# gigabytes, and a file of a few kilobytes can claim billions of pixels (a decompression
# bomb). Whole-slide images are out of scope.
MAX_SIDE = 8192
MAX_PIXELS = MAX_SIDE * MAX_SIDE
EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the array operation that shows the image as viewers do (the
# transposes of Pillow's `ImageOps.exif_transpose`); 1 (and anything unknown) is as stored.
ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@dataclass
class Sample:
    """One prepared image: model input, what reviewers see, and its ground truth."""

    id: str  # file-name-safe identifier, unique in the report
    path: Path
    tensor: torch.Tensor  # [C, H, W] normalised model input
    display: np.ndarray  # [H, W, 3] uint8 RGB at the model's input size
    original_size: tuple[int, int]
    mask_path: Path | None = None
    gt_mask: np.ndarray | None = None  # [H, W] bool at the model's input size
    notes: list[str] = field(default_factory=list)


def _check_single_image(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse any shape but [H, W] or [H, W, C] with C in 1..4, and more than `MAX_PIXELS`.

    Called on the header's shape before decoding where the format allows, so a stack or
    a decompression bomb costs no memory, and on the decoded array, so that nothing but
    a single 2-D image reaches the resize in `prepare`.
    """
    if (len(shape) == 3 and not 1 <= shape[2] <= 4) or len(shape) > 3:
        # [N, H, W], [N, H, W, C] or [H, W, C > 4]: which, the shape alone cannot say
        raise DataError(f"{path}: array of shape {tuple(shape)}: not a single 2-D image of at "
                        "most 4 channels (a stack of pages or frames, or more channels)")
    if len(shape) < 2:
        raise DataError(f"{path}: array of shape {tuple(shape)}: not a 2-D image")
    height, width = shape[0], shape[1]
    if height * width > MAX_PIXELS:
        raise DataError(f"{path}: image of {width}x{height} pixels ({height * width / 1e6:.1f} "
                        f"megapixels) is larger than the limit of {MAX_SIDE}x{MAX_SIDE} "
                        f"({MAX_PIXELS / 1e6:.1f} megapixels); downsample it first")


def _read_dicom(path: Path) -> tuple[np.ndarray, list[str]]:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    notes = ["DICOM: modality rescale applied"]
    try:
        ds = pydicom.dcmread(path)
        frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
        shape = (int(ds.Rows), int(ds.Columns)) + ((samples,) if samples > 1 else ())
        _check_single_image(path, (frames, *shape) if frames > 1 else shape)
        values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, index=0)
            notes.append("DICOM: VOI window applied")
    except DataError:
        raise
    except Exception as exc:  # pydicom and its decoder plugins (JPEG 2000, RLE, ...) raise
        # anything for corrupt pixel data or tags (a window width of 0 is a ValueError)
        raise DataError(f"{path}: not a readable DICOM image ({exc})") from exc
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 1.0 - scaled
        notes.append("DICOM: MONOCHROME1 inverted")
    return scaled.astype(np.float32), notes


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PALETTE = 3  # IHDR colour type of an indexed-colour PNG
# Signature -> Pillow's header parser for the raster formats the spec accepts. The
# parsers are called directly because `Image.open` refuses large images with its own
# error (above 179 megapixels), which does not say the image's size.
HEADER_PARSERS = {
    PNG_SIGNATURE: PngImagePlugin.PngImageFile,
    b"\xff\xd8\xff": JpegImagePlugin.JpegImageFile,
    b"BM": BmpImagePlugin.BmpImageFile,
}
UNREADABLE = "not a readable image (truncated, or not the format its extension says)"


def _apply_orientation(image: np.ndarray, orientation: int,
                       notes: list[str]) -> np.ndarray:
    """The image as viewers show it (EXIF orientation applied), noted when it changes."""
    if orientation not in ORIENTATIONS:
        return image
    notes.append(f"EXIF orientation {orientation} applied")
    return np.ascontiguousarray(ORIENTATIONS[orientation](image))


def _raster_header(path: Path, signature: bytes) -> tuple[tuple[int, int], int, str | None]:
    """([H, W], EXIF orientation, the note of an animation) from the file's header, without
    decoding pixels; OpenCV reads an animation's first frame only."""
    parser = next((p for s, p in HEADER_PARSERS.items() if signature.startswith(s)), None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = parser(path) if parser is not None else Image.open(path)
        with image:
            # only an EXIF block met before the pixels: to find a PNG's eXIf chunk after
            # them, Pillow would decode the whole image
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1) if (
                "exif" in image.info) else 1
            frames = getattr(image, "n_frames", 1)  # read from the header (a PNG's acTL)
            animated = (f"animated {image.format}: {frames} frames, only the first is read"
                        if frames > 1 else None)
            return (image.height, image.width), int(orientation), animated
    except Image.DecompressionBombError as exc:  # a format without a parser above
        raise DataError(f"{path}: image too large ({exc})") from exc
    except Exception as exc:  # Pillow raises SyntaxError, OSError, struct.error, ...
        raise DataError(f"{path}: {UNREADABLE}") from exc


def _read_tiff(path: Path) -> tuple[np.ndarray, list[str]]:
    """The TIFF's first series, checked (pages, size) from its header before decoding."""
    import tifffile

    notes: list[str] = []
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            planar = series.axes.endswith("SYX")  # samples stored as planes: [.., C, H, W]
            shape = tuple(series.shape)
            _check_single_image(path, shape[:-3] + shape[-2:] + shape[-3:-2] if planar else shape)
            image = series.asarray()
            page = tiff.pages[0]
            tag = page.tags.get("Orientation")
            inks = page.tags.get("InkSet")  # 1 (or none): CMYK; 2: other inks, named
            separated = page.photometric == tifffile.PHOTOMETRIC.SEPARATED
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise DataError(f"{path}: not a readable TIFF image ({exc})") from exc
    if planar:
        image = np.moveaxis(image, -3, -1)
    if separated:  # ink coverages: read as RGB(A) they would show the negative colours
        if (inks and inks.value != 1) or image.ndim != 3 or image.shape[2] != 4:
            raise DataError(f"{path}: a TIFF of ink separations other than CMYK (shape "
                            f"{image.shape}): not convertible to RGB; save it as RGB")
        image = _cmyk_to_rgb(image)
        notes.append("CMYK: converted to RGB (R = (1 - C)(1 - K), likewise G and B)")
    return _apply_orientation(image, int(tag.value) if tag else 1, notes), notes


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """RGB of CMYK ink coverages, in their own type: R = (1 - C)(1 - K), G = (1 - M)(1 - K),
    B = (1 - Y)(1 - K), the conversion without a colour profile (Pillow's and libjpeg's)."""
    top = np.iinfo(cmyk.dtype).max if np.issubdtype(cmyk.dtype, np.integer) else 1.0
    ink = cmyk.astype(np.float64) / top
    rgb = (1.0 - ink[:, :, :3]) * (1.0 - ink[:, :, 3:]) * top
    return (np.rint(rgb) if np.issubdtype(cmyk.dtype, np.integer) else rgb).astype(cmyk.dtype)


# The most bytes an image of H x W pixels needs in a raster file: 16-bit RGBA (8 bytes a
# pixel) stored uncompressed with a PNG's filter byte a row, twice over for formats'
# overheads, plus room for metadata (ICC profiles, EXIF thumbnails, text). A file far
# beyond it holds something else (a tail of padding), and is not read into memory.
METADATA_ALLOWANCE = 64 * 2**20


def _check_file_size(path: Path, size: tuple[int, int]) -> None:
    height, width = size
    most = 2 * height * (8 * width + 1) + METADATA_ALLOWANCE
    actual = path.stat().st_size
    if actual > most:
        raise DataError(f"{path}: file of {actual / 1e9:.1f} GB, but a {width}x{height} image "
                        f"needs at most {most / 1e6:.0f} MB even uncompressed: the rest is not "
                        "image data (padding, or a damaged file), so it is not read; re-save "
                        "the image")


# What OpenCV decodes: its CV_IO_MAX_IMAGE_* settings (environment variables, these
# defaults), and for a PNG libpng's own limit of 1,000,000 pixels a side. Beyond them
# libpng prints errors to stderr and OpenCV returns nothing, as for a truncated file.
OPENCV_LIMITS = (("CV_IO_MAX_IMAGE_WIDTH", 1 << 20), ("CV_IO_MAX_IMAGE_HEIGHT", 1 << 20),
                 ("CV_IO_MAX_IMAGE_PIXELS", 1 << 30))
PNG_MAX_SIDE = 1_000_000


def _check_decoder_limits(path: Path, size: tuple[int, int], png: bool) -> None:
    height, width = size
    most_wide, most_high, most_pixels = (
        int(os.environ[name]) if os.environ.get(name, "").isdigit() else default
        for name, default in OPENCV_LIMITS)
    side = PNG_MAX_SIDE if png else max(most_wide, most_high)
    if max(width, height) > side or width > most_wide or height > most_high or (
            width * height > most_pixels):
        raise DataError(
            f"{path}: image of {width}x{height} pixels ({width * height} in all) is beyond "
            f"what OpenCV reads: at most {most_wide} wide (CV_IO_MAX_IMAGE_WIDTH), {most_high} "
            f"high (CV_IO_MAX_IMAGE_HEIGHT) and {most_pixels} pixels (CV_IO_MAX_IMAGE_PIXELS)"
            + (f", and a PNG {PNG_MAX_SIDE} a side (libpng's limit)" if png else "")
            + "; crop or tile it")


def _read_raster(path: Path, palette_indices: bool = False) -> tuple[np.ndarray, list[str]]:
    """Pixels as stored (RGB order, EXIF orientation applied), after a header check.

    With `palette_indices`, a palette PNG gives its indices (a label map) instead of
    the colours they stand for.
    """
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _read_tiff(path)
    with path.open("rb") as file:
        start = file.read(26)  # the signature, and a PNG's IHDR up to its colour type
    if not start:
        raise DataError(f"{path}: empty file (0 bytes)")
    size, orientation, animated = _raster_header(path, start[:8])
    _check_single_image(path, size)
    _check_file_size(path, size)  # before the whole file is read into memory
    _check_decoder_limits(path, size, start.startswith(PNG_SIGNATURE))
    raw = np.fromfile(path, dtype=np.uint8)
    palette = start.startswith(PNG_SIGNATURE) and len(start) > 25 and start[25] == PNG_PALETTE
    try:
        if palette and palette_indices:
            with Image.open(path) as indexed:
                image = np.asarray(indexed)
        else:
            image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    except (cv2.error, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: {UNREADABLE} ({exc})") from exc
    if image is None:
        raise DataError(f"{path}: {UNREADABLE}")
    notes = [animated] if animated else []
    if palette and not palette_indices:
        notes.append("palette (indexed colour): expanded to RGB")
    if image.ndim == 3 and image.shape[2] >= 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4
                             else cv2.COLOR_BGR2RGB)
    return _apply_orientation(image, orientation, notes), notes


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")


def is_dicom(path: Path) -> bool:
    """A DICOM file: by its suffix, or by the "DICM" tag at byte 128 (DICOM files often
    have no suffix at all, e.g. IM0001)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as file:
        return file.read(132)[128:] == b"DICM"


def _read_values(path: Path, intensity: str) -> tuple[np.ndarray, list[str]]:
    """An image as float32 [H, W, C] in [0, 1] with every channel it has (alpha too), and
    its conversion notes."""
    _check_file(path)
    if is_dicom(path):
        values, notes = _read_dicom(path)
    else:
        image, notes = _read_raster(path)
        if image.dtype == np.uint8:
            values = image.astype(np.float32) / 255.0
        elif image.dtype == np.uint16:
            if intensity == "minmax":
                lo, hi = float(image.min()), float(image.max())
                values = ((image - lo) / (hi - lo) if hi > lo else image * 0.0).astype(np.float32)
                notes.append("16-bit: scaled by its own min..max")
            else:
                values = image.astype(np.float32) / 65535.0
                notes.append("16-bit: scaled by 1/65535")
        elif np.issubdtype(image.dtype, np.floating):
            lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
            values = ((image - lo) / (hi - lo) if hi > lo else image * 0.0).astype(np.float32)
            notes.append("floating-point pixels: scaled by min..max")
        else:
            raise DataError(f"{path}: unsupported pixel type {image.dtype}")
    _check_single_image(path, values.shape)
    if not np.isfinite(values).all():
        raise DataError(f"{path}: image holds non-finite pixel values")
    return (values[:, :, None] if values.ndim == 2 else values), notes


def read_image(path: Path, intensity: str = "dtype") -> tuple[np.ndarray, list[str]]:
    """Read an image as float32 [H, W, C] in [0, 1] (C = 1 or 3), with conversion notes."""
    values, notes = _read_values(path, intensity)
    if values.shape[2] == 4:
        values = values[:, :, :3]
        notes.append("alpha channel dropped")
    elif values.shape[2] == 2:
        values = values[:, :, :1]
        notes.append("gray+alpha: alpha dropped")
    return values, notes


ASPECT_TOLERANCE = 0.01  # relative; rounding when a mask was saved at another scale


LABEL_MAP_HINT = "set data.mask_values: binary if the masks mark only the target class"
WITHOUT_TARGET = "label map without the target's label"


def _read_label_map(path: Path, mask_classes: int | None) -> tuple[np.ndarray, list[str]]:
    """A label-map mask as its integer class indices [H, W], each checked below `mask_classes`.

    Read without any scaling (a palette PNG gives its indices), since a class index
    scaled to [0, 1] or expanded to a colour no longer says which class it is.
    """
    _check_file(path)
    if is_dicom(path):
        raise DataError(f"{path}: a label-map mask must be an 8- or 16-bit PNG, TIFF or BMP "
                        "of class indices; DICOM pixels are rescaled and windowed")
    labels, notes = _read_raster(path, palette_indices=True)
    _check_single_image(path, labels.shape)
    if labels.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: a label-map mask must hold integer class indices (8- or "
                        f"16-bit), not {labels.dtype} pixels")
    if labels.ndim == 3:
        colour = labels[:, :, :3] if labels.shape[2] >= 3 else labels[:, :, :1]
        if (colour != colour[:, :, :1]).any():
            raise DataError(f"{path}: a label-map mask must have one channel of class "
                            f"indices (greyscale or palette), not {labels.shape[2]} channels; "
                            f"{LABEL_MAP_HINT}")
        labels = colour[:, :, 0]
    if mask_classes is not None and int(labels.max()) >= mask_classes:
        raise DataError(f"{path}: label map holds the value {int(labels.max())} but the model "
                        f"has {mask_classes} classes (0..{mask_classes - 1}); {LABEL_MAP_HINT}")
    return labels, notes


def read_mask(path: Path, size: tuple[int, int], image_size: tuple[int, int] | None = None,
              *, mask_label: int | None = None,
              mask_classes: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a ground-truth mask as bool [H, W] at `size` (nearest), binarised by the rule above.

    `image_size` is its image's [H, W]: a mask of another aspect ratio is refused, since
    stretching it would mark the wrong pixels as ground truth. With `mask_label` k the
    mask is a label map of class indices (at most `mask_classes` of them, when given)
    and the ground truth is `mask == k`. It is compared before it is resized, and the
    boolean resized nearest like a binary mask; nearest-neighbour picks source pixels,
    so this equals comparing a nearest-resized label map, and no label is interpolated.
    """
    if mask_label is None:
        values, read_notes = _read_values(path, "dtype")  # alpha kept: it may hold the mask
    else:
        if mask_label < 0 or (mask_classes is not None and mask_label >= mask_classes):
            raise ValueError(f"mask_label {mask_label} is not one of {mask_classes} classes")
        labels, read_notes = _read_label_map(path, mask_classes)
        values = labels[:, :, None]
    # the intensity notes are moot for a mask; its orientation and frames are not
    notes = [f"mask {path.name}: {note}" for note in read_notes
             if note.startswith(("EXIF", "animated"))]
    if image_size is not None and values.shape[:2] != image_size:
        (mh, mw), (ih, iw) = values.shape[:2], image_size
        if abs(mw / mh - iw / ih) > ASPECT_TOLERANCE * (iw / ih):
            raise DataError(f"{path}: mask is {mw}x{mh} but its image is {iw}x{ih}; a mask "
                            "must have its image's size or at least its aspect ratio")
        notes.append(f"mask {path.name}: {mw}x{mh}, its image {iw}x{ih}: resized")
    if mask_label is not None:
        binary = values[:, :, 0] == mask_label
        notes.append(f"mask {path.name}: label map, ground truth where the label is {mask_label}")
        others = sorted(int(v) for v in np.unique(values) if v not in (0, mask_label))
        if others and not binary.any():
            notes.append(f"mask {path.name}: {WITHOUT_TARGET} {mask_label} (labels present: "
                         f"{', '.join(map(str, others))})")
        return _resize_mask(binary, size, path, notes)
    gray = _mask_plane(values, path.name, notes)
    levels = np.unique(gray)
    allowed = np.array([0.0, 1.0 / 255.0, 1.0 / 65535.0, 1.0])
    if np.all(np.abs(levels[:, None] - allowed[None, :]).min(axis=1) < 1e-6):
        binary = gray > 0
    else:
        binary = gray >= gray.max() / 2.0
        notes.append(f"mask {path.name}: {len(levels)} grey levels, binarised at half maximum")
    return _resize_mask(binary, size, path, notes)


def _mask_plane(values: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """The [H, W] plane a binary mask [H, W, C] is drawn in: its colour (any channel), or its
    alpha channel when the colour is the same everywhere and the alpha is not (a shape
    drawn as transparency, which the colour alone would read as an empty mask)."""
    colour, alpha = values, None
    if values.shape[2] in (2, 4):  # gray+alpha, RGBA
        colour, alpha = values[:, :, :-1], values[:, :, -1]
    if alpha is not None and np.ptp(alpha) > 0:
        if np.ptp(colour) == 0:
            notes.append(f"mask {name}: one colour everywhere, the shape in its alpha channel: "
                         "the alpha channel used")
            return alpha
        notes.append(f"mask {name}: its alpha channel varies but was ignored: the colour "
                     "channels hold the mask")
    if colour.shape[2] > 1:
        notes.append(f"mask {name}: colour mask, foreground where any channel is set")
    return colour.max(axis=2)


def _resize_mask(binary: np.ndarray, size: tuple[int, int], path: Path,
                 notes: list[str]) -> tuple[np.ndarray, list[str]]:
    """The bool mask at `size`, nearest-neighbour (a mask pixel is never blended)."""
    if binary.shape != size:
        notes.append(f"mask {path.name}: resized from {binary.shape[1]}x{binary.shape[0]}")
        binary = cv2.resize(binary.astype(np.uint8), (size[1], size[0]),
                            interpolation=cv2.INTER_NEAREST).astype(bool)
    return binary, notes


def aspect_change(original: tuple[int, int], size: tuple[int, int]) -> float:
    """How much resizing from `original` to `size` (both [H, W]) stretches one axis
    against the other: the larger width/height ratio over the smaller, minus 1."""
    before, after = original[1] / original[0], size[1] / size[0]
    return max(before, after) / min(before, after) - 1.0


def aspect_change_note(original: tuple[int, int], size: tuple[int, int]) -> str | None:
    """The note of an image resized from `original` to `size` (both [H, W]) that changes
    its aspect ratio, or None when the shape is kept (within `ASPECT_TOLERANCE`)."""
    change = aspect_change(original, size)
    if change <= ASPECT_TOLERANCE:
        return None
    (height, width), (new_height, new_width) = original, size
    before, after = width / height, new_width / new_height
    return (f"image resized from {width}x{height} to {new_width}x{new_height}, aspect ratio "
            f"(width/height) {before:.2f} to {after:.2f}, changed by {change:.0%}: maps, Dice "
            f"and all metrics are computed at {new_width}x{new_height}")


def aspect_warning(changes: Sequence[float]) -> list[str]:
    """The report's warning (or none) for images whose aspect ratio resizing changed;
    `changes` has one `aspect_change` per image."""
    stretched = [change for change in changes if change > ASPECT_TOLERANCE]
    if not stretched:
        return []
    return [f"{len(stretched)} of {len(changes)} image(s) were resized to the model's input "
            f"with a change of aspect ratio (up to {max(stretched):.0%}): their maps and "
            "metrics are computed on the stretched images (see each image's notes)"]


def prepare(
    values: np.ndarray, size: tuple[int, int], in_channels: int, norm: Normalization | None
) -> tuple[torch.Tensor, np.ndarray]:
    """Resize to `size`, replicate gray to the input channels, normalise.

    Returns the model input [C, H, W] float32 and the display image [H, W, 3] uint8.
    """
    h, w = size
    resized = cv2.resize(values, (w, h), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    channels = resized.shape[2]
    if channels == 1:
        model_in = np.repeat(resized, in_channels, axis=2)
        display = np.repeat(resized, 3, axis=2)
    elif channels == in_channels:
        model_in, display = resized, resized[:, :, :3]
    elif in_channels == 1:
        model_in = resized.mean(axis=2, keepdims=True)
        display = resized[:, :, :3]
    else:
        raise DataError(f"image has {channels} channels but the model expects {in_channels}")
    model_in = model_in.astype(np.float32)
    if norm is not None:
        mean = np.asarray(norm.mean, dtype=np.float32)
        std = np.asarray(norm.std, dtype=np.float32)
        if len(mean) != model_in.shape[2]:
            raise DataError(f"normalize has {len(mean)} values for {model_in.shape[2]} channels")
        model_in = (model_in - mean) / std
    tensor = torch.from_numpy(np.ascontiguousarray(model_in.transpose(2, 0, 1)))
    display_u8 = np.clip(np.rint(display * 255.0), 0, 255).astype(np.uint8)
    return tensor, display_u8


def safe_id(stem: str, taken: set[str]) -> str:
    """A file-name-safe, unique page id for an image stem."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


@dataclass
class SampleRef:
    """An image the spec names, before it is read: enough to plan pages and the manifest."""

    id: str
    path: Path
    mask_path: Path | None
    notes: list[str] = field(default_factory=list)  # filled in when the image is read


def sample_refs(data: DataSection, outputs: Sequence[Path | None] = ()) -> list[SampleRef]:
    """Every image (and its mask) the spec names, in the spec's stable order, with page ids;
    `outputs` are `find_images`' (the folders builds write, never searched for inputs)."""
    taken: set[str] = set()
    return [SampleRef(safe_id(p.stem, taken), p, mask_for(data, p))
            for p in find_images(data, outputs)]


def load_sample(ref: SampleRef, size: tuple[int, int], in_channels: int,
                norm: Normalization | None, intensity: str = "dtype", *,
                mask_label: int | None = None, mask_classes: int | None = None) -> Sample:
    """Read and prepare one image and its mask; the conversion notes go to `ref.notes` too.

    `mask_label` and `mask_classes` are `read_mask`'s: None reads binary masks.
    """
    values, notes = read_image(ref.path, intensity)
    channels = values.shape[2]
    if channels == 1 and in_channels > 1:
        notes.append(f"grayscale: replicated to {in_channels} channels")
    elif channels > 1 and in_channels == 1:
        notes.append("colour: channels averaged to the model's 1 channel")
    try:
        tensor, display = prepare(values, size, in_channels, norm)
    except DataError as exc:
        raise DataError(f"{ref.path}: {exc}") from exc
    original = (values.shape[0], values.shape[1])
    del values  # the full-resolution pixels can be large; only the resized copy is kept
    reshaped = aspect_change_note(original, size)
    if reshaped is not None:
        notes.append(reshaped)
    sample = Sample(ref.id, ref.path, tensor, display, original, notes=notes)
    if ref.mask_path is not None:
        sample.mask_path = ref.mask_path
        sample.gt_mask, mask_notes = read_mask(ref.mask_path, size, original,
                                               mask_label=mask_label, mask_classes=mask_classes)
        sample.notes.extend(mask_notes)
    ref.notes = list(sample.notes)
    return sample


def _reason(error: DataError, ref: SampleRef) -> str:
    """The error without absolute paths: the excluded-inputs table names the files."""
    text = str(error).replace(f"{ref.path}: ", "")
    if ref.mask_path is not None:
        text = text.replace(f"{ref.mask_path}: ", f"mask {ref.mask_path.name}: ")
    return text


def check_inputs(refs: list[SampleRef], size: tuple[int, int], in_channels: int,
                 norm: Normalization | None, intensity: str = "dtype",
                 keep_going: bool = False, *, mask_label: int | None = None,
                 mask_classes: int | None = None,
                 ) -> tuple[list[SampleRef], list[tuple[SampleRef, str]]]:
    """Read every image and mask once, keeping no pixels: (usable refs, excluded with reasons).

    Without `keep_going` any bad file is a DataError naming every bad file, raised
    before anything is computed or written. With it, bad files are set aside; a
    DataError is raised only when no image is left. `mask_label` and `mask_classes`
    are `read_mask`'s.
    """
    usable, excluded, messages = [], [], []
    target_seen, other_labels_seen = False, False
    for ref in refs:
        try:
            sample = load_sample(ref, size, in_channels, norm, intensity,
                                 mask_label=mask_label, mask_classes=mask_classes)
        except DataError as exc:
            excluded.append((ref, _reason(exc, ref)))
            messages.append(f"  {exc}")
        else:
            usable.append(ref)
            target_seen |= sample.gt_mask is not None and bool(sample.gt_mask.any())
            other_labels_seen |= any(WITHOUT_TARGET in note for note in sample.notes)
    if mask_label is not None and other_labels_seen and not target_seen:
        # 0/1 masks of a multi-class model: read as labels, they mark class 1, not the target
        raise DataError(f"no mask holds the target class's label {mask_label}, but masks hold "
                        f"other labels (see the notes of each image); {LABEL_MAP_HINT}")
    if excluded and not keep_going:
        listed = "\n".join(messages)
        raise DataError(f"{len(excluded)} of {len(refs)} input(s) cannot be used (pass "
                        f"--keep-going to build without them):\n{listed}")
    if not usable:
        raise DataError(f"none of the {len(refs)} input image(s) can be used")
    return usable, excluded


def load_samples(
    data: DataSection,
    size: tuple[int, int],
    in_channels: int,
    norm: Normalization | None,
    *,
    mask_label: int | None = None,
    mask_classes: int | None = None,
    outputs: Sequence[Path | None] = (),
) -> list[Sample]:
    """Read every image (and mask) the spec names, in the spec's stable order.

    `mask_label` and `mask_classes` are `read_mask`'s: None reads binary masks; `outputs`
    are `find_images`'.
    """
    return [load_sample(r, size, in_channels, norm, data.intensity, mask_label=mask_label,
                        mask_classes=mask_classes) for r in sample_refs(data, outputs)]
