"""The layers page: how attention changes through the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reportgen.report import layout
from reportgen.report.results import (
    AggregateRow,
    ReportContext,
)
from reportgen.report.statistics import DatasetStats
from reportgen.report.views.common import (
    RATIO_METRIC,
    Footnotes,
    MatrixView,
    MeansTable,
    PageView,
    PlotView,
    aggregate_index,
    agreement_matrix,
    approximate_at,
    definitions_for,
    format_count,
    missing_statistic,
    noted,
    page_view,
    shows_approximate,
    value_view,
)


@dataclass
class LayerView:
    name: str
    path: str
    channels: str
    stride: str
    meaning: str


@dataclass
class LayersView:
    page: PageView
    layers: list[LayerView]
    tables: list[MeansTable]
    plots: list[PlotView]
    matrices: list[MatrixView]
    rank_size: int
    # each section's notes, printed under it
    table_notes: list[tuple[int, str]]
    matrix_notes: list[tuple[int, str]]


def layer_agreement(context: ReportContext, stats: DatasetStats,
                    notes: Footnotes) -> list[MatrixView]:
    """One matrix per method of the mean ρ between the maps of two layers."""
    return [agreement_matrix(
        f"Method {method}", stats.layers,
        lambda a, b, method=method: stats.layer_agreement.mean(method, a, b), notes,
        [la for la in stats.layers if approximate_at(context, la, method)])
        for method in stats.methods]


def layer_rows(context: ReportContext) -> list[LayerView]:
    """The spec's layers: name, module path, channels, stride and meaning."""
    return [LayerView(row.name, row.path,
                      "—" if row.channels is None else format_count(row.channels),
                      "—" if row.stride is None else f"{row.stride:g}", row.meaning)
            for row in context.layers]


def layers_view(context: ReportContext, stats: DatasetStats, aggregates: Sequence[AggregateRow],
                plots: list[PlotView], rank_size: int) -> LayersView:
    """How attention changes through the network: per-layer means for every metric."""
    notes = Footnotes()
    layers = layer_rows(context)
    by_key = aggregate_index(aggregates)
    image_level = {row.metric for row in aggregates if not row.layer and not row.method}
    tables = []
    for definition in definitions_for({row.metric for row in aggregates} - image_level,
                                      context):
        rows = []
        for layer in stats.layers:
            values = []
            for method in stats.methods:
                row = by_key.get((layer, method, definition.name))
                typical = None if row is None else (
                    row.median if definition.name == RATIO_METRIC else row.mean)
                if typical is None:
                    reason = "not computed" if row is None else missing_statistic(
                        row, "median" if definition.name == RATIO_METRIC else "mean")
                    values.append(value_view(None, notes, absent=reason))
                else:
                    values.append(value_view(typical, notes, approximate=approximate_at(
                        context, layer, method)))
            rows.append((layer, values))
        statistic = "median" if definition.name == RATIO_METRIC else "mean"
        tables.append(MeansTable(f"{definition.title}: {statistic} per layer", definition,
                                 "Layer", list(stats.methods), rows))
    matrix_notes = Footnotes()
    matrices = layer_agreement(context, stats, matrix_notes)
    marked = (any(v.approximate for table in tables for _, values in table.rows for v in values)
              or shows_approximate(context, stats))  # the matrices label such layers
    return LayersView(noted(page_view(context, "Layers", layout.LAYERS), marked), layers, tables,
                      plots, matrices, rank_size, notes.notes, matrix_notes.notes)
