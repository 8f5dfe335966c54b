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

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reportgen.render.figures import encode_png
from reportgen.render.stats import CURVE_POINTS, DatasetStats
from reportgen.report import SanityRow

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
RATIO_FLOOR, RATIO_CEILING = 1e-2, 1e3
VERDICT_BANDS = ((RATIO_FLOOR, 1.0, "#c62828"), (1.0, 2.0, "#f0b429"),
                 (2.0, 5.0, "#7cc37f"), (5.0, RATIO_CEILING, "#1b7f3b"))


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


def clip_ratios(values: list[float]) -> tuple[list[float], int]:
    """Ratios clipped to the plotted range; infinite ratios are counted, not plotted."""
    finite = [min(max(v, RATIO_FLOOR), RATIO_CEILING) for v in values if math.isfinite(v)]
    return finite, len(values) - len(finite)


@styled
def attention_ratio_plot(stats: DatasetStats) -> Plot:
    """Box plots of the attention ratio per layer x method, on a log scale with the
    verdict bands shaded behind them."""
    title = "Attention ratio per layer and method"
    groups: list[tuple[str, str, list[float]]] = []
    infinite = 0
    for layer in stats.layers:
        for method in stats.methods:
            values, dropped = clip_ratios(stats.metric_values("attention_ratio", layer, method))
            infinite += dropped
            groups.append((layer, method, values))
    if not any(values for _, _, values in groups):
        return Plot("attention_ratio", title, None, "", "",
                    "No attention ratio is defined for any image, layer and method, so there "
                    "is no distribution to plot.")
    methods = stats.methods
    colours = dict(zip(methods, palette(len(methods)), strict=True))
    width = max(6.0, 0.38 * len(groups) + 2.0)
    figure = new_figure(min(width, 13.0), 3.8)
    axes = figure.add_subplot()
    for low, high, colour in VERDICT_BANDS:
        axes.axhspan(low, high, color=colour, alpha=0.08, linewidth=0)
    step = len(methods) + 1
    positions, data, box_colours = [], [], []
    for index, (_, method, values) in enumerate(groups):
        if values:
            layer_index, method_index = divmod(index, len(methods))
            positions.append(layer_index * step + method_index)
            data.append(values)
            box_colours.append(colours[method])
    boxes = axes.boxplot(data, positions=positions, widths=0.7, patch_artist=True,
                         showfliers=True, flierprops={"markersize": 2.5, "alpha": 0.6},
                         medianprops={"color": "#111827", "linewidth": 1.2})
    for patch, colour in zip(boxes["boxes"], box_colours, strict=True):
        patch.set_facecolor(colour)
        patch.set_alpha(0.75)
    axes.set_yscale("log")
    axes.set_ylim(RATIO_FLOOR, RATIO_CEILING)
    for line in (1.0, 2.0, 5.0):
        axes.axhline(line, color="#6b7280", linewidth=0.7, linestyle="--")
    axes.set_xticks([i * step + (len(methods) - 1) / 2 for i in range(len(stats.layers))])
    axes.set_xticklabels(stats.layers, rotation=0)
    axes.set_ylabel("attention ratio (log scale)")
    handles = [axes.bar(0, 0, color=colours[m], alpha=0.75, label=m) for m in methods]
    axes.legend(handles=handles, loc="upper left", ncols=min(len(methods), 4), fontsize=8)
    caption = ("Dashed lines: verdict bands (1 fair, 2 good, 5 excellent); shaded background: "
               "concerning (red) to excellent (green).")
    if infinite:
        caption += (f" {infinite} infinite ratio{'s' if infinite != 1 else ''} (no attention "
                    "outside the mask) are not drawn.")
    alt = (f"Box plots of the attention ratio for {len(stats.layers)} layers and "
           f"{len(methods)} methods on a logarithmic axis from {RATIO_FLOOR:g} to "
           f"{RATIO_CEILING:g}.")
    return Plot("attention_ratio", title, to_png(figure), alt, caption)


@styled
def curves_plot(stats: DatasetStats) -> Plot:
    """Mean deletion and insertion curves per method (over layers and images)."""
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
    for index, name in enumerate(("deletion", "insertion")):
        axes = figure.add_subplot(1, 2, index + 1)
        for method, curve in curves[name].items():
            axes.plot(fraction, curve, color=colours[method], linewidth=1.6, label=method)
        axes.set_title(f"{name.capitalize()} (mean per method)")
        axes.set_xlabel("fraction of pixels " + ("removed" if name == "deletion" else
                                                 "revealed"))
        axes.set_ylabel("target score")
        axes.set_xlim(0, 1)
        if curves[name]:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "no curve", ha="center", va="center",
                      transform=axes.transAxes, color="#6b7280")
    alt = ("Line plots of the mean deletion curve (left) and insertion curve (right) of "
           f"each of {len(curves['deletion'] or curves['insertion'])} methods.")
    caption = ("Deletion: a faithful map makes the score fall fast (low area under the curve). "
               "Insertion: the score rises fast (high area).")
    return Plot("curves", title, to_png(figure), alt, caption)


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
    shared = None
    for index, method in enumerate(order):
        axes = figure.add_subplot(1, len(order), index + 1, sharey=shared)
        shared = shared or axes
        for row in (r for r in usable if r.method == method):
            x = np.arange(len(row.levels))
            y = [np.nan if v is None else v for v in row.spearman]
            axes.plot(x, y, marker="o", markersize=3, color=colours[row.layer],
                      label=row.layer, linewidth=1.4)
            axes.axhline(row.threshold, color="#c62828", linewidth=0.7, linestyle="--")
            axes.set_xticks(x)
            axes.set_xticklabels([str(i + 1) for i in x])
        axes.set_title(method)
        axes.set_xlabel("randomisation level")
        if index == 0:
            axes.set_ylabel("Spearman ρ with trained map")
    shared.set_ylim(-0.1, 1.05)
    shared.legend(fontsize=7, loc="lower left")
    alt = (f"Line plots, one per method ({', '.join(order)}), of the Spearman correlation "
           "between the trained model's map and the map after each randomisation level.")
    caption = ("Levels randomise the model cumulatively from the output towards the input "
               "(the names are in the table). A trustworthy method's similarity drops below "
               "the dashed threshold.")
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


@styled
def layer_profile_plot(stats: DatasetStats) -> Plot:
    """Median attention ratio of each method along the layers, with the interquartile range."""
    title = "Attention ratio through the network"
    series = {}
    for method in stats.methods:
        medians, lows, highs = [], [], []
        for layer in stats.layers:
            values, _ = clip_ratios(stats.metric_values("attention_ratio", layer, method))
            if values:
                low, median, high = np.percentile(values, [25, 50, 75])
            else:
                low = median = high = np.nan
            medians.append(median)
            lows.append(low)
            highs.append(high)
        if not np.all(np.isnan(medians)):
            series[method] = (medians, lows, highs)
    if not series or len(stats.layers) < 1:
        return Plot("layers", title, None, "", "",
                    "No attention ratio is defined, so the change through the layers cannot "
                    "be shown.")
    colours = dict(zip(stats.methods, palette(len(stats.methods)), strict=True))
    figure = new_figure(max(5.0, 1.4 * len(stats.layers) + 2.0), 3.2)
    axes = figure.add_subplot()
    x = np.arange(len(stats.layers))
    for method, (medians, lows, highs) in series.items():
        axes.plot(x, medians, marker="o", markersize=3.5, color=colours[method], label=method,
                  linewidth=1.6)
        axes.fill_between(x, lows, highs, color=colours[method], alpha=0.12, linewidth=0)
    axes.set_yscale("log")
    for line in (1.0, 2.0, 5.0):
        axes.axhline(line, color="#6b7280", linewidth=0.7, linestyle="--")
    axes.set_xticks(x)
    axes.set_xticklabels(stats.layers)
    axes.set_xlabel("layer (input → output)")
    axes.set_ylabel("median attention ratio (log)")
    axes.legend(fontsize=8)
    alt = (f"Line plot of the median attention ratio of {len(series)} methods across "
           f"{len(stats.layers)} layers, with shaded interquartile ranges.")
    caption = "Shaded: interquartile range over images. Dashed lines: verdict bands 1, 2, 5."
    return Plot("layers", title, to_png(figure), alt, caption)


@styled
def methods_distribution_plot(stats: DatasetStats, metrics: list[tuple[str, str]]) -> Plot:
    """Side-by-side box plots of each metric per method, pooled over layers.

    `metrics` are (name, title) pairs in display order.
    """
    title = "Metric distributions per method"
    panels = []
    for name, metric_title in metrics:
        data = []
        for method in stats.methods:
            values = stats.metric_values(name, method=method)
            if name == "attention_ratio":
                values, _ = clip_ratios(values)
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
    return Plot("methods", title, to_png(figure), alt,
                "Each box pools every layer and image of one method.")
