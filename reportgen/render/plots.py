"""Dataset plots, drawn once per report with matplotlib's Agg canvas.

Each plot is rendered to an RGBA buffer and encoded with OpenCV, so its bytes
depend only on the data (no timestamp, no software tag). A plot without data is
not drawn; its `reason` says why, and the page prints that sentence instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from reportgen.compute.metrics.attention import VerdictBands
from reportgen.compute.metrics.faithfulness import Baseline
from reportgen.render.figures import encode_png
from reportgen.report.results import SanityRow
from reportgen.report.statistics import CURVE_POINTS, DatasetStats

DPI = 100
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e6ea",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#6b7280",
    "axes.labelcolor": "#1f2933",
    "xtick.color": "#3e4c59",
    "ytick.color": "#3e4c59",
    "legend.frameon": False,
}
VERDICT_LINES = VerdictBands().lines
"""The default verdict bands' bounds (fair, good, excellent), always on the axis."""
BAND_COLOURS = ("#c62828", "#f0b429", "#7cc37f", "#1b7f3b")  # concerning .. excellent
CURVE_FLAT = 0.05
"""A mean deletion/insertion curve whose score moves less than this cannot rank maps."""
TICK_CROWDING = 0.35  # decades: closer tick labels overlap on a plot 3 inches high
TICK_CROWDING_SPAN = 3.0  # decades of axis from which that happens


@dataclass(frozen=True)
class Plot:
    """One dataset plot: PNG bytes, or None with the reason it is missing."""

    name: str  # file stem under plots/
    title: str
    png: bytes | None
    alt: str
    caption: str
    reason: str = ""


def palette(count: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours (matplotlib's tab10, cycled)."""
    table = matplotlib.colormaps["tab10"]
    return [table(index % 10) for index in range(count)]


def new_figure(width: float, height: float) -> Figure:
    """A figure of `width` x `height` inches (no pyplot: no global figure state)."""
    return Figure(figsize=(width, height), dpi=DPI, layout="tight")


def to_png(figure: Figure) -> bytes:
    """Render `figure` with Agg and encode the pixels as PNG."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return encode_png(np.ascontiguousarray(rgba[:, :, :3]))


def styled(draw: Callable[..., Plot]) -> Callable[..., Plot]:
    """Run a drawing function under the site's matplotlib style."""

    @functools.wraps(draw)
    def wrapper(*args: object, **kwargs: object) -> Plot:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def on_ratio_axis(value: float, axis: RatioAxis) -> float:
    """Where a ratio is drawn: itself, or the 0 / ∞ row of `axis` (NaN stays NaN)."""
    if value == 0 and axis.zero_row is not None:
        return axis.zero_row
    if value == math.inf and axis.infinite_row is not None:
        return axis.infinite_row
    return value


def split_ratios(values: Sequence[float]) -> RatioGroup:
    """Ratios as a box plot on a log axis can hold them (the layer/method left empty)."""
    return RatioGroup("", "", [v for v in values if math.isfinite(v) and v > 0],
                      sum(1 for v in values if v <= 0),
                      sum(1 for v in values if v == math.inf))


@dataclass(frozen=True)
class RatioGroup:
    """The attention ratios of one layer x method, split by how a log axis can show them."""

    layer: str
    method: str
    positive: list[float]  # finite and above 0: drawn as the box
    zero: int  # 0, no attention inside the mask: counted on the axis' "0" row
    infinite: int  # +inf, no attention outside the mask: counted on the axis' "∞" row


def ratio_groups(stats: DatasetStats) -> list[RatioGroup]:
    """The attention ratios of every layer x method, layers first."""
    groups = []
    for layer in stats.layers:
        for method in stats.methods:
            split = split_ratios(stats.metric_values("attention_ratio", layer, method))
            groups.append(RatioGroup(layer, method, split.positive, split.zero,
                                     split.infinite))
    return groups


@dataclass(frozen=True)
class RatioAxis:
    """The log axis of the attention-ratio plot."""

    limits: tuple[float, float]  # the whole axis, edge rows included
    data: tuple[float, float]  # the part that holds the finite positive ratios
    zero_row: float | None  # where ratios of 0 are marked (below `data`), None if none
    infinite_row: float | None  # where infinite ratios are marked (above `data`), None if none


def ratio_axis(groups: Sequence[RatioGroup],
               lines: Sequence[float] = VERDICT_LINES) -> RatioAxis:
    """Limits that hold every finite positive ratio and the verdict lines with a margin of
    8% of the span (in decades) plus 0.1 decade, and, when any ratio is 0 or infinite, a
    row of a tenth of that height below or above for it (a log axis has no 0 or ∞)."""
    values = [v for group in groups for v in group.positive] + list(lines)
    low, high = math.log10(min(values)), math.log10(max(values))
    margin = 0.08 * (high - low) + 0.1
    low, high = low - margin, high + margin
    row = 0.1 * (high - low)
    zeros = any(group.zero for group in groups)
    infinities = any(group.infinite for group in groups)
    return RatioAxis(
        limits=(10 ** (low - row * zeros), 10 ** (high + row * infinities)),
        data=(10 ** low, 10 ** high),
        zero_row=10 ** (low - row / 2) if zeros else None,
        infinite_row=10 ** (high + row / 2) if infinities else None,
    )


def ratio_ticks(axis: RatioAxis,
                lines: Sequence[float] = VERDICT_LINES) -> tuple[list[float], list[str]]:
    """The powers of ten and verdict lines inside the data part, then the 0 and ∞ rows.

    A power of ten within `TICK_CROWDING` decades of a verdict line or of the 0 and ∞ rows
    is left out on an axis of `TICK_CROWDING_SPAN` decades or more (10 beside 5): the two
    labels would overlap.
    """
    low, high = (math.log10(limit) for limit in axis.data)
    decades = {10.0 ** k for k in range(math.ceil(low), math.floor(high) + 1)}
    if high - low >= TICK_CROWDING_SPAN:
        kept = [*lines, *(row for row in (axis.zero_row, axis.infinite_row) if row)]
        decades = {d for d in decades if d in lines or all(
            abs(math.log10(d / other)) >= TICK_CROWDING for other in kept)}
    ticks = sorted(decades | set(lines))
    labels = [f"{tick:,.0f}" if tick >= 1 else f"{tick:g}" for tick in ticks]
    if axis.zero_row is not None:
        ticks, labels = [axis.zero_row, *ticks], ["0", *labels]
    if axis.infinite_row is not None:
        ticks, labels = [*ticks, axis.infinite_row], [*labels, "∞"]
    return ticks, labels


def ratio_caption(groups: Sequence[RatioGroup], lines: Sequence[float] = VERDICT_LINES) -> str:
    """What the plot shows, and exactly which ratios are not in the boxes and why."""
    fair, good, excellent = (f"{line:g}" for line in lines)
    caption = (f"Dashed lines: verdict bands ({fair} fair, {good} good, {excellent} excellent); "
               "shaded background: concerning (red) to excellent (green). The axis holds every "
               "finite, positive ratio.")
    for field, what, marker, row, edge in (
            ("zero", "of exactly 0 (no attention inside the mask)", "▼", "0", "bottom"),
            ("infinite", "that are infinite (no attention outside the mask)", "▲", "∞", "top")):
        counted = [(group, getattr(group, field)) for group in groups if getattr(group, field)]
        total = sum(count for _, count in counted)
        if total:
            where = "; ".join(f"{group.layer} × {group.method}: {count}"
                              for group, count in counted)
            caption += (f" {total} ratio{'s' if total != 1 else ''} {what} cannot be placed on "
                        f"a log axis: they are counted per layer × method ({marker} and the "
                        f"count) on the “{row}” row at the {edge} edge and left out of the boxes "
                        f"({where}).")
    return caption


@styled
def attention_ratio_plot(stats: DatasetStats) -> Plot:
    """Box plots of the attention ratio per layer x method, on a log axis fitted to the
    data with the verdict bands shaded behind them; ratios of 0 and infinite ratios are
    counted on rows of their own at the bottom and top edges."""
    title = "Attention ratio per layer and method"
    groups = ratio_groups(stats)
    if not any(group.positive or group.zero or group.infinite for group in groups):
        return Plot("attention_ratio", title, None, "", "",
                    "No attention ratio is defined for any image, layer and method, so there "
                    "is no distribution to plot.")
    methods = stats.methods
    colours = dict(zip(methods, palette(len(methods)), strict=True))
    width = max(6.0, 0.38 * len(groups) + 2.0)
    figure = new_figure(min(width, 13.0), 3.8)
    axes = figure.add_subplot()
    axes.set_yscale("log")
    lines = stats.verdict_bands.lines
    axis = ratio_axis(groups, lines)
    edges = (axis.data[0], *lines, axis.data[1])
    for low, high, colour in zip(edges[:-1], edges[1:], BAND_COLOURS, strict=True):
        axes.axhspan(low, high, color=colour, alpha=0.08, linewidth=0)
    step = len(methods) + 1
    positions = [layer_index * step + method_index
                 for layer_index in range(len(stats.layers))
                 for method_index in range(len(methods))]
    boxed = [(position, group) for position, group in zip(positions, groups, strict=True)
             if group.positive]
    if boxed:
        boxes = axes.boxplot([group.positive for _, group in boxed],
                             positions=[position for position, _ in boxed], widths=0.7,
                             patch_artist=True, showfliers=True,
                             flierprops={"markersize": 2.5, "alpha": 0.6},
                             medianprops={"color": "#111827", "linewidth": 1.2})
        for patch, (_, group) in zip(boxes["boxes"], boxed, strict=True):
            patch.set_facecolor(colours[group.method])
            patch.set_alpha(0.75)
    for line in lines:
        axes.axhline(line, color="#6b7280", linewidth=0.7, linestyle="--")
    for row, boundary, field, marker in ((axis.zero_row, axis.data[0], "zero", "v"),
                                         (axis.infinite_row, axis.data[1], "infinite", "^")):
        if row is None:
            continue
        axes.axhline(boundary, color="#6b7280", linewidth=0.8)
        for position, group in zip(positions, groups, strict=True):
            count = getattr(group, field)
            if count:
                axes.plot(position, row, marker=marker, markersize=6, linestyle="none",
                          color=colours[group.method], markeredgecolor="#111827")
                axes.annotate(str(count), (position, row), xytext=(5, 0),
                              textcoords="offset points", va="center", fontsize=7)
    axes.set_ylim(*axis.limits)
    axes.set_yticks(*ratio_ticks(axis, lines))
    axes.yaxis.set_minor_locator(NullLocator())
    axes.set_xlim(-0.8, positions[-1] + 0.8)
    axes.set_xticks([i * step + (len(methods) - 1) / 2 for i in range(len(stats.layers))])
    axes.set_xticklabels(stats.layers, rotation=0)
    axes.set_ylabel("attention ratio (log scale)")
    handles = [Patch(color=colours[m], alpha=0.75, label=m) for m in methods]
    if axis.zero_row is not None:
        handles.append(Line2D([], [], marker="v", linestyle="none", color="#9ca3af",
                              markeredgecolor="#111827", label="ratios of 0 (count)"))
    if axis.infinite_row is not None:
        handles.append(Line2D([], [], marker="^", linestyle="none", color="#9ca3af",
                              markeredgecolor="#111827", label="infinite ratios (count)"))
    axes.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.01),
                ncols=min(len(handles), 6), fontsize=8, borderaxespad=0.0)
    zeros = sum(group.zero for group in groups)
    infinite = sum(group.infinite for group in groups)
    alt = (f"Box plots of the attention ratio for {len(stats.layers)} layers and "
           f"{len(methods)} methods on a logarithmic axis from {axis.data[0]:.3g} to "
           f"{axis.data[1]:.3g}; {zeros} ratios of 0 counted below it and {infinite} "
           "infinite ratios counted above it.")
    return Plot("attention_ratio", title, to_png(figure), alt, ratio_caption(groups, lines))


@dataclass(frozen=True)
class CurveCheck:
    """Whether the deletion and insertion curves can tell maps apart."""

    pairs: int  # layer x method with a mean deletion and insertion AUC
    deletion_not_lower: int  # of those, how many have deletion AUC >= insertion AUC
    largest_change: float  # the most any mean curve's score moves (max - min), NaN if none

    @property
    def ranks_maps(self) -> bool:
        """False when most pairs have deletion AUC >= insertion AUC (removing the top-ranked
        pixels hurts the score no more than revealing them helps it) or when no mean curve
        moves by CURVE_FLAT or more."""
        inverted = self.pairs > 0 and 2 * self.deletion_not_lower > self.pairs
        flat = not self.largest_change >= CURVE_FLAT  # NaN (no curve) counts as flat
        return not (inverted or flat)


def curve_check(stats: DatasetStats) -> CurveCheck:
    """The mean deletion and insertion AUC of each layer x method, and how far its mean
    curves move."""
    pairs = inverted = 0
    for layer in stats.layers:
        for method in stats.methods:
            deletion = stats.metric_values("deletion_auc", layer, method)
            insertion = stats.metric_values("insertion_auc", layer, method)
            if deletion and insertion:
                pairs += 1
                inverted += bool(np.mean(deletion) >= np.mean(insertion))
    changes = [float(np.ptp(total / stats.curves.counts[key]))
               for key, total in stats.curves.sums.items()]
    return CurveCheck(pairs, inverted, max(changes, default=math.nan))


def curve_axis_limits(curves: Sequence[np.ndarray]) -> tuple[float, float]:
    """The whole range of the score, a probability in [0, 1], widened to any value outside
    it, with a 2% margin: small changes look small."""
    low = min([0.0, *(float(np.min(curve)) for curve in curves)])
    high = max([1.0, *(float(np.max(curve)) for curve in curves)])
    margin = 0.02 * (high - low)
    return low - margin, high + margin


def curves_caption(check: CurveCheck) -> str:
    """How to read the curves, and a plain warning when they cannot rank the maps."""
    caption = ("Deletion: a faithful map makes the score fall fast (low area under the curve). "
               "Insertion: the score rises fast (high area). The score is the model's mean "
               "probability of the target class over the target region, drawn on its whole "
               "range 0 to 1.")
    if check.ranks_maps:
        return caption
    reasons = []
    if check.pairs and 2 * check.deletion_not_lower > check.pairs:
        reasons.append(f"the deletion AUC is not below the insertion AUC for "
                       f"{check.deletion_not_lower} of {check.pairs} layer × method pairs")
    if not check.largest_change >= CURVE_FLAT:
        moved = ("no mean curve was computed" if math.isnan(check.largest_change) else
                 f"no mean curve's score moves by more than {check.largest_change:.3f}")
        reasons.append(moved)
    choices = " and ".join(get_args(Baseline))
    return (f"{caption} Warning: these curves do not rank the maps: {' and '.join(reasons)}, "
            "so replacing the pixels the maps rank highest with the baseline barely changes "
            "the model's score. Try another metric_options.faithfulness.baseline (the "
            f"choices are {choices}; the one used is under Limits set by the spec).")


@styled
def curves_plot(stats: DatasetStats) -> Plot:
    """Mean deletion and insertion curves per method (over layers and images), on the
    score's whole range."""
    title = "Deletion and insertion curves"
    curves = {name: stats.curves.per_method(name, stats.methods)
              for name in ("deletion", "insertion")}
    if not any(curves.values()):
        return Plot("curves", title, None, "", "",
                    "No deletion or insertion curve was computed (the faithfulness metrics "
                    "were not requested or were undefined), so there is nothing to plot.")
    colours = dict(zip(stats.methods, palette(len(stats.methods)), strict=True))
    figure = new_figure(9.0, 3.2)
    fraction = np.linspace(0.0, 1.0, CURVE_POINTS)
    limits = curve_axis_limits([curve for drawn in curves.values() for curve in drawn.values()])
    for index, name in enumerate(("deletion", "insertion")):
        axes = figure.add_subplot(1, 2, index + 1)
        for method, curve in curves[name].items():
            axes.plot(fraction, curve, color=colours[method], linewidth=1.6, label=method)
        axes.set_title(f"{name.capitalize()} (mean per method)")
        axes.set_xlabel("fraction of pixels " + ("removed" if name == "deletion" else
                                                 "revealed"))
        axes.set_ylabel("target score")
        axes.set_xlim(0, 1)
        axes.set_ylim(*limits)
        if curves[name]:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "no curve", ha="center", va="center",
                      transform=axes.transAxes, color="#6b7280")
    alt = ("Line plots of the mean deletion curve (left) and insertion curve (right) of "
           f"each of {len(curves['deletion'] or curves['insertion'])} methods, score axis "
           f"from {limits[0]:.2f} to {limits[1]:.2f}.")
    return Plot("curves", title, to_png(figure), alt, curves_caption(curve_check(stats)))


@styled
def sanity_plot(rows: Sequence[SanityRow], methods: list[str]) -> Plot:
    """Spearman rho (and SSIM) between trained and randomised maps per randomisation level."""
    title = "Sanity check: model-parameter randomisation"
    usable = [row for row in rows if row.levels and any(v is not None for v in row.spearman)]
    if not usable:
        return Plot("sanity", title, None, "", "",
                    "The sanity check was not run or gave no defined similarity, so there is "
                    "nothing to plot.")
    order = [m for m in methods if any(r.method == m for r in usable)]
    order += sorted({r.method for r in usable} - set(order))
    figure = new_figure(min(3.2 * len(order) + 1.0, 13.0), 3.2)
    layers = sorted({r.layer for r in usable}, key=[r.layer for r in usable].index)
    colours = dict(zip(layers, palette(len(layers)), strict=True))
    shared = axes = None
    for index, method in enumerate(order):
        axes = figure.add_subplot(1, len(order), index + 1, sharey=shared)
        shared = shared or axes
        for row in (r for r in usable if r.method == method):
            x = np.arange(len(row.levels))
            y = [np.nan if v is None else v for v in row.spearman]
            axes.plot(x, y, marker="o", markersize=3, color=colours[row.layer], linewidth=1.4)
            axes.axhline(row.threshold, color="#c62828", linewidth=0.7, linestyle="--")
            axes.set_xticks(x)
            axes.set_xticklabels([str(i + 1) for i in x])
        axes.set_title(method)
        axes.set_xlabel("randomisation level")
        if index == 0:
            axes.set_ylabel("mean |Spearman ρ| with trained map")
    shared.set_ylim(-0.1, 1.05)
    # one legend for every panel, beside the last: a panel may lack a layer (undefined there)
    handles = [Line2D([], [], marker="o", markersize=3, color=colours[layer], linewidth=1.4,
                      label=layer) for layer in layers]
    handles.append(Line2D([], [], color="#c62828", linewidth=0.7, linestyle="--",
                          label="threshold"))
    axes.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5),
                borderaxespad=0.0)
    alt = (f"Line plots, one per method ({', '.join(order)}), of the Spearman correlation "
           "between the trained model's map and the map after each randomisation level.")
    caption = ("Levels randomise the model cumulatively from the output towards the input "
               "(the names are in the table); each point is the mean over images of |ρ| "
               "between the trained and the randomised model's maps. A trustworthy method's "
               "similarity drops below the dashed threshold at the last level.")
    return Plot("sanity", title, to_png(figure), alt, caption)


@styled
def dice_plot(stats: DatasetStats) -> Plot:
    """Histogram of the per-image Dice coefficient."""
    title = "Dice per image"
    values = [s.dice for s in stats.summaries if s.dice is not None]
    if not values:
        return Plot("dice", title, None, "", "",
                    "No image has a defined Dice (no ground-truth masks), so there is no "
                    "histogram.")
    figure = new_figure(5.0, 2.8)
    axes = figure.add_subplot()
    axes.hist(values, bins=np.linspace(0.0, 1.0, 21), color="#2563eb", alpha=0.8,
              edgecolor="white")
    axes.set_xlim(0, 1)
    axes.set_xlabel("Dice")
    axes.set_ylabel("images")
    axes.axvline(float(np.mean(values)), color="#111827", linewidth=1.0, linestyle="--")
    alt = (f"Histogram of the Dice coefficient of {len(values)} images in 20 bins from 0 to 1; "
           f"mean {np.mean(values):.3f}.")
    return Plot("dice", title, to_png(figure), alt, "Dashed line: mean Dice.")


Profile = tuple[list[float], list[float], list[float]]  # medians, lower and upper quartiles


def ratio_profile(stats: DatasetStats) -> dict[str, Profile]:
    """Per method with any defined ratio: the median attention ratio at each layer (as the
    verdict summary's) and the quartiles, observed ratios, so that 0 and ∞ stay exact (an
    interpolated quartile between ∞ and ∞ is undefined). NaN where a layer has none."""
    series = {}
    for method in stats.methods:
        medians, lows, highs = [], [], []
        for layer in stats.layers:
            values = stats.metric_values("attention_ratio", layer, method)
            if values:
                median = float(np.median(values))
                low, high = np.percentile(values, [25, 75], method="nearest")
            else:
                low = median = high = np.nan
            medians.append(median)
            lows.append(float(low))
            highs.append(float(high))
        if not np.all(np.isnan(medians)):
            series[method] = (medians, lows, highs)
    return series


@styled
def layer_profile_plot(stats: DatasetStats) -> Plot:
    """Median attention ratio of each method along the layers, with the interquartile range
    (see `ratio_profile`); 0 and ∞ are drawn on their own rows."""
    title = "Attention ratio through the network"
    series = ratio_profile(stats)
    if not series or len(stats.layers) < 1:
        return Plot("layers", title, None, "", "",
                    "No attention ratio is defined, so the change through the layers cannot "
                    "be shown.")
    colours = dict(zip(stats.methods, palette(len(stats.methods)), strict=True))
    drawn = [v for triple in series.values() for part in triple for v in part
             if not math.isnan(v)]
    lines = stats.verdict_bands.lines
    axis = ratio_axis([split_ratios(drawn)], lines)
    figure = new_figure(max(5.0, 1.4 * len(stats.layers) + 2.0), 3.2)
    axes = figure.add_subplot()
    x = np.arange(len(stats.layers))
    for method, (medians, lows, highs) in series.items():
        placed = [[on_ratio_axis(v, axis) for v in part] for part in (medians, lows, highs)]
        axes.plot(x, placed[0], marker="o", markersize=3.5, color=colours[method],
                  label=method, linewidth=1.6)
        axes.fill_between(x, placed[1], placed[2], color=colours[method], alpha=0.12,
                          linewidth=0)
    axes.set_yscale("log")
    axes.set_ylim(*axis.limits)
    axes.set_yticks(*ratio_ticks(axis, lines))
    axes.minorticks_off()
    for line in lines:
        axes.axhline(line, color="#6b7280", linewidth=0.7, linestyle="--")
    for row in (axis.zero_row, axis.infinite_row):
        if row is not None:
            edge = math.sqrt(row * (axis.data[0] if row < axis.data[0] else axis.data[1]))
            axes.axhline(edge, color="#374151", linewidth=0.8)
    axes.set_xticks(x)
    axes.set_xticklabels(stats.layers)
    axes.set_xlabel("layer (input → output)")
    axes.set_ylabel("median attention ratio (log)")
    # beside the axes: inside, it would cover lines and the 0 and ∞ rows
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), borderaxespad=0.0)
    alt = (f"Line plot of the median attention ratio of {len(series)} methods across "
           f"{len(stats.layers)} layers, with shaded interquartile ranges.")
    caption = ("Shaded: interquartile range over images. Dashed lines: verdict bands "
               f"{', '.join(f'{line:g}' for line in lines)}.")
    if axis.zero_row is not None or axis.infinite_row is not None:
        caption += (" A median or quartile of exactly 0 (no attention inside the mask) or ∞ "
                    "(none outside it) is drawn on the “0” or “∞” row beyond the solid line.")
    return Plot("layers", title, to_png(figure), alt, caption)


@styled
def methods_distribution_plot(stats: DatasetStats, metrics: list[tuple[str, str]]) -> Plot:
    """Side-by-side box plots of each metric per method, pooled over layers.

    `metrics` are (name, title) pairs in display order.
    """
    title = "Metric distributions per method"
    panels = []
    left_out: list[str] = []
    for name, metric_title in metrics:
        data = []
        for method in stats.methods:
            values = stats.metric_values(name, method=method)
            if name == "attention_ratio":  # a log axis: 0 and ∞ are counted, not drawn
                split = split_ratios(values)
                values = split.positive
                left_out += [f"{method}: {count} {what}" for count, what in (
                    (split.zero, "of 0"), (split.infinite, "∞")) if count]
            data.append([v for v in values if math.isfinite(v)])
        if any(data):
            panels.append((name, metric_title, data))
    if not panels:
        return Plot("methods", title, None, "", "",
                    "No metric value is defined for any method, so there is nothing to compare.")
    colours = palette(len(stats.methods))
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(3.4 * columns + 0.4, 2.7 * rows)
    for index, (name, metric_title, data) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        kept = [(i, values) for i, values in enumerate(data) if values]
        boxes = axes.boxplot([values for _, values in kept], positions=[i for i, _ in kept],
                             widths=0.6, patch_artist=True,
                             flierprops={"markersize": 2.5, "alpha": 0.6},
                             medianprops={"color": "#111827", "linewidth": 1.2})
        for patch, (i, _) in zip(boxes["boxes"], kept, strict=True):
            patch.set_facecolor(colours[i])
            patch.set_alpha(0.75)
        axes.set_xticks(range(len(stats.methods)))
        axes.set_xticklabels(stats.methods, rotation=30, ha="right")
        axes.set_xlim(-0.6, len(stats.methods) - 0.4)
        if name == "attention_ratio":
            axes.set_yscale("log")
        axes.set_title(metric_title)
    alt = (f"Box plots of {len(panels)} metrics ({', '.join(t for _, t, _ in panels)}), one "
           f"box per method, pooled over layers and images.")
    caption = "Each box pools every layer and image of one method."
    if left_out:
        caption += (" Attention ratios of 0 or ∞ cannot be placed on its log axis and are "
                    f"left out of the boxes ({'; '.join(left_out)}).")
    return Plot("methods", title, to_png(figure), alt, caption)
