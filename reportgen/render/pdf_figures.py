"""Figures for print: the site's figure files, downsampled to at most `PRINT_DPI` at
their printed size and flattened to RGB.

The PDF embeds the site's files directly when they already fit; only larger or
transparent ones are re-encoded, one at a time, into a temporary folder, so memory
does not grow with the number of images. Grid overlays stay JPEG (photographic,
written as JPEG by the site); inputs, masks and plots stay lossless PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from reportgen.render import figures as fig

PRINT_DPI = 200
"""Largest resolution of a figure at its printed size (dots per inch)."""
PRINT_JPEG_QUALITY = 88
MM_PER_INCH = 25.4


def pixels_for(width_mm: float, dpi: int = PRINT_DPI) -> int:
    """The most pixels a figure printed `width_mm` wide needs at `dpi`."""
    return max(1, math.ceil(width_mm / MM_PER_INCH * dpi))


def flatten(image: np.ndarray) -> np.ndarray:
    """An image read by OpenCV (BGR, BGRA, gray, 8 or 16 bit) as RGB uint8 on white."""
    if image.dtype != np.uint8:
        image = (image / max(1, int(np.iinfo(image.dtype).max) // 255)).astype(np.uint8)
    if image.ndim == 2:
        return fig.as_rgb(image)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        blended = image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        image = np.rint(blended).astype(np.uint8)
    return np.ascontiguousarray(cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB))


SITE_URL = "file:///reportgen/site/"
PRINT_URL = "file:///reportgen/print/"
"""The URLs the PDF's HTML names figures by: the site's files, and their print versions
in a temporary folder. Fixed, not the folders' real paths: WeasyPrint names each image
in the PDF by the md5 of its URL, and a build's scratch folder carries its process id,
so real paths would change the PDF's bytes from one build to the next. `roots` maps
them back to the folders."""


class PrintFigures:
    """Print versions of site figures, as URLs the PDF's HTML can link to."""

    def __init__(self, site: Path, scratch: Path) -> None:
        self.site = site
        self.scratch = scratch

    @property
    def roots(self) -> dict[str, Path]:
        """URL prefix -> the folder it names (for the PDF's URL fetcher)."""
        return {SITE_URL: self.site, PRINT_URL: self.scratch}

    def get(self, relative: str, width_mm: float) -> str | None:
        """A URL of the site file `relative` fit for `width_mm` of paper; None if absent."""
        source = self.site / relative
        if not source.is_file():
            return None
        image = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
        if image is None:
            return None
        limit = pixels_for(width_mm)
        has_alpha = image.ndim == 3 and image.shape[2] == 4
        if max(image.shape[:2]) <= limit and not has_alpha and image.dtype == np.uint8:
            return SITE_URL + quote(relative)
        rgb = fig.fit(flatten(image), limit)
        if source.suffix.lower() in (".jpg", ".jpeg"):
            data, suffix = fig.encode_jpeg(rgb, PRINT_JPEG_QUALITY, full_chroma=True), ".jpg"
        else:
            data, suffix = fig.encode_png(rgb), ".png"
        printed = Path(relative).with_suffix(suffix).as_posix()
        target = self.scratch / printed
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return PRINT_URL + quote(printed)
