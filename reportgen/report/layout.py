"""Where every file of a report site lives, relative to the site's root folder.

The site writer writes these paths, the views link to them and the PDF reads its
figures and attachments from them: the one place that names the site's file layout.
Paths are POSIX strings (they are also URLs once percent-encoded, `views.common.href`).

    index.html  methods.html  layers.html  audit.html  report-single.html
    images/<id>.html            an image's page
    figures/<id>/<name>.<ext>   its figures (`figure`), figures/colorbar.png
    thumbs/<id>.jpg             its thumbnail on the index
    plots/<name>.png            the dataset plots
    assets/site.css, site.js    the site's stylesheet and script
    data/...                    metrics, manifest and checksums (`DATA_FILES`)
"""

from __future__ import annotations

INDEX = "index.html"
METHODS = "methods.html"
LAYERS = "layers.html"
AUDIT = "audit.html"
SINGLE = "report-single.html"  # every page in one file, figures embedded

STYLESHEET = "assets/site.css"
SCRIPT = "assets/site.js"
COLORBAR = "figures/colorbar.png"

METRICS_CSV = "data/metrics.csv"
METRICS_JSON = "data/metrics.json"
METRICS_SUMMARY_CSV = "data/metrics_summary.csv"
MANIFEST = "data/manifest.json"
CHECKSUMS = "data/checksums.sha256"

DATA_FILES: tuple[tuple[str, str], ...] = (
    (METRICS_CSV, "Metrics per image (CSV)"),
    (METRICS_JSON, "Metrics per image (JSON)"),
    (METRICS_SUMMARY_CSV, "Metrics over the data set (CSV)"),
    (MANIFEST, "Manifest: input and output hashes (JSON)"),
    (CHECKSUMS, "Checksums of every file (sha256sum -c)"),
)
"""Files the build writes next to the site pages, linked from the index and the audit
(with the PDF, when there is one)."""

IMAGE_PAGE = "images/{id}.html"
"""Where an image's page is ({id} is replaced); a link template, as the single-file
report links to "#image-{id}" instead."""


def asset(name: str) -> str:
    """A packaged asset (site.css, site.js) in the site."""
    return f"assets/{name}"


def image_page(image_id: str) -> str:
    return IMAGE_PAGE.format(id=image_id)


def figure(image_id: str, name: str, suffix: str) -> str:
    """One figure of an image: "input", "ground_truth", "prediction" (PNG) or a grid
    cell's (`cell_figure_name`, JPEG)."""
    return f"figures/{image_id}/{name}.{suffix}"


def cell_figure_name(row: int, column: int, variant: str) -> str:
    """The name of one figure of the grid cell at (row, column) of an image's grid."""
    return f"cell-{row}-{column}-{variant}"


def figure_suffix(name: str) -> str:
    """The file type of a figure: grid cells are JPEG (80 figures per image, photographic),
    the input, ground truth and prediction lossless PNG."""
    return "jpg" if name.startswith("cell-") else "png"


def thumb(image_id: str) -> str:
    return f"thumbs/{image_id}.jpg"


def plot(name: str) -> str:
    return f"plots/{name}.png"
