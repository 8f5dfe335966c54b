"""The dataset plots fit their axes to the data and say in their captions what they cannot
draw, or cannot show, so that a reader is not misled by a clipped box or a flat curve."""

from __future__ import annotations

import math

import numpy as np

from reportgen.compute.metrics.attention import VerdictBands
from reportgen.render.figures import png_size
from reportgen.render.plots import (
    TICK_CROWDING,
    VERDICT_LINES,
    RatioAxis,
    attention_ratio_plot,
    curve_axis_limits,
    curve_check,
    curves_plot,
    layer_profile_plot,
    methods_distribution_plot,
    ratio_axis,
    ratio_groups,
    ratio_profile,
    ratio_ticks,
    sanity_plot,
)
from reportgen.report.results import SanityRow
from reportgen.report.statistics import DatasetStats, ImageSummary

LAYERS = ["encoder_last", "decoder_last", "seg_head"]
METHODS = ["gradcam", "gradcam++", "layercam"]


def dataset(metrics: dict[tuple[str, str], list[dict[str, float]]]) -> DatasetStats:
    """Stats whose image i has metrics[(layer, method)][i] at that layer x method."""
    stats = DatasetStats(list(LAYERS), list(METHODS))
    count = max(len(rows) for rows in metrics.values())
    for index in range(count):
        stats.summaries.append(ImageSummary(
            id=f"img-{index:03d}", source_name=f"{index}.png", mask_name=None,
            has_ground_truth=False, dice=None, dice_reason="no ground truth", verdict="good",
            metrics={key: rows[index] for key, rows in metrics.items() if index < len(rows)}))
    return stats


def demo_ratios() -> DatasetStats:
    """The demo's shape: decoder_last ratios in the thousands, five ratios of exactly 0
    at seg_head x gradcam++ and infinite ratios at encoder_last x layercam."""
    ratios = {
        ("encoder_last", "gradcam"): [0.4, 1.5, 3.0, 7.5],
        ("encoder_last", "gradcam++"): [0.8, 1.1, 2.2, 2.9],
        ("encoder_last", "layercam"): [math.inf, math.inf, 4.0, 6.0],
        ("decoder_last", "gradcam"): [8507.0, 12000.0, 15000.0, 19386.0],
        ("decoder_last", "gradcam++"): [3.0, 9.0, 40.0, 120.0],
        ("decoder_last", "layercam"): [1274.0, 1800.0, 2000.0, 2418.0],
        ("seg_head", "gradcam"): [0.05, 0.2, 0.9, 1.3],
        ("seg_head", "gradcam++"): [0.0, 0.0, 0.0, 0.0, 0.0, 0.003],
        ("seg_head", "layercam"): [math.inf, 2.0, 2.5, 3.5],
    }
    return dataset({key: [{"attention_ratio": v} for v in values]
                    for key, values in ratios.items()})


def test_ratio_axis_holds_every_finite_ratio_the_verdict_lines_and_rows_for_zero_and_inf(
) -> None:
    axis = ratio_axis(ratio_groups(demo_ratios()))
    low, high = axis.data
    assert low < 0.003 and high > 19386.0
    # some margin, not the values themselves at the edge
    assert math.log10(0.003 / low) >= 0.1 and math.log10(high / 19386.0) >= 0.1
    assert all(low < line < high for line in VERDICT_LINES)
    assert axis.limits[0] < axis.zero_row < low
    assert high < axis.infinite_row < axis.limits[1]
    ticks, labels = ratio_ticks(axis)
    assert labels[0] == "0" and labels[-1] == "∞"
    assert {"1", "2", "5", "10,000", "0.01"} <= set(labels)
    assert "10" not in labels  # beside 5 on an axis of 7 decades, their labels would overlap
    assert ticks == sorted(ticks)
    # no power of ten crowds a verdict line or the 0 and ∞ rows
    decades = [t for t, label in zip(ticks, labels, strict=True)
               if label not in ("0", "∞") and t not in VERDICT_LINES]
    anchors = [*VERDICT_LINES, axis.zero_row, axis.infinite_row]
    assert all(abs(math.log10(d / a)) >= TICK_CROWDING for d in decades for a in anchors)


def test_ratio_axis_keeps_the_verdict_lines_when_the_ratios_are_narrow() -> None:
    narrow = dataset({("seg_head", "gradcam"): [{"attention_ratio": v} for v in (1.4, 1.6)]})
    axis = ratio_axis(ratio_groups(narrow))
    assert axis.data[0] < 1.0 and axis.data[1] > 5.0
    assert axis.zero_row is None and axis.infinite_row is None
    assert axis.limits == axis.data
    _, labels = ratio_ticks(RatioAxis((0.5, 20.0), (0.5, 20.0), None, None))
    assert labels == ["1", "2", "5", "10"]  # a narrow axis has room for 10 beside 5


def test_ratio_caption_counts_what_is_drawn_at_each_edge_per_box_and_reason() -> None:
    plot = attention_ratio_plot(demo_ratios())
    assert plot.png is not None and png_size(plot.png)[0] > 0
    assert ("5 ratios of exactly 0 (no attention inside the mask) cannot be placed on a log "
            "axis" in plot.caption)
    assert "“0” row at the bottom edge" in plot.caption and "(seg_head × gradcam++: 5)" in \
        plot.caption
    assert "3 ratios that are infinite (no attention outside the mask)" in plot.caption
    assert "“∞” row at the top edge" in plot.caption
    assert "(encoder_last × layercam: 2; seg_head × layercam: 1)" in plot.caption
    assert "every finite, positive ratio" in plot.caption


def test_ratio_caption_says_nothing_is_left_out_when_every_ratio_is_finite() -> None:
    plot = attention_ratio_plot(dataset(
        {("seg_head", "gradcam"): [{"attention_ratio": v} for v in (0.5, 3.0, 40.0)]}))
    assert "cannot be placed" not in plot.caption and "edge" not in plot.caption


def with_curves(deletion: np.ndarray, insertion: np.ndarray) -> DatasetStats:
    """Every layer x method with these curves and their areas."""
    auc = {"deletion_auc": float(np.trapezoid(deletion, dx=1 / (deletion.size - 1))),
           "insertion_auc": float(np.trapezoid(insertion, dx=1 / (insertion.size - 1)))}
    stats = dataset({(layer, method): [auc] for layer in LAYERS for method in METHODS})
    for layer in LAYERS:
        for method in METHODS:
            stats.curves.add(layer, method, "deletion", deletion.tolist())
            stats.curves.add(layer, method, "insertion", insertion.tolist())
    return stats


def test_flat_curves_with_deletion_above_insertion_are_flagged_in_the_caption() -> None:
    # the demo: a blur baseline that barely moves the score (deletion 0.98 -> 0.96)
    stats = with_curves(np.linspace(0.98, 0.96, 21), np.linspace(0.93, 0.98, 21))
    check = curve_check(stats)
    assert check.pairs == 9 and check.deletion_not_lower == 9 and not check.ranks_maps
    plot = curves_plot(stats)
    assert "Warning: these curves do not rank the maps" in plot.caption
    assert "the deletion AUC is not below the insertion AUC for 9 of 9 layer × method pairs" \
        in plot.caption
    assert ("metric_options.faithfulness.baseline (the choices are blur and zero; the one used "
            "is under Limits set by the spec)") in plot.caption


def test_a_score_that_barely_moves_is_flagged_even_when_deletion_is_lower() -> None:
    stats = with_curves(np.linspace(0.97, 0.95, 21), np.linspace(0.96, 0.98, 21))
    check = curve_check(stats)
    assert check.deletion_not_lower == 0 and math.isclose(check.largest_change, 0.02)
    caption = curves_plot(stats).caption
    assert "no mean curve's score moves by more than 0.020" in caption
    assert "Warning" in caption and "AUC is not below" not in caption


def test_curves_that_separate_the_maps_carry_no_warning() -> None:
    fraction = np.linspace(0.0, 1.0, 21)
    stats = with_curves(0.05 + 0.85 * np.exp(-5 * fraction),
                        0.9 - 0.85 * np.exp(-5 * fraction))
    assert curve_check(stats).ranks_maps
    assert "Warning" not in curves_plot(stats).caption


def test_the_score_axis_spans_zero_to_one_however_small_the_change() -> None:
    low, high = curve_axis_limits([np.linspace(0.98, 0.96, 51), np.linspace(0.93, 0.98, 51)])
    assert low < 0.0 < 1.0 < high and high - low < 1.1
    low, high = curve_axis_limits([np.array([-0.2, 1.4])])
    assert low < -0.2 and high > 1.4


def test_layer_profile_keeps_ratios_in_the_thousands_and_exact_zeros_and_infinities(
) -> None:
    profile = ratio_profile(demo_ratios())
    medians, lows, highs = profile["gradcam"]
    assert medians[1] == 13500.0  # decoder_last: not squashed to an axis ceiling
    assert (lows[1], highs[1]) == (12000.0, 15000.0)  # observed ratios
    medians, lows, _ = profile["gradcam++"]
    assert medians[2] == 0.0 and lows[2] == 0.0  # seg_head: exactly 0
    medians, _, highs = profile["layercam"]
    assert medians[0] == math.inf and highs[0] == math.inf  # encoder_last: two of four ∞
    plot = layer_profile_plot(demo_ratios())
    assert plot.png is not None and png_size(plot.png)[0] > 0
    assert "“0” or “∞” row" in plot.caption


def test_method_distributions_name_the_ratios_a_log_axis_cannot_hold() -> None:
    plot = methods_distribution_plot(demo_ratios(), [("attention_ratio", "attention ratio")])
    assert plot.png is not None
    assert "left out of the boxes (gradcam++: 5 of 0; layercam: 3 ∞)" in plot.caption


def test_ratio_plots_draw_the_spec_bands(monkeypatch) -> None:
    from matplotlib.axes import Axes

    drawn: list[float] = []
    axhline = Axes.axhline

    def recording(self, y=0, *args, **kwargs):
        drawn.append(float(y))
        return axhline(self, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "axhline", recording)
    stats = demo_ratios()
    stats.verdict_bands = VerdictBands(fair=20.0, good=50.0, excellent=100.0)
    plot = attention_ratio_plot(stats)
    assert "verdict bands (20 fair, 50 good, 100 excellent)" in plot.caption
    assert {20.0, 50.0, 100.0} <= set(drawn) and not {1.0, 2.0, 5.0} & set(drawn)
    drawn.clear()
    assert "verdict bands 20, 50, 100" in layer_profile_plot(stats).caption
    assert {20.0, 50.0, 100.0} <= set(drawn) and not {1.0, 2.0, 5.0} & set(drawn)
    lines = stats.verdict_bands.lines
    ticks, _ = ratio_ticks(ratio_axis(ratio_groups(stats), lines), lines)
    assert {20.0, 50.0, 100.0} <= set(ticks)


def test_the_sanity_legend_names_a_layer_that_only_some_panels_draw() -> None:
    """seg_head is defined for gradcam++ only; the shared legend (right of the last panel,
    gradcam, which lacks it) still shows its colour, so no line is unlabelled."""
    import cv2

    levels = ["segmentation_head", "decoder", "encoder"]

    def row(layer: str, method: str, rho: float | None) -> SanityRow:
        return SanityRow(layer, method, levels, [rho, rho, rho], [None] * 3, 0.5, True)

    rows = [row("encoder_last", "gradcam++", 0.4), row("seg_head", "gradcam++", 0.3),
            row("encoder_last", "gradcam", 0.2), row("seg_head", "gradcam", None)]
    plot = sanity_plot(rows, ["gradcam++", "gradcam"])
    pixels = cv2.imdecode(np.frombuffer(plot.png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    width = pixels.shape[1]
    orange = np.array([255, 127, 14])  # tab10's second colour: seg_head
    shown = np.abs(pixels.astype(int) - orange).sum(axis=2) < 40
    columns = np.flatnonzero(shown.any(axis=0))
    assert columns.size and columns.max() > 0.8 * width  # in the legend, beside the panels
