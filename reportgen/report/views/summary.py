"""The summary (index) page: model card, data, verdicts, aggregate tables, plots and
the image gallery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from markupsafe import Markup

from reportgen.compute.metrics.attention import verdict as ratio_verdict
from reportgen.report import layout
from reportgen.report.results import (
    AggregateRow,
    ReportContext,
    SanityRow,
)
from reportgen.report.statistics import DatasetStats, ImageSummary
from reportgen.report.views.common import (
    RATIO_METRIC,
    VERDICT_ORDER,
    Definition,
    Footnotes,
    Link,
    PageView,
    PlotView,
    ValueView,
    VerdictSummary,
    VerdictView,
    aggregate_index,
    approximate_at,
    definitions_for,
    downloads,
    format_count,
    format_number,
    href,
    map_name,
    markdown,
    missing_statistic,
    na_reason_text,
    noted,
    page_view,
    summarise_verdicts,
    value_view,
    verdict_rank,
    verdict_rank_best_first,
    verdict_view,
)


@dataclass
class SummaryCell:
    median_ratio: ValueView  # marked when the maps are approximate
    verdict: VerdictView
    counts: list[tuple[VerdictView, int]]


@dataclass
class SummaryRow:
    layer: str
    cells: list[SummaryCell]


@dataclass
class AggregateRowView:
    layer: str
    method: str
    mean: ValueView
    std: ValueView
    median: ValueView
    min: ValueView
    max: ValueView
    n: str
    n_na: str
    na_note: int | None  # the note that says why images have no value
    approximate: bool


@dataclass
class MetricTable:
    definition: Definition
    rows: list[AggregateRowView]
    footnotes: list[tuple[int, str]]  # numbered for this table, printed under it
    per_map: bool = True  # False for image-level metrics (Dice, IoU): no layer or method


@dataclass
class GalleryItem:
    order: int
    id: str
    href: str
    thumb: str
    alt: str
    source_name: str
    dice: str
    dice_sort: str  # "" when undefined: sorts last
    verdict: VerdictView
    verdict_sort: int  # worst first
    verdict_best_sort: int  # best first (n/a last in both)


@dataclass
class IndexView:
    page: PageView
    author: str
    date: str
    description: Markup  # the spec's Markdown, rendered safely
    intended_use: Markup
    limitations: Markup
    reviewers: list[tuple[str, str]]
    model_card: list[tuple[str, str]]
    data: list[tuple[str, str]]
    methods: list[str]
    summary_rows: list[SummaryRow]
    overall: VerdictSummary
    dice: str
    dice_detail: str
    verdict_legend: list[VerdictView]
    bands_text: str  # e.g. "above 5 excellent, 2–5 good, 1–2 fair, below 1 concerning"
    tables: list[MetricTable]
    plots: list[PlotView]
    gallery: list[GalleryItem]
    downloads: list[Link]
    footnotes: list[tuple[int, str]]
    warnings: list[str]  # the build's warnings, shown first
    has_pdf: bool  # whether the build writes a PDF (the warnings are on its cover too)


def model_card_rows(context: ReportContext) -> list[tuple[str, str]]:
    """The model card as (label, value) rows."""
    card = context.model
    height, width = card.input_size
    return [
        ("Architecture", card.architecture),
        ("Encoder", card.encoder),
        ("Checkpoint", card.checkpoint_name),
        ("Checkpoint SHA-256", card.checkpoint_sha256),
        ("Checkpoint format", card.checkpoint_format),
        ("Parameters", format_count(card.parameters)),
        ("Input size", f"{height} × {width} px"),
        ("Classes", ", ".join(card.classes)),
        ("Target class", card.target_class),
        ("Activation", card.activation),
        ("Normalisation", card.normalization),
    ]


def data_rows(context: ReportContext, summaries: Sequence[ImageSummary]) -> list[tuple[str, str]]:
    """The data set as (label, value) rows."""
    with_truth = sum(1 for s in summaries if s.has_ground_truth)
    return [
        ("Images", format_count(context.image_count)),
        ("Image source", context.image_source),
        ("Mask source", context.mask_source or "none"),
        ("With ground truth", format_count(with_truth)),
        ("Without ground truth", format_count(len(summaries) - with_truth)),
        ("Target region", context.target_region),
        ("Excluded inputs", format_count(len(context.excluded))),
    ]


def summary_rows(context: ReportContext, stats: DatasetStats,
                 aggregates: Sequence[AggregateRow], notes: Footnotes) -> list[SummaryRow]:
    """Per layer x method: median attention ratio, its verdict and the verdict counts.

    The median, not the mean: ratios are heavy-tailed (a map with no attention outside
    the mask has ratio +inf, and one such image makes the mean +inf whatever the others
    say)."""
    by_key = aggregate_index(aggregates)
    bands = context.verdict_bands
    rows = []
    for layer in stats.layers:
        cells = []
        for method in stats.methods:
            row = by_key.get((layer, method, RATIO_METRIC))
            if row is None:
                median = value_view(None, notes, absent="attention ratio not computed")
            elif row.median is None:
                median = value_view(None, notes, absent=missing_statistic(row, "median"))
            else:
                median = value_view(row.median, notes,
                                    approximate=approximate_at(context, layer, method))
            median_verdict_name = ratio_verdict(row.median if row else None, bands)
            tally: dict[str, int] = {}
            for summary in stats.summaries:
                name = summary.verdicts.get((layer, method))
                if name is not None:
                    tally[name] = tally.get(name, 0) + 1
            counts = [(verdict_view(name), tally[name]) for name in VERDICT_ORDER if name in tally]
            cells.append(SummaryCell(median, verdict_view(median_verdict_name), counts))
        rows.append(SummaryRow(layer, cells))
    return rows


def overall_verdict(context: ReportContext, rows: Sequence[SummaryRow],
                    methods: Sequence[str], sanity: Sequence[SanityRow] = ()) -> VerdictSummary:
    """The report's verdict: the median of the layer x method verdicts (each that of the
    median attention ratio over the images) at the verdict layers, with the worst named,
    and which of the counted maps are approximate or failed the sanity check (counted
    still, as each image's verdict counts them, but named)."""
    verdicts = {(row.layer, method): cell.verdict.key
                for row in rows for method, cell in zip(methods, row.cells, strict=True)}
    summary = summarise_verdicts(verdicts, context.verdict_layers, context.approximate)
    # the maps the median counts: at its layers, with a verdict (n/a ones are left out)
    counted = [key for key, name in verdicts.items()
               if key[0] in summary.layers and name != "n/a"]
    failed = {(row.layer, row.method) for row in sanity if row.passed is False}
    return replace(summary, left_out=context.verdict_note,
                   approximate_at=[map_name(key) for key in counted
                                   if approximate_at(context, *key)],
                   sanity_failed=[map_name(key) for key in counted if key in failed])


def metric_tables(context: ReportContext, stats: DatasetStats,
                  aggregates: Sequence[AggregateRow]) -> list[MetricTable]:
    """One table per metric (registry order), rows in spec order of layer then method,
    each table with its own notes."""
    by_key = aggregate_index(aggregates)
    tables = []
    for definition in definitions_for({row.metric for row in aggregates}, context):
        notes = Footnotes()
        rows = []
        # image-level metrics (Dice, IoU) have one row, with no layer or method
        for layer, method in [("", ""), *((la, me) for la in stats.layers
                                          for me in stats.methods)]:
            row = by_key.get((layer, method, definition.name))
            if row is None:
                continue
            values = {name: value_view(getattr(row, name), notes,
                                       absent=missing_statistic(row, name))
                      for name in ("mean", "std", "median", "min", "max")}
            rows.append(AggregateRowView(
                layer=layer or "—", method=method or "—", **values,
                n=format_count(row.n), n_na=format_count(row.n_na),
                na_note=notes.cite(na_reason_text(row)) if row.na_reasons else None,
                approximate=approximate_at(context, layer, method)))
        tables.append(MetricTable(definition, rows, notes.notes,
                                  per_map=any(r.layer != "—" for r in rows)))
    return tables


def dice_summary(summaries: Sequence[ImageSummary], context: ReportContext) -> tuple[str, str]:
    """Mean Dice over the images with a defined Dice, and what it is a mean of."""
    values = [s.dice for s in summaries if s.dice is not None]
    missing = len(summaries) - len(values)
    if not values:
        if "dice" not in {d.name for d in context.metric_definitions}:
            return "n/a", "Dice not computed (not among the spec's metrics)"
        if context.mask_source is None:
            return "n/a", "no ground truth (data.masks not given)"
        return "n/a", "no image has a defined Dice"
    detail = f"mean over {format_count(len(values))} image{'s' if len(values) != 1 else ''}"
    if missing:
        detail += f"; {format_count(missing)} without a defined Dice"
    return format_number(float(np.mean(values))), detail


def gallery_items(stats: DatasetStats, thumbs: dict[str, str],
                  link: str = layout.IMAGE_PAGE) -> list[GalleryItem]:
    """The thumbnail index in build order; `link` formats each image's href."""
    items = []
    for order, summary in enumerate(stats.summaries):
        items.append(GalleryItem(
            order=order, id=summary.id, href=href(link.format(id=summary.id)),
            thumb=thumbs.get(summary.id, href(layout.thumb(summary.id))),
            alt=f"Thumbnail of {summary.source_name} with the predicted mask outlined",
            source_name=summary.source_name,
            dice=format_number(summary.dice) if summary.dice is not None else "n/a",
            dice_sort="" if summary.dice is None else f"{summary.dice:.6f}",
            verdict=verdict_view(summary.verdict),
            verdict_sort=verdict_rank(summary.verdict),
            verdict_best_sort=verdict_rank_best_first(summary.verdict)))
    return items


def index_view(context: ReportContext, stats: DatasetStats, aggregates: Sequence[AggregateRow],
               plots: list[PlotView], thumbs: dict[str, str] | None = None,
               text_headings: int = 3, sanity: Sequence[SanityRow] = ()) -> IndexView:
    """The summary page; headings in the spec's free text start at level `text_headings`
    (the site's cards are h2, the PDF's sections h3); `sanity` names the counted maps that
    failed the sanity check."""
    notes = Footnotes()
    dice, dice_detail = dice_summary(stats.summaries, context)
    summary = summary_rows(context, stats, aggregates, notes)
    tables = metric_tables(context, stats, aggregates)
    marked = (any(cell.median_ratio.approximate for row in summary for cell in row.cells)
              or any(row.approximate for table in tables for row in table.rows))
    return IndexView(
        page=noted(page_view(context, "Summary", layout.INDEX), marked),
        author=context.author, date=context.date,
        description=markdown(context.description, text_headings),
        intended_use=markdown(context.intended_use, text_headings),
        limitations=markdown(context.limitations, text_headings),
        reviewers=list(context.reviewers),
        model_card=model_card_rows(context),
        data=data_rows(context, stats.summaries),
        methods=list(stats.methods),
        summary_rows=summary,
        overall=overall_verdict(context, summary, stats.methods, sanity),
        dice=dice, dice_detail=dice_detail,
        verdict_legend=[verdict_view(name) for name in VERDICT_ORDER],
        bands_text=context.verdict_bands.text,
        tables=tables,
        plots=plots,
        gallery=gallery_items(stats, thumbs or {}),
        downloads=downloads(context),
        footnotes=notes.notes,
        warnings=list(context.warnings),
        has_pdf=bool(context.pdf),
    )
