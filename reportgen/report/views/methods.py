"""The methods page: method comparison across the data set and the sanity check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reportgen.report import layout
from reportgen.report.results import (
    ReportContext,
    SanityRow,
)
from reportgen.report.statistics import DatasetStats
from reportgen.report.views.common import (
    RATIO_METRIC,
    Definition,
    Footnotes,
    MatrixView,
    MeansTable,
    PageView,
    PlotView,
    ValueView,
    agreement_matrix,
    approximate_at,
    dataset_metric_names,
    definitions_for,
    format_number,
    noted,
    page_view,
    pooled_lookup,
    shows_approximate,
    value_view,
)


@dataclass
class SanityRowView:
    layer: str
    method: str
    levels: list[tuple[str, ValueView, ValueView]]
    threshold: str
    passed: str  # "passed" | "failed" | "undefined"
    reason: str


@dataclass
class MethodInfo:
    name: str
    family: str
    cost: str
    reference: str
    description: str
    note: str
    approximate: bool


@dataclass
class MethodsView:
    page: PageView
    methods: list[MethodInfo]
    means: MeansTable | None
    definitions: list[Definition]
    plots: list[PlotView]
    matrices: list[MatrixView]
    rank_size: int
    sanity: list[SanityRowView]
    # each section's notes, printed under it
    means_notes: list[tuple[int, str]]
    matrix_notes: list[tuple[int, str]]
    sanity_notes: list[tuple[int, str]]


def methods_view(context: ReportContext, stats: DatasetStats, plots: list[PlotView],
                 sanity: Sequence[SanityRow], rank_size: int) -> MethodsView:
    """Method comparison across the data set."""
    notes, matrix_notes, sanity_notes = Footnotes(), Footnotes(), Footnotes()
    methods = [MethodInfo(row.name, row.family, row.cost, row.reference, row.description,
                          row.note, row.approximate) for row in context.methods]
    definitions = definitions_for(dataset_metric_names(stats), context)
    # the layers the verdicts count: encoder_early's expected low ratios would rank methods
    layers = [la for la in stats.layers if la in context.verdict_layers] or list(stats.layers)
    means = None
    if definitions:
        rows = []
        for method in stats.methods:
            values = []
            for definition in definitions:
                by_layer = {layer: stats.metric_values(definition.name, layer, method)
                            for layer in layers}
                found = [value for layer_values in by_layer.values() for value in layer_values]
                typical = np.median if definition.name == RATIO_METRIC else np.mean
                # marked when a value of an approximate map went into it
                approximate = any(found_at and approximate_at(context, layer, method)
                                  for layer, found_at in by_layer.items())
                values.append(value_view(
                    float(typical(found)) if found else None, notes, absent="no defined value",
                    approximate=approximate))
            rows.append((method, values))
        means = MeansTable(f"Mean over the images and the verdict layers ({', '.join(layers)}; "
                           "those computed, for metrics limited to fewer); attention ratio: "
                           "median, as one map with nothing outside the mask makes the mean "
                           "infinite", None, "Method", [d.title for d in definitions], rows)
    matrices = [agreement_matrix(
        "All layers", stats.methods,
        pooled_lookup(stats.layers, stats.method_agreement), matrix_notes,
        [me for me in stats.methods if any(approximate_at(context, la, me)
                                           for la in stats.layers)])]
    for layer in stats.layers:
        matrices.append(agreement_matrix(
            f"Layer {layer}", stats.methods,
            lambda a, b, layer=layer: stats.method_agreement.mean(layer, a, b), matrix_notes,
            [me for me in stats.methods if approximate_at(context, layer, me)]))
    marked = (means is not None and any(v.approximate for _, values in means.rows
                                        for v in values)
              or shows_approximate(context, stats))  # the matrices label such methods
    return MethodsView(noted(page_view(context, "Methods", layout.METHODS), marked), methods, means,
                       definitions, plots, matrices, rank_size,
                       sanity_views(sanity, sanity_notes), notes.notes, matrix_notes.notes,
                       sanity_notes.notes)


SANITY_RHO_UNDEFINED = "undefined: a map is constant"
"""Why a sanity level has no ρ: the words of the per-image sanity metric (layers page)."""


def sanity_views(rows: Sequence[SanityRow], notes: Footnotes) -> list[SanityRowView]:
    """Sanity-check rows with per-level similarities formatted."""
    views = []
    for row in rows:
        levels = []
        for index, level in enumerate(row.levels):
            rho = row.spearman[index] if index < len(row.spearman) else None
            ssim = row.ssim[index] if index < len(row.ssim) else None
            levels.append((level, value_view(rho, notes, absent=SANITY_RHO_UNDEFINED),
                           value_view(ssim, notes, absent="undefined")))
        passed = {True: "passed", False: "failed", None: "undefined"}[row.passed]
        # the pass/fail cell needs no reason that only repeats its footnote
        reason = "" if row.passed is None and "constant" in row.reason else row.reason
        views.append(SanityRowView(row.layer, row.method, levels, format_number(row.threshold),
                                   passed, reason))
    return views
