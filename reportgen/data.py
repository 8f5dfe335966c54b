"""Data stage: read images and masks of every common medical format, prepare tensors.

Rules (recorded per image in `Sample.notes`, and so in the manifest):
- 8-bit images are scaled by 1/255; 16-bit by 1/65535 (`data.intensity: dtype`) or by
  their own min..max (`minmax`). DICOM pixel data get the file's rescale slope and
  intercept, then its VOI window (centre/width or LUT), then min..max of the window.
- Grayscale is replicated to the model's input channels; an alpha channel is dropped;
  palette images are expanded to RGB.
- Images and masks are resized to the model's input size (images bilinear, masks
  nearest); an image whose aspect ratio this changes says so, since every map and
  metric is then computed on the stretched image. A mask is foreground where > 0 when
  its values are {0, 1} or {0, 255}; any other values are binarised at half their
  maximum. A colour mask is foreground where any channel is. A mask whose aspect ratio
  differs from its image's is refused (it cannot be the same field of view); one of
  another size but the same aspect ratio is resized like the image.
- Zero-byte, truncated and undecodable files (a non-image with an image extension)
  are refused with the file named; so are non-finite pixels.

`check_inputs` reads every image and mask once before a build computes anything, so a
bad file found late never costs a half build: by default it refuses them all at once;
with keep-going it sets them aside as excluded inputs, each with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from reportgen.errors import DataError
from reportgen.spec import DataSection, Normalization, find_images, mask_for

DICOM_SUFFIXES = (".dcm", ".dicom")
TIFF_SUFFIXES = (".tif", ".tiff")


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


def _read_dicom(path: Path) -> tuple[np.ndarray, list[str]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable DICOM image ({exc})") from exc
    notes = ["DICOM: modality rescale applied"]
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0)
        notes.append("DICOM: VOI window applied")
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 1.0 - scaled
        notes.append("DICOM: MONOCHROME1 inverted")
    return scaled.astype(np.float32), notes


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PALETTE = 3  # IHDR colour type of an indexed-colour PNG


def _read_raster(path: Path) -> tuple[np.ndarray, list[str]]:
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            return np.asarray(tifffile.imread(path)), []
        except Exception as exc:  # tifffile raises many types for broken files
            raise DataError(f"{path}: not a readable TIFF image ({exc})") from exc
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: not a readable image (truncated, or not the format its "
                        "extension says)")
    notes = []
    if raw[:8].tobytes() == PNG_SIGNATURE and raw.size > 25 and raw[25] == PNG_PALETTE:
        notes.append("palette (indexed colour): expanded to RGB")
    if image.ndim == 3 and image.shape[2] >= 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4
                             else cv2.COLOR_BGR2RGB)
    return image, notes


def read_image(path: Path, intensity: str = "dtype") -> tuple[np.ndarray, list[str]]:
    """Read an image as float32 [H, W, C] in [0, 1] (C = 1 or 3), with conversion notes."""
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in DICOM_SUFFIXES:
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
    if values.ndim == 2:
        values = values[:, :, None]
    if values.ndim != 3:
        raise DataError(f"{path}: unsupported image shape {values.shape} (expected 2-D)")
    if values.shape[2] == 4:
        values = values[:, :, :3]
        notes.append("alpha channel dropped")
    elif values.shape[2] == 2:
        values = values[:, :, :1]
        notes.append("gray+alpha: alpha dropped")
    if not np.isfinite(values).all():
        raise DataError(f"{path}: image holds non-finite pixel values")
    return values, notes


ASPECT_TOLERANCE = 0.01  # relative; rounding when a mask was saved at another scale


def read_mask(path: Path, size: tuple[int, int],
              image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a ground-truth mask as bool [H, W] at `size` (nearest), binarised by the rule above.

    `image_size` is its image's [H, W]: a mask of another aspect ratio is refused, since
    stretching it would mark the wrong pixels as ground truth.
    """
    values, _ = read_image(path, "dtype")
    notes = []
    if image_size is not None and values.shape[:2] != image_size:
        (mh, mw), (ih, iw) = values.shape[:2], image_size
        if abs(mw / mh - iw / ih) > ASPECT_TOLERANCE * (iw / ih):
            raise DataError(f"{path}: mask is {mw}x{mh} but its image is {iw}x{ih}; a mask "
                            "must have its image's size or at least its aspect ratio")
        notes.append(f"mask {path.name}: {mw}x{mh}, its image {iw}x{ih}: resized")
    if values.shape[2] > 1:
        notes.append(f"mask {path.name}: colour mask, foreground where any channel is set")
    gray = values.max(axis=2)
    levels = np.unique(gray)
    allowed = np.array([0.0, 1.0 / 255.0, 1.0 / 65535.0, 1.0])
    if np.all(np.abs(levels[:, None] - allowed[None, :]).min(axis=1) < 1e-6):
        binary = gray > 0
    else:
        binary = gray >= gray.max() / 2.0
        notes.append(f"mask {path.name}: {len(levels)} grey levels, binarised at half maximum")
    if binary.shape != size:
        notes.append(f"mask {path.name}: resized from {binary.shape[1]}x{binary.shape[0]}")
        binary = cv2.resize(binary.astype(np.uint8), (size[1], size[0]),
                            interpolation=cv2.INTER_NEAREST).astype(bool)
    return binary, notes


def aspect_change_note(original: tuple[int, int], size: tuple[int, int]) -> str | None:
    """The note of an image resized from `original` to `size` (both [H, W]) that changes
    its aspect ratio, or None when the shape is kept (within `ASPECT_TOLERANCE`).

    The change is the larger width/height ratio over the smaller, minus 1: how much
    one axis is stretched against the other.
    """
    (height, width), (new_height, new_width) = original, size
    before, after = width / height, new_width / new_height
    change = max(before, after) / min(before, after) - 1.0
    if change <= ASPECT_TOLERANCE:
        return None
    return (f"image resized from {width}x{height} to {new_width}x{new_height}, aspect ratio "
            f"(width/height) {before:.2f} to {after:.2f}, changed by {change:.0%}: maps, Dice "
            f"and all metrics are computed at {new_width}x{new_height}")


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


def sample_refs(data: DataSection) -> list[SampleRef]:
    """Every image (and its mask) the spec names, in the spec's stable order, with page ids."""
    taken: set[str] = set()
    return [SampleRef(safe_id(p.stem, taken), p, mask_for(data, p)) for p in find_images(data)]


def load_sample(ref: SampleRef, size: tuple[int, int], in_channels: int,
                norm: Normalization | None, intensity: str = "dtype") -> Sample:
    """Read and prepare one image and its mask; the conversion notes go to `ref.notes` too."""
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
        sample.gt_mask, mask_notes = read_mask(ref.mask_path, size, original)
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
                 keep_going: bool = False) -> tuple[list[SampleRef], list[tuple[SampleRef, str]]]:
    """Read every image and mask once, keeping no pixels: (usable refs, excluded with reasons).

    Without `keep_going` any bad file is a DataError naming every bad file, raised
    before anything is computed or written. With it, bad files are set aside; a
    DataError is raised only when no image is left.
    """
    usable, excluded, messages = [], [], []
    for ref in refs:
        try:
            load_sample(ref, size, in_channels, norm, intensity)
        except DataError as exc:
            excluded.append((ref, _reason(exc, ref)))
            messages.append(f"  {exc}")
        else:
            usable.append(ref)
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
) -> list[Sample]:
    """Read every image (and mask) the spec names, in the spec's stable order."""
    return [load_sample(r, size, in_channels, norm, data.intensity) for r in sample_refs(data)]
