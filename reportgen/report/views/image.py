"""The view of one image: its figures, the layer x method grid and its metrics.

Built from an `ImageRecord`, the map-free record of an image that the site keeps, so
that the site's image page and the PDF's image section render the same view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen.compute.cam.normalise import FLAG_REASONS
from reportgen.render.figures import OVERLAY_VARIANTS
from reportgen.report import layout
from reportgen.report.layout import cell_figure_name
from reportgen.report.results import Cell, CellKey, ImageResult, ReportContext, ShownValue
from reportgen.report.views.common import (
    OUTSIDE_LIMITS,
    RATIO_METRIC,
    Definition,
    Footnotes,
    Link,
    PageView,
    ValueView,
    VerdictSummary,
    VerdictView,
    approximate_at,
    definitions_for,
    href,
    noted,
    ordered_names,
    page_view,
    summarise_verdicts,
    value_view,
    verdict_view,
)


@dataclass(frozen=True)
class FigureView:
    src: str | None  # None: draw the placeholder instead
    alt: str
    caption: str
    placeholder: str = ""


@dataclass(frozen=True)
class VariantView:
    key: str
    label: str
    src: str
    alt: str


@dataclass
class GridCell:
    layer: str
    method: str
    variants: list[VariantView]  # empty when the map is not drawn
    heatmap: VariantView | None
    placeholder: str  # why the map is not drawn ("" when it is)
    verdict: VerdictView
    ratio: ValueView
    approximate: bool


@dataclass
class GridRow:
    layer: str
    cells: list[GridCell]


@dataclass
class MetricRowView:
    layer: str
    method: str
    verdict: VerdictView
    values: list[ValueView]
    flags: str
    approximate: bool


@dataclass
class ImagePageView:
    page: PageView
    id: str
    position: str
    previous: Link | None
    next: Link | None
    source_name: str
    mask_name: str
    dice: ValueView
    iou: ValueView
    verdict: VerdictSummary
    notes: list[str]
    figures: list[FigureView]
    methods: list[str]
    variants: list[tuple[str, str]]
    rows: list[GridRow]
    metric_columns: list[Definition]
    metric_rows: list[MetricRowView]
    footnotes: list[tuple[int, str]]
    colorbar: str
    colormap: str
    alpha: str
    aspect: str  # CSS aspect-ratio of the figures, "W / H"


@dataclass(frozen=True)
class CellRecord:
    """What the views show of one image x layer x method: everything but its map."""

    verdict: str
    metrics: dict[str, ShownValue]
    flags: list[str]
    problem: str  # why its map is not drawn ("" when it can be): `cell_problem`


@dataclass(frozen=True)
class ImageRecord:
    """What the views show of one image once its figures are drawn: no arrays, so the
    site keeps one per image for the PDF (about as much as the image's metrics.csv rows)."""

    id: str
    source_name: str
    mask_name: str | None
    has_ground_truth: bool
    dice: ShownValue | None
    iou: ShownValue | None
    cells: dict[CellKey, CellRecord]
    notes: list[str]
    size: tuple[int, int]  # width and height of its figures


def image_record(result: ImageResult) -> ImageRecord:
    """The map-free record of `result`."""
    cells = {key: CellRecord(cell.verdict, dict(cell.metrics), list(cell.flags),
                             cell_problem(cell))
             for key, cell in result.cells.items()}
    return ImageRecord(
        id=result.id, source_name=result.source.name,
        mask_name=result.mask_source.name if result.mask_source else None,
        has_ground_truth=result.ground_truth is not None, dice=result.dice, iou=result.iou,
        cells=cells, notes=list(result.notes),
        size=(result.display.shape[1], result.display.shape[0]))


def cell_problem(cell: Cell | None) -> str:
    """Why a cell's map is not drawn, in words; "" when it can be drawn."""
    if cell is None:
        return "not computed"
    if cell.flags:
        return "; ".join(FLAG_REASONS.get(flag, flag.replace("_", " ")) for flag in cell.flags)
    if cell.map is None:
        return "map undefined"
    if not np.isfinite(cell.map).all():
        return FLAG_REASONS.get("non_finite", "map has non-finite values")
    return ""


def main_figures(context: ReportContext, image: ImageRecord,
                 figures: dict[str, str]) -> list[FigureView]:
    """The input, its ground truth (or a placeholder saying there is none) and the
    prediction."""
    source = image.source_name
    main = [FigureView(figures.get("input"), f"Input image {source}", "Input")]
    if image.has_ground_truth and "ground_truth" in figures:
        mask = image.mask_name or "ground truth"
        main.append(FigureView(figures["ground_truth"],
                               f"Ground-truth mask {mask} outlined in magenta on {source}",
                               "Ground truth"))
    else:
        main.append(FigureView(None, "No ground truth for this image", "Ground truth",
                               "No ground truth"))
    main.append(FigureView(figures.get("prediction"),
                           f"Predicted {context.model.target_class} mask outlined in white "
                           f"on {source}", "Prediction"))
    return main


def grid_cell(context: ReportContext, image: ImageRecord, figures: dict[str, str],
              position: tuple[int, int], key: tuple[str, str], notes: Footnotes) -> GridCell:
    """The grid cell of `key` (layer, method) at `position` (row, column): its figure
    variants, or why it has none, its verdict and its attention ratio."""
    (r, c), (layer, method) = position, key
    cell = image.cells.get(key)
    problem = cell.problem if cell else "not computed"
    what = f"{method} map of layer {layer} on {image.source_name}"
    variants = []
    heat = None
    if not problem:
        for variant, label in OVERLAY_VARIANTS:
            src = figures.get(cell_figure_name(r, c, variant))
            if src is not None:
                variants.append(VariantView(variant, label, src, f"{label}: {what}"))
        heat_src = figures.get(cell_figure_name(r, c, "heatmap"))
        if heat_src is not None:
            heat = VariantView("heatmap", "Heatmap", heat_src, f"Heatmap: {what}")
        if not variants:
            problem = "figure not drawn"
    # the plan's list, as the PDF and the aggregates use (the engine agrees)
    approximate = cell is not None and approximate_at(context, layer, method)
    return GridCell(layer=layer, method=method, variants=variants, heatmap=heat,
                    placeholder=problem, verdict=verdict_view(cell.verdict if cell else "n/a"),
                    ratio=value_view(cell.metrics.get(RATIO_METRIC) if cell else None, notes,
                                     approximate=approximate),
                    approximate=approximate)


def metric_rows(image: ImageRecord, rows: list[GridRow], columns: list[Definition],
                notes: Footnotes) -> list[MetricRowView]:
    """One row per computed cell, in the grid's order: its verdict and every metric."""
    out = []
    for row in rows:
        for grid in row.cells:
            cell = image.cells.get((grid.layer, grid.method))
            if cell is None:
                continue
            out.append(MetricRowView(
                layer=grid.layer, method=grid.method, verdict=grid.verdict,
                values=[value_view(cell.metrics.get(d.name), notes, absent=OUTSIDE_LIMITS)
                        for d in columns],
                flags=", ".join([*cell.flags, *(["approximate"] if grid.approximate else [])]),
                approximate=grid.approximate))
    return out


def image_page_view(context: ReportContext, image: ImageRecord, figures: dict[str, str],
                    position: int, total: int, previous: str | None, next_id: str | None,
                    root: str = "../") -> ImagePageView:
    """The page of one image.

    `figures` maps figure names ("input", "ground_truth", "prediction",
    `cell_figure_name(...)`) to their src (a relative path or a data URI); a cell
    whose figures are missing is drawn as a placeholder.
    """
    notes = Footnotes()
    layers, methods = ordered_names(context, image.cells)
    metric_names = sorted({name for cell in image.cells.values() for name in cell.metrics})
    columns = definitions_for(metric_names, context)
    rows = [GridRow(layer, [grid_cell(context, image, figures, (r, c), (layer, method), notes)
                            for c, method in enumerate(methods)])
            for r, layer in enumerate(layers)]
    measured = metric_rows(image, rows, columns, notes)
    dice = value_view(image.dice, notes, absent="no ground truth")
    iou = value_view(image.iou, notes, absent="no ground truth")
    return ImagePageView(
        page=noted(page_view(context, f"Image {image.id}", "", root),
                   any(row.approximate for row in measured)),
        id=image.id,
        position=f"Image {position + 1} of {total}",
        previous=Link(href(f"{previous}.html"), previous) if previous else None,
        next=Link(href(f"{next_id}.html"), next_id) if next_id else None,
        source_name=image.source_name,
        mask_name=image.mask_name or "none",
        dice=dice, iou=iou,
        verdict=summarise_verdicts({key: cell.verdict for key, cell in image.cells.items()},
                                   context.verdict_layers, context.approximate),
        notes=list(image.notes),
        figures=main_figures(context, image, figures),
        methods=methods,
        variants=[*OVERLAY_VARIANTS],
        rows=rows,
        metric_columns=columns,
        metric_rows=measured,
        footnotes=notes.notes,
        colorbar=figures.get("colorbar", root + layout.COLORBAR),
        colormap=context.colormap,
        alpha=f"{context.alpha:.2f}",
        aspect=f"{image.size[0]} / {image.size[1]}",
    )
