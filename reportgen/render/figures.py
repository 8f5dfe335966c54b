"""Figures composed with NumPy and OpenCV: overlays, contours, thumbnails, colour bars.

Every figure is an RGB uint8 array built without matplotlib (one matplotlib figure
per map would dominate the build time) and encoded with OpenCV, whose PNG and JPEG
writers add no timestamp or text chunk: the same arrays always give the same bytes.
"""

from __future__ import annotations

import base64
from functools import lru_cache

import cv2
import matplotlib
import numpy as np

PREDICTION_COLOUR = (255, 255, 255)  # white line: predicted mask
GROUND_TRUTH_COLOUR = (255, 0, 255)  # magenta line: ground-truth mask
TOP_REGION_COLOUR = (255, 212, 0)  # yellow line: top fraction of the map
PREDICTION_TINT = (47, 128, 237)
GROUND_TRUTH_TINT = (255, 0, 255)
TOP_FRACTION = 0.2

OVERLAY_VARIANTS: tuple[tuple[str, str], ...] = (
    ("overlay", "Overlay"),
    ("contours", "Overlay + mask contours"),
    ("top", "Top 20% region"),
)
"""The overlay figures drawn for every cell (key, label); the heatmap is drawn as well."""


@lru_cache(maxsize=8)
def colormap_lut(name: str) -> np.ndarray:
    """The 256-entry RGB lookup table [256, 3] uint8 of a matplotlib colormap."""
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as error:
        raise ValueError(f"unknown colormap {name!r} (try 'viridis' or 'jet')") from error
    table = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)
    table.setflags(write=False)
    return table


def heatmap(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """A map [H, W] in [0, 1] coloured through `lut`: [H, W, 3] uint8."""
    index = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return lut[index]


def blend(base: np.ndarray, top: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * base + alpha * top, both [H, W, 3] uint8."""
    return cv2.addWeighted(top, float(alpha), base, 1.0 - float(alpha), 0.0)


def fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """`image` downscaled (area interpolation) so its longer side is at most `max_side`.

    Never upscales: small inputs stay at their own resolution.
    """
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A bool mask resized to `shape` (H, W): a pixel is inside when most of its area is."""
    if mask.shape == shape:
        return mask.astype(bool)
    resized = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]),
                         interpolation=cv2.INTER_AREA)
    return resized >= 0.5


def fit_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float map resized to `shape` (H, W) with area interpolation."""
    if values.shape == shape:
        return values.astype(np.float32)
    return cv2.resize(values.astype(np.float32), (shape[1], shape[0]),
                      interpolation=cv2.INTER_AREA)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An [H, W] or [H, W, 1|3|4] image as contiguous RGB uint8."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def draw_outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int],
                 thickness: int = 1) -> np.ndarray:
    """`image` with the outer contours of `mask` drawn in `colour` over a dark halo."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    out = np.ascontiguousarray(image.copy())
    if contours:
        cv2.drawContours(out, contours, -1, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, colour, thickness, cv2.LINE_AA)
    return out


def tint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int],
         strength: float = 0.35) -> np.ndarray:
    """`image` with the pixels of `mask` blended towards `colour`."""
    out = image.copy()
    colour_array = np.array(colour, dtype=np.float32)
    inside = mask.astype(bool)
    out[inside] = np.rint(
        (1.0 - strength) * image[inside].astype(np.float32) + strength * colour_array
    ).astype(np.uint8)
    return out


def top_region(values: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Bool mask of the `fraction` of pixels with the highest map values.

    The cut is the (1 - fraction) quantile; pixels at zero attention never count,
    so a map that is zero almost everywhere gives a small (or empty) region.
    """
    flat = values.ravel()
    index = min(flat.size - 1, int(np.floor((1.0 - fraction) * flat.size)))
    cut = np.partition(flat, index)[index]
    return (values >= cut) & (values > 0)


def line_width(shape: tuple[int, ...]) -> int:
    """Contour thickness in pixels for a figure of this size."""
    return 2 if max(shape[:2]) >= 256 else 1


def cell_figures(base: np.ndarray, values: np.ndarray, prediction: np.ndarray,
                 ground_truth: np.ndarray | None, lut: np.ndarray,
                 alpha: float) -> dict[str, np.ndarray]:
    """The figures of one map: the three overlay variants and the pure heatmap.

    `base` [H, W, 3] uint8, `values` [H, W] in [0, 1], masks [H, W] bool, all at the
    figure's size. Keys: "overlay", "contours", "top", "heatmap".
    """
    width = line_width(base.shape)
    heat = heatmap(values, lut)
    overlay = blend(base, heat, alpha)
    contours = draw_outline(overlay, prediction, PREDICTION_COLOUR, width)
    if ground_truth is not None:
        contours = draw_outline(contours, ground_truth, GROUND_TRUTH_COLOUR, width)
    dimmed = (base.astype(np.float32) * 0.45).astype(np.uint8)
    region = top_region(values)
    top = np.where(region[:, :, None], base, dimmed)
    top = draw_outline(top, region, TOP_REGION_COLOUR, width)
    return {"overlay": overlay, "contours": contours, "top": top, "heatmap": heat}


def prediction_figure(base: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The input with the predicted mask tinted blue and outlined in white."""
    tinted = tint(base, prediction, PREDICTION_TINT)
    return draw_outline(tinted, prediction, PREDICTION_COLOUR, line_width(base.shape))


def ground_truth_figure(base: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """The input with the ground-truth mask tinted and outlined in magenta."""
    tinted = tint(base, ground_truth, GROUND_TRUTH_TINT)
    return draw_outline(tinted, ground_truth, GROUND_TRUTH_COLOUR, line_width(base.shape))


def colour_bar(lut: np.ndarray, width: int = 256, height: int = 14) -> np.ndarray:
    """A horizontal colour bar [height, width, 3]: 0 on the left, 1 on the right."""
    row = heatmap(np.linspace(0.0, 1.0, width, dtype=np.float32), lut)
    return np.ascontiguousarray(np.repeat(row[None, :, :], height, axis=0))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (no timestamp or text chunks: deterministic)."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 80, full_chroma: bool = False) -> bytes:
    """Baseline JPEG bytes of an RGB uint8 image (deterministic for a given libjpeg).

    `full_chroma` keeps colour at full resolution (4:4:4), which keeps thin coloured
    contour lines sharp; the default halves it (4:2:0) for smaller files.
    """
    sampling = (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if full_chroma
                else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality),
                             cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def data_uri(data: bytes, mime: str) -> str:
    """`data` as a base64 data URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
