"""What every page's view shares: number and verdict formatting, footnotes, the
spec's Markdown, links and the page frame.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import quote

from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from reportgen import __version__
from reportgen.report import layout
from reportgen.report.results import (
    AggregateRow,
    MetricDefinition,
    ReportContext,
    ShownValue,
)
from reportgen.report.statistics import DatasetStats, PairAgreement, metric_float

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


@dataclass(frozen=True)
class PlotView:
    title: str
    src: str | None  # None: no plot, `reason` says why
    alt: str
    caption: str
    reason: str = ""
    width: int = 0  # pixels, so the page keeps the plot's place before it loads
    height: int = 0


def aggregate_index(aggregates: Iterable[AggregateRow]) -> dict[tuple[str, str, str], AggregateRow]:
    """Aggregates keyed by (layer, method, metric)."""
    return {(row.layer, row.method, row.metric): row for row in aggregates}


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


def downloads(context: ReportContext) -> list[Link]:
    """Links to the data files, and to the PDF where the spec asked for one."""
    links = [Link(path, label) for path, label in layout.DATA_FILES]
    if context.pdf:
        links.append(Link(href(context.pdf), "Archival report (PDF)"))
    return links


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
class MeansTable:
    """Rows x columns of dataset means of one metric (or of several metrics)."""

    title: str
    definition: Definition | None
    row_label: str
    columns: list[str]
    rows: list[tuple[str, list[ValueView]]]


def dataset_metric_names(stats: DatasetStats) -> list[str]:
    """Metric names seen in any cell, sorted."""
    names = set()
    for summary in stats.summaries:
        for metrics in summary.metrics.values():
            names.update(metrics)
    return sorted(names)
