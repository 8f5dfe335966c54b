"""View models of the site's pages: plain data built in Python for the templates.

Templates only loop over these objects and print their strings; every number is
formatted, every n/a carries its reason, and every link is already relative to the
page that shows it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import quote

import numpy as np
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from reportgen import __version__
from reportgen.compute.cam.normalise import FLAG_REASONS
from reportgen.compute.metrics.attention import verdict as ratio_verdict
from reportgen.render.figures import OVERLAY_VARIANTS
from reportgen.report import layout
from reportgen.report.layout import cell_figure_name
from reportgen.report.results import (
    AggregateRow,
    Cell,
    ImageResult,
    MetricDefinition,
    ReportContext,
    SanityRow,
    ShownValue,
)
from reportgen.report.statistics import DatasetStats, ImageSummary, PairAgreement, metric_float

VERDICT_LABELS: dict[str, str] = {
    "excellent": "Excellent",
    "good": "Good",
    "fair": "Fair",
    "concerning": "Concerning",
    "invalid": "Invalid",
    "n/a": "n/a",
}
"""The text label of every verdict (colour is never the only cue)."""

VERDICT_ORDER: tuple[str, ...] = ("invalid", "concerning", "fair", "good", "excellent", "n/a")
"""Verdicts from worst to best; n/a (nothing to judge) comes last."""

RATIO_METRIC = "attention_ratio"
OUTSIDE_LIMITS = "not computed: outside the limits set by the spec"
"""Why a map computed for a layer and method has no value of a metric: the spec limited
the metric to other layers, methods or images (see its limits)."""

PairLookup = Callable[[str, str], tuple[float | None, int]]
"""(a, b) -> (mean Spearman rho of the pair or None, number of images)."""


# --------------------------------------------------------------------------- formatting


def format_number(value: float | None) -> str:
    """Fixed formatting of a metric number: 3 decimals for ordinary magnitudes,
    scientific notation for very small or very large ones, "∞" for infinity."""
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    magnitude = abs(value)
    if magnitude == 0.0:
        return "0.000"
    if magnitude < 1e-3 or magnitude >= 1e5:
        return f"{value:.2e}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}"


def format_count(value: int) -> str:
    """An integer with thousands separators."""
    return f"{value:,}"


def format_seconds(value: float) -> str:
    """A duration in seconds, fixed to 2 decimals."""
    return f"{value:.2f} s"


def _safe_link(url: str) -> bool:
    # web and mail links only: a relative or file: link would point into the machine
    # that built the report, and javascript: would run
    return url.strip().lower().startswith(("https://", "http://", "mailto:"))


BREAK_EVERY = 30
_LONG_RUN = re.compile(rf"\S{{{BREAK_EVERY + 1},}}")


def breakable(text: str) -> Markup:
    """`text` escaped, with a line-break opportunity (`<wbr>`) every `BREAK_EVERY`
    characters of a run without spaces (a pasted hash, URL or path).

    CSS `overflow-wrap: anywhere` would wrap it too, but WeasyPrint then searches the whole
    remaining run for every line it breaks: a 20,000-character word took minutes to lay
    out, growing with the square of its length (1,000 characters: 6 s; 4,000: 125 s).
    `<wbr>` keeps copied text and the PDF's text layer free of invisible characters."""
    pieces: list[str] = []
    last = 0
    for run in _LONG_RUN.finditer(text):
        pieces.append(escape(text[last:run.start()]))
        word = run.group()
        pieces.append(Markup("<wbr>").join(escape(word[i:i + BREAK_EVERY])
                                           for i in range(0, len(word), BREAK_EVERY)))
        last = run.end()
    pieces.append(escape(text[last:]))
    return Markup("").join(pieces)


def _breakable_token(self, tokens, idx, options, env) -> str:  # markdown-it's rule signature
    return breakable(tokens[idx].content)


def _breakable_code(self, tokens, idx, options, env) -> str:
    return f"<code>{breakable(tokens[idx].content)}</code>"


_MARKDOWN = MarkdownIt("commonmark", {"html": False}).disable("image")
_MARKDOWN.validateLink = _safe_link
_MARKDOWN.add_render_rule("text", _breakable_token)
_MARKDOWN.add_render_rule("code_inline", _breakable_code)


def markdown(text: str, top: int = 3) -> Markup:
    """The spec's free text (CommonMark) as HTML. Raw HTML is shown as text, images are
    not embedded (a dossier shows no outside files) and links are web or mail links only;
    headings start at level `top`, under the page's own."""
    tokens = _MARKDOWN.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + top - 1)}"
    return Markup(_MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {}))


def href(path: str) -> str:
    """A relative URL for a site path, percent-encoded with '/' kept ('#' too: a PDF named
    `r#1.pdf` is a file, not a fragment), or for a fragment of this page (`#image-x`)."""
    if path.startswith("#"):
        return "#" + quote(path[1:], safe="")
    return quote(path, safe="/")


# --------------------------------------------------------------------------- small views


@dataclass(frozen=True)
class VerdictView:
    key: str  # excellent | good | fair | concerning | invalid | n/a
    label: str
    css: str  # class name: verdict-excellent ... verdict-na


def verdict_view(name: str) -> VerdictView:
    """The badge of a verdict; unknown names read as n/a."""
    key = name if name in VERDICT_LABELS else "n/a"
    return VerdictView(key, VERDICT_LABELS[key], "verdict-" + key.replace("/", ""))


def verdict_rank(name: str) -> int:
    """Position of a verdict from worst (0) to best; n/a and unknown last."""
    return VERDICT_ORDER.index(name) if name in VERDICT_ORDER else len(VERDICT_ORDER) - 1


def verdict_rank_best_first(name: str) -> int:
    """Position of a verdict from best (0) to worst; n/a and unknown still last."""
    rank = verdict_rank(name)
    last = len(VERDICT_ORDER) - 1  # n/a
    return last if rank == last else last - 1 - rank


def worst_verdict(verdicts: Iterable[str]) -> str:
    """The worst verdict among `verdicts` (n/a only when nothing else is there)."""
    ranked = sorted(verdicts, key=verdict_rank)
    return ranked[0] if ranked else "n/a"


def median_verdict(verdicts: Iterable[str]) -> str:
    """The median of the defined verdicts (n/a left out; of two middle ones, the worse),
    n/a only when none is defined. The worst verdict of many maps is nearly always
    "concerning" (some method fails on some layer), so it cannot summarise them; the
    median says what is typical, and the worst is named beside it."""
    ranked = sorted((v for v in verdicts if v != "n/a"), key=verdict_rank)
    return ranked[(len(ranked) - 1) // 2] if ranked else "n/a"


@dataclass(frozen=True)
class VerdictSummary:
    """The median verdict of several layer x method verdicts, and where the worst is."""

    median: str
    worst: str
    worst_at: list[str]  # "layer × method" of every verdict equal to the worst
    counts: list[tuple[VerdictView, int]]  # verdict -> how many, best first
    layers: list[str]  # the layers counted
    left_out: str = ""  # a sentence: which layers are not counted, and why
    approximate_at: list[str] = field(default_factory=list)  # counted approximate maps
    sanity_failed: list[str] = field(default_factory=list)  # counted maps failing the check
    undefined_at: list[str] = field(default_factory=list)  # "layer × method" of n/a verdicts

    @property
    def view(self) -> VerdictView:
        return verdict_view(self.median)

    @property
    def worst_text(self) -> str:
        """E.g. "worst: concerning at encoder_last × gradcam++", then where no verdict is
        defined (a blank map is no evidence either way, but must not go unmentioned);
        empty when there is nothing more to say than the median."""
        parts = []
        if self.worst not in (self.median, "n/a"):
            parts.append(f"worst: {VERDICT_LABELS[self.worst].lower()} at "
                         + _listed(self.worst_at))
        if self.undefined_at and self.median != "n/a":
            parts.append("no verdict at " + _listed(self.undefined_at))
        return "; ".join(parts)


def map_name(key: tuple[str, str], approximate: Collection[tuple[str, str]] = ()) -> str:
    """"layer × method", with "≈" when its maps are approximate."""
    return f"{key[0]} × {key[1]}" + (" ≈" if key in approximate else "")


def _listed(where: Sequence[str], shown: int = 3) -> str:
    """The first `shown` of `where`, and how many more."""
    more = len(where) - shown
    return ", ".join(where[:shown]) + (f" and {more} more" if more > 0 else "")


def summarise_verdicts(verdicts: Mapping[tuple[str, str], str], layers: Sequence[str],
                       approximate: Collection[tuple[str, str]] = ()) -> VerdictSummary:
    """The median and worst of the (layer, method) -> verdict entries at `layers` (every
    layer when empty); entries in `approximate` are named with "≈"."""
    chosen = {key: name for key, name in verdicts.items() if not layers or key[0] in layers}
    worst = worst_verdict(v for v in chosen.values() if v != "n/a")
    tally: dict[str, int] = {}
    for name in chosen.values():
        tally[name] = tally.get(name, 0) + 1
    counts = [(verdict_view(name), tally[name]) for name in reversed(VERDICT_ORDER[:-1])
              if name in tally] + ([(verdict_view("n/a"), tally["n/a"])] if "n/a" in tally
                                   else [])
    return VerdictSummary(
        median=median_verdict(chosen.values()), worst=worst,
        worst_at=[map_name(key, approximate) for key, name in chosen.items() if name == worst],
        undefined_at=[map_name(key, approximate) for key, name in chosen.items()
                      if name == "n/a"],
        counts=counts, layers=sorted({key[0] for key in chosen}, key=list(layers).index)
        if layers else sorted({key[0] for key in chosen}))


class Footnotes:
    """Numbered reasons for n/a values, each reason numbered once per table or page."""

    def __init__(self) -> None:
        self._numbers: dict[str, int] = {}

    def cite(self, reason: str) -> int:
        if reason not in self._numbers:
            self._numbers[reason] = len(self._numbers) + 1
        return self._numbers[reason]

    @property
    def notes(self) -> list[tuple[int, str]]:
        return [(number, reason) for reason, number in self._numbers.items()]


@dataclass(frozen=True)
class ValueView:
    text: str
    note: int | None = None  # footnote number of the n/a reason
    missing: bool = False
    approximate: bool = False  # of an approximate map: shown with "≈"


def value_view(value: ShownValue | float | None, notes: Footnotes,
               absent: str = "not computed", approximate: bool = False) -> ValueView:
    """A metric value for a table: the formatted number (marked when it is a value of an
    approximate map), or n/a with a cited reason."""
    if isinstance(value, int | float):
        number: float | None = float(value)
        reason = "undefined"
    elif value is None:
        number, reason = None, absent
    else:
        number, reason = metric_float(value), value.reason or "undefined"
    if number is None:
        return ValueView("n/a", notes.cite(reason), missing=True)
    return ValueView(format_number(number), approximate=approximate)


@dataclass(frozen=True)
class Definition:
    name: str
    title: str
    formula: str
    direction: str
    reference: str


def definitions_for(names: Iterable[str], context: ReportContext) -> list[Definition]:
    """Definitions of `names`, in the registry's order; unknown names come last, sorted."""
    wanted = set(names)
    known = {d.name: d for d in context.metric_definitions}
    ordered = [definition_view(d) for d in context.metric_definitions if d.name in wanted]
    ordered += [Definition(name, name.replace("_", " "), "", "", "")
                for name in sorted(wanted - set(known))]
    return ordered


READINGS = {"higher": "higher is better", "lower": "lower is better",
            "n/a": "descriptive: neither higher nor lower is better"}
"""A metric's direction as the report reads it ("n/a" there would read as a missing value)."""


def definition_view(definition: MetricDefinition) -> Definition:
    return Definition(definition.name, definition.title, definition.formula,
                      READINGS.get(definition.direction, definition.direction),
                      definition.reference)


@dataclass(frozen=True)
class Link:
    href: str
    label: str


@dataclass(frozen=True)
class NavItem:
    href: str
    label: str
    current: bool


@dataclass
class PageView:
    """What every page shares: titles, navigation, stylesheet and script links."""

    title: str
    report_title: str
    report_id: str
    root: str
    nav: list[NavItem]
    bounds: list[str]
    footer: str
    stylesheet: str
    script: str
    approximate_note: str  # what "≈" means, shown under tables holding it ("" when unused)


NAV = ((layout.INDEX, "Summary"), (f"{layout.INDEX}#images", "Images"),
       (layout.METHODS, "Methods"), (layout.LAYERS, "Layers"), (layout.AUDIT, "Audit"))


def page_view(context: ReportContext, title: str, current: str, root: str = "") -> PageView:
    """The shared frame of a page; `root` is the path from the page to the site root."""
    nav = [NavItem(root + target, label, target == current) for target, label in NAV]
    footer = f"{context.report_id} · {context.date} · reportgen {__version__}"
    return PageView(title=title, report_title=context.title, report_id=context.report_id,
                    root=root, nav=nav, bounds=list(context.bounds), footer=footer,
                    stylesheet=root + layout.STYLESHEET, script=root + layout.SCRIPT,
                    approximate_note=context.approximate_note)


def approximate_at(context: ReportContext, layer: str, method: str) -> bool:
    """Whether the maps of `method` at `layer` are approximations (see the context's note)."""
    return (layer, method) in context.approximate


def shows_approximate(context: ReportContext, stats: DatasetStats) -> bool:
    """Whether any layer x method of the data set has approximate maps (what the agreement
    matrices then mark)."""
    return any(approximate_at(context, layer, method)
               for layer in stats.layers for method in stats.methods)


def noted(page: PageView, marked: bool) -> PageView:
    """`page`, keeping the note on what "≈" means only when something on it is marked."""
    return page if marked else replace(page, approximate_note="")


def ordered_names(context: ReportContext, keys: Iterable[tuple[str, str]]
                  ) -> tuple[list[str], list[str]]:
    """Layers and methods in the spec's order, then any others found in `keys`, sorted."""
    keys = list(keys)
    layers = [row.name for row in context.layers]
    methods = [row.name for row in context.methods]
    layers += sorted({layer for layer, _ in keys} - set(layers))
    methods += sorted({method for _, method in keys} - set(methods))
    return layers, methods


# --------------------------------------------------------------------------- image page


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


def main_figures(context: ReportContext, result: ImageResult,
                 figures: dict[str, str]) -> list[FigureView]:
    """The input, its ground truth (or a placeholder saying there is none) and the
    prediction."""
    source = result.source.name
    main = [FigureView(figures.get("input"), f"Input image {source}", "Input")]
    if result.ground_truth is not None and "ground_truth" in figures:
        mask = result.mask_source.name if result.mask_source else "ground truth"
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


def grid_cell(context: ReportContext, result: ImageResult, figures: dict[str, str],
              position: tuple[int, int], key: tuple[str, str], notes: Footnotes) -> GridCell:
    """The grid cell of `key` (layer, method) at `position` (row, column): its figure
    variants, or why it has none, its verdict and its attention ratio."""
    (r, c), (layer, method) = position, key
    cell = result.cells.get(key)
    problem = cell_problem(cell)
    what = f"{method} map of layer {layer} on {result.source.name}"
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


def image_page_view(context: ReportContext, result: ImageResult, figures: dict[str, str],
                    position: int, total: int, previous: str | None, next_id: str | None,
                    root: str = "../") -> ImagePageView:
    """The page of one image.

    `figures` maps figure names ("input", "ground_truth", "prediction",
    `cell_figure_name(...)`) to their src (a relative path or a data URI); a cell
    whose figures are missing is drawn as a placeholder.
    """
    notes = Footnotes()
    layers, methods = ordered_names(context, result.cells)
    metric_names = sorted({name for cell in result.cells.values() for name in cell.metrics})
    columns = definitions_for(metric_names, context)
    rows = [GridRow(layer, [grid_cell(context, result, figures, (r, c), (layer, method), notes)
                            for c, method in enumerate(methods)])
            for r, layer in enumerate(layers)]
    metric_rows = []
    for row in rows:
        for grid in row.cells:
            cell = result.cells.get((grid.layer, grid.method))
            if cell is None:
                continue
            metric_rows.append(MetricRowView(
                layer=grid.layer, method=grid.method, verdict=grid.verdict,
                values=[value_view(cell.metrics.get(d.name), notes, absent=OUTSIDE_LIMITS)
                        for d in columns],
                flags=", ".join([*cell.flags, *(["approximate"] if grid.approximate else [])]),
                approximate=grid.approximate))

    dice = value_view(result.dice, notes, absent="no ground truth")
    iou = value_view(result.iou, notes, absent="no ground truth")
    return ImagePageView(
        page=noted(page_view(context, f"Image {result.id}", "", root),
                   any(row.approximate for row in metric_rows)),
        id=result.id,
        position=f"Image {position + 1} of {total}",
        previous=Link(href(f"{previous}.html"), previous) if previous else None,
        next=Link(href(f"{next_id}.html"), next_id) if next_id else None,
        source_name=result.source.name,
        mask_name=result.mask_source.name if result.mask_source else "none",
        dice=dice, iou=iou,
        verdict=summarise_verdicts({key: cell.verdict for key, cell in result.cells.items()},
                                   context.verdict_layers, context.approximate),
        notes=list(result.notes),
        figures=main_figures(context, result, figures),
        methods=methods,
        variants=[*OVERLAY_VARIANTS],
        rows=rows,
        metric_columns=columns,
        metric_rows=metric_rows,
        footnotes=notes.notes,
        colorbar=figures.get("colorbar", root + layout.COLORBAR),
        colormap=context.colormap,
        alpha=f"{context.alpha:.2f}",
        aspect=f"{result.display.shape[1]} / {result.display.shape[0]}",
    )


# --------------------------------------------------------------------------- index page


@dataclass(frozen=True)
class PlotView:
    title: str
    src: str | None  # None: no plot, `reason` says why
    alt: str
    caption: str
    reason: str = ""
    width: int = 0  # pixels, so the page keeps the plot's place before it loads
    height: int = 0


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


def aggregate_index(aggregates: Iterable[AggregateRow]) -> dict[tuple[str, str, str], AggregateRow]:
    """Aggregates keyed by (layer, method, metric)."""
    return {(row.layer, row.method, row.metric): row for row in aggregates}


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


def na_reason_text(row: AggregateRow) -> str:
    """Why images of an aggregate have no value: the reason, or "reason (N images); ..."
    when there are several (the n/a column gives the total)."""
    if len(row.na_reasons) == 1:
        return next(iter(row.na_reasons))
    return "; ".join(f"{reason} ({count} image{'s' if count != 1 else ''})"
                     for reason, count in sorted(row.na_reasons.items()))


def missing_statistic(row: AggregateRow, statistic: str) -> str:
    """Why a statistic of an aggregate is undefined, in words: when no image has a value,
    the images' own reasons (the note the n/a count cites too)."""
    if row.n == 0:
        return na_reason_text(row) or "no image has a value"
    if statistic == "std" and row.n == 1:
        return "std needs 2 or more values; 1 image has one"
    if any(value is not None and math.isinf(value) for value in (row.min, row.max)):
        return f"{statistic} undefined: the values include ∞"
    return f"{statistic} undefined"


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


def downloads(context: ReportContext) -> list[Link]:
    """Links to the data files, and to the PDF where the spec asked for one."""
    links = [Link(path, label) for path, label in layout.DATA_FILES]
    if context.pdf:
        links.append(Link(href(context.pdf), "Archival report (PDF)"))
    return links


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


# --------------------------------------------------------------------------- methods, layers


@dataclass
class SanityRowView:
    layer: str
    method: str
    levels: list[tuple[str, ValueView, ValueView]]
    threshold: str
    passed: str  # "passed" | "failed" | "undefined"
    reason: str


@dataclass
class MatrixView:
    """A symmetric table of mean Spearman rho between names (methods or layers)."""

    title: str
    names: list[str]
    rows: list[list[ValueView]]
    shades: list[list[str]]  # CSS class per cell: agree-high | agree-mid | agree-low | ""


def agreement_shade(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 0.7:
        return "agree-high"
    if value >= 0.4:
        return "agree-mid"
    return "agree-low"


def agreement_matrix(title: str, names: list[str], lookup: PairLookup,
                     notes: Footnotes, approximate: Collection[str] = ()) -> MatrixView:
    """A matrix of mean rho from `lookup(a, b) -> (mean or None, count)`; the names in
    `approximate` (whose maps are approximate there) are labelled with "≈"."""
    rows, shades = [], []
    for first in names:
        row, shade = [], []
        for second in names:
            if first == second:
                row.append(ValueView("—"))
                shade.append("")
                continue
            mean, count = lookup(first, second)
            row.append(value_view(mean, notes, absent="no pair of defined, non-constant maps")
                       if mean is None else ValueView(format_number(mean)))
            shade.append(agreement_shade(mean))
        rows.append(row)
        shades.append(shade)
    labels = [f"{name} ≈" if name in approximate else name for name in names]
    return MatrixView(title, labels, rows, shades)


def pooled_lookup(groups: list[str], agreement: PairAgreement) -> PairLookup:
    """Lookup of a pair's rho averaged over every group (weighted by image count)."""
    def lookup(first: str, second: str) -> tuple[float | None, int]:
        total, count = 0.0, 0
        for group in groups:
            mean, n = agreement.mean(group, first, second)
            if mean is not None:
                total += mean * n
                count += n
        return (total / count if count else None), count
    return lookup


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
class MeansTable:
    """Rows x columns of dataset means of one metric (or of several metrics)."""

    title: str
    definition: Definition | None
    row_label: str
    columns: list[str]
    rows: list[tuple[str, list[ValueView]]]


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


def dataset_metric_names(stats: DatasetStats) -> list[str]:
    """Metric names seen in any cell, sorted."""
    names = set()
    for summary in stats.summaries:
        for metrics in summary.metrics.values():
            names.update(metrics)
    return sorted(names)


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


def layers_view(context: ReportContext, stats: DatasetStats, aggregates: Sequence[AggregateRow],
                plots: list[PlotView], rank_size: int) -> LayersView:
    """How attention changes through the network: per-layer means for every metric."""
    notes = Footnotes()
    layers = [LayerView(row.name, row.path,
                        "—" if row.channels is None else format_count(row.channels),
                        "—" if row.stride is None else f"{row.stride:g}", row.meaning)
              for row in context.layers]
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


# --------------------------------------------------------------------------- audit page


@dataclass
class AuditView:
    page: PageView
    spec_name: str
    spec_text: str
    hashes: list[tuple[str, str]]
    downloads: list[Link]
    runtime: list[tuple[str, str]]
    versions: list[tuple[str, str]]
    timings: list[tuple[str, str]]
    warnings: list[str]
    excluded: list[tuple[str, str]]
    images: list[tuple[Link, str, str]]


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


def audit_view(context: ReportContext, stats: DatasetStats,
               link: str = layout.IMAGE_PAGE) -> AuditView:
    """Spec, hashes, software, device, timings, warnings and exclusions."""
    card = context.model
    runtime = [("Device", context.device), ("Precision", context.precision),
               ("Seed", str(context.seed)), ("Colormap", context.colormap),
               ("Overlay opacity", f"{context.alpha:.2f}"),
               ("Target region", context.target_region)]
    images = [(Link(href(link.format(id=s.id)), s.id), s.source_name, s.mask_name or "none")
              for s in stats.summaries]
    return AuditView(
        page=page_view(context, "Audit", layout.AUDIT),
        spec_name=context.spec_name, spec_text=context.spec_text,
        hashes=[("Checkpoint", card.checkpoint_name),
                ("Checkpoint SHA-256", card.checkpoint_sha256),
                ("Checkpoint format", card.checkpoint_format)],
        downloads=downloads(context),
        runtime=runtime,
        versions=sorted(context.versions.items()),
        timings=[(stage, format_seconds(seconds)) for stage, seconds in context.timings.items()],
        warnings=list(context.warnings),
        excluded=list(context.excluded),
        images=images,
    )
