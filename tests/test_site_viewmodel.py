"""The site's view models, statistics and figures, tested without writing a site."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from reportgen.compute.metrics.attention import VerdictBands
from reportgen.compute.metrics.export import AggregateRow
from reportgen.render import figures as fig
from reportgen.report.layout import cell_figure_name
from reportgen.report.results import ShownValue
from reportgen.report.statistics import CURVE_POINTS, DatasetStats, standardised_ranks
from reportgen.report.views.common import (
    Footnotes,
    ValueView,
    agreement_shade,
    definitions_for,
    downloads,
    format_number,
    markdown,
    median_verdict,
    missing_statistic,
    na_reason_text,
    summarise_verdicts,
    value_view,
    verdict_view,
    worst_verdict,
)
from reportgen.report.views.image import image_page_view, image_record
from reportgen.report.views.layers import layers_view
from reportgen.report.views.methods import methods_view
from reportgen.report.views.summary import dice_summary, index_view, metric_tables, summary_rows
from tests.site_fixtures import (
    LAYERS,
    METHODS,
    make_aggregates,
    make_context,
    make_result,
    make_results,
    make_sanity,
)


def dataset(count: int = 3) -> DatasetStats:
    stats = DatasetStats(list(LAYERS), list(METHODS))
    for result in make_results(count):
        stats.add(result, summarise_verdicts(
            {key: c.verdict for key, c in result.cells.items()}, []).median)
    return stats


@pytest.mark.parametrize(("value", "text"), [
    (None, "n/a"), (math.nan, "n/a"), (math.inf, "∞"), (-math.inf, "−∞"), (0.0, "0.000"),
    (0.5, "0.500"), (12.3456, "12.346"), (123.456, "123.5"), (1e-5, "1.00e-05"),
    (2.5e6, "2.50e+06"), (-0.25, "-0.250"),
])
def test_numbers_have_fixed_formatting(value: float | None, text: str) -> None:
    assert format_number(value) == text


def test_worst_verdict_ranks_invalid_first_and_na_last() -> None:
    assert worst_verdict(["good", "excellent", "fair"]) == "fair"
    assert worst_verdict(["good", "invalid", "concerning"]) == "invalid"
    assert worst_verdict(["n/a", "excellent"]) == "excellent"
    assert worst_verdict(["n/a"]) == "n/a"
    assert worst_verdict([]) == "n/a"


def test_median_verdict_takes_the_worse_middle_and_ignores_na() -> None:
    assert median_verdict(["excellent", "concerning", "good"]) == "good"
    assert median_verdict(["excellent", "good", "fair", "concerning"]) == "fair"
    assert median_verdict(["n/a", "n/a", "excellent"]) == "excellent"
    assert median_verdict(["invalid", "excellent"]) == "invalid"
    assert median_verdict(["n/a"]) == "n/a"


def test_a_verdict_summary_counts_only_the_verdict_layers_and_names_the_worst() -> None:
    verdicts = {("encoder_early", "gradcam"): "concerning",
                ("encoder_early", "layercam"): "concerning",
                ("decoder_last", "gradcam"): "excellent",
                ("decoder_last", "layercam"): "good",
                ("seg_head", "gradcam"): "excellent",
                ("seg_head", "layercam"): "fair"}
    chosen = summarise_verdicts(verdicts, ["decoder_last", "seg_head"])
    assert chosen.median == "good" and chosen.worst == "fair"
    assert chosen.worst_text == "worst: fair at seg_head × layercam"
    assert chosen.layers == ["decoder_last", "seg_head"]
    assert [(v.key, n) for v, n in chosen.counts] == [("excellent", 2), ("good", 1),
                                                      ("fair", 1)]
    everything = summarise_verdicts(verdicts, [])
    assert everything.median == "fair"
    assert everything.worst_text == ("worst: concerning at encoder_early × gradcam, "
                                     "encoder_early × layercam")
    assert summarise_verdicts({("seg_head", "gradcam"): "good"}, []).worst_text == ""
    # blank maps give no verdict; the summary says where, rather than skipping them
    blank = summarise_verdicts({**verdicts, ("decoder_last", "gradcam++"): "n/a"},
                               ["decoder_last", "seg_head"])
    assert blank.worst_text == ("worst: fair at seg_head × layercam; "
                                "no verdict at decoder_last × gradcam++")
    assert summarise_verdicts({("seg_head", "gradcam"): "n/a"}, []).worst_text == ""


def test_one_infinite_ratio_does_not_decide_a_layer_and_method() -> None:
    """Five images with ratio 0 and three with +inf: the cell is concerning (the median),
    not excellent (the mean, +inf)."""
    context = make_context()
    stats = dataset(3)
    values = [0.0] * 5 + [math.inf] * 3
    aggregates = [AggregateRow("encoder_last", "gradcam", "attention_ratio", n=8,
                               mean=math.inf, std=None, median=0.0, min=0.0, max=math.inf,
                               n_na=0, na_reasons={})]
    assert float(np.median(values)) == 0.0
    cell = summary_rows(context, stats, aggregates, Footnotes())[0].cells[0]
    assert cell.median_ratio.text == "0.000" and cell.verdict.key == "concerning"


def test_image_level_metrics_get_one_row_and_no_per_layer_table() -> None:
    context = make_context()
    stats = dataset(3)
    results = make_results(3)
    dice = AggregateRow("", "", "dice", n=2, mean=0.55, std=0.07, median=0.55, min=0.5,
                        max=0.6, n_na=1, na_reasons={"no ground truth": 1})
    context.metric_definitions.append(type(context.metric_definitions[0])(
        "dice", "Dice", "2|P ∩ G| / (|P| + |G|)", "higher", "Dice 1945", "dice"))
    aggregates = [*make_aggregates(results), dice]
    table = next(t for t in metric_tables(context, stats, aggregates)
                 if t.definition.name == "dice")
    assert [(r.layer, r.method, r.mean.text, r.n) for r in table.rows] == [
        ("—", "—", "0.550", "2")]
    assert not table.per_map  # an image-level metric: no layer or method columns
    assert table.footnotes == [(1, "no ground truth")]  # the n/a column gives the count
    layers = layers_view(context, stats, aggregates, [], 64)
    assert "dice" not in [t.definition.name for t in layers.tables if t.definition]
    ratio = next(t for t in layers.tables if t.definition.name == "attention_ratio")
    assert ratio.title == "attention ratio: median per layer"


def test_verdict_badge_has_a_text_label_and_safe_class() -> None:
    assert verdict_view("n/a").css == "verdict-na" and verdict_view("n/a").label == "n/a"
    assert verdict_view("concerning").label == "Concerning"
    assert verdict_view("<bogus>").key == "n/a"


def test_na_values_cite_their_reason_once() -> None:
    notes = Footnotes()
    first = value_view(ShownValue(None, "predicted mask is empty"), notes)
    second = value_view(ShownValue(None, "predicted mask is empty"), notes)
    third = value_view(None, notes, absent="no ground truth")
    assert first.missing and first.text == "n/a" and first.note == second.note == 1
    assert third.note == 2
    assert notes.notes == [(1, "predicted mask is empty"), (2, "no ground truth")]
    assert value_view(ShownValue(0.25), notes).text == "0.250"


def test_definitions_follow_the_registry_order_and_name_unknown_metrics() -> None:
    context = make_context()
    names = [d.name for d in definitions_for({"insertion_auc", "attention_mean", "custom_x"},
                                             context)]
    assert names == ["attention_mean", "insertion_auc", "custom_x"]
    assert definitions_for({"custom_x"}, context)[0].title == "custom x"


def test_free_text_is_markdown_without_raw_html_images_or_unsafe_links() -> None:
    assert markdown("one\nline\n\n\n**two**\n") == "<p>one\nline</p>\n<p><strong>two</strong></p>\n"
    assert markdown("") == ""
    assert markdown("# Scope\n- adults") == "<h3>Scope</h3>\n<ul>\n<li>adults</li>\n</ul>\n"
    html = markdown('<script>x()</script> <img src=x onerror=y()> ![scan](/etc/scan.png) '
                    "[a](javascript:x()) [b](file:///etc/passwd) [c](../secret) "
                    "[d](https://example.org/protocol)")
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
    assert html.count("<a ") == 1 and '<a href="https://example.org/protocol">d</a>' in html


def test_image_page_view_draws_placeholders_for_undefined_and_flagged_maps() -> None:
    context = make_context()
    result = make_result(1)
    figures = {"input": "i.png", "prediction": "p.png", "ground_truth": "g.png"}
    for r in range(2):
        for c in range(2):
            for key in ("overlay", "contours", "top", "heatmap"):
                figures[cell_figure_name(r, c, key)] = f"{r}{c}{key}.png"
    view = image_page_view(context, image_record(result), figures, 1, 3, "img-000", "img-002")
    assert view.position == "Image 2 of 3"
    assert view.previous.href == "img-000.html" and view.next.href == "img-002.html"
    undefined = view.rows[1].cells[1]
    assert undefined.variants == [] and undefined.heatmap is None
    assert "empty target region" in undefined.placeholder
    assert undefined.ratio.missing and undefined.verdict.key == "n/a"
    drawn = view.rows[0].cells[0]
    assert [v.key for v in drawn.variants] == ["overlay", "contours", "top"]
    assert drawn.variants[0].alt.startswith("Overlay: gradcam map of layer encoder_last")
    assert [d.name for d in view.metric_columns][:3] == ["attention_mean", "attention_std",
                                                          "attention_ratio"]
    assert len(view.metric_rows) == 4
    assert view.footnotes == [(1, "predicted mask is empty")]
    assert view.methods == ["gradcam", "gradcam++"]
    # only the approximate layer's values are marked, with the note that says why
    assert [cell.ratio.approximate for cell in view.rows[0].cells] == [False, True]
    assert [row.flags for row in view.metric_rows][:2] == ["", "approximate"]
    assert view.page.approximate_note.startswith("≈ approximate")
    assert view.aspect == "64 / 64"


def test_image_page_view_without_ground_truth_says_so() -> None:
    result = make_result(2, ground_truth=False)
    view = image_page_view(make_context(), image_record(result),
                           {"input": "i.png", "prediction": "p.png"}, 2, 3, "img-001", None)
    assert view.next is None
    assert view.figures[1].src is None and view.figures[1].placeholder == "No ground truth"
    assert view.dice.missing and "no ground truth" in dict(
        (reason, n) for n, reason in view.footnotes)
    flagged = view.rows[0].cells[0]
    assert "zero everywhere" in flagged.placeholder and not flagged.variants


def test_index_view_summarises_verdicts_dice_and_tables() -> None:
    context = make_context()
    results = make_results(3)
    stats = dataset(3)
    view = index_view(context, stats, make_aggregates(results), [])
    assert [row.layer for row in view.summary_rows] == LAYERS
    cell = view.summary_rows[0].cells[0]
    ratios = [r.cells["encoder_last", "gradcam"].metrics["attention_ratio"].value
              for r in results]
    assert cell.median_ratio.text == format_number(float(np.median(ratios)))
    assert sum(count for _, count in cell.counts) == 3
    assert view.dice == "0.550" and "2 images" in view.dice_detail
    assert [t.definition.name for t in view.tables][:2] == ["attention_mean", "attention_std"]
    assert len(view.tables[0].rows) == 4
    assert [item.id for item in view.gallery] == ["img-000", "img-001", "img-002"]
    assert view.gallery[2].dice == "n/a" and view.gallery[2].dice_sort == ""
    assert ("Parameters", "28,123,456") in view.model_card
    assert ("Without ground truth", "1") in view.data
    ratio_table = next(t for t in view.tables if t.definition.name == "attention_ratio")
    undefined = next(r for r in ratio_table.rows if r.layer == "decoder_last"
                     and r.method == "gradcam++")
    assert undefined.n_na == "1"
    assert dict(ratio_table.footnotes)[undefined.na_note] == "predicted mask is empty"
    assert ratio_table.per_map


def test_an_undefined_statistic_says_why_in_its_own_words() -> None:
    def row(values: list[float], na: dict[str, int]) -> AggregateRow:
        return AggregateRow("encoder_last", "gradcam", "attention_ratio", n=len(values),
                            mean=None, std=None, median=None, min=min(values, default=None),
                            max=max(values, default=None), n_na=sum(na.values()),
                            na_reasons=na)  # as metrics.export.aggregate: ∞ stays in max

    # no value at all: the images' reason, the same note the n/a count cites
    empty = row([], {"a map is constant": 2})
    assert missing_statistic(empty, "mean") == na_reason_text(empty) == "a map is constant"
    several = row([], {"a map is constant": 2, "predicted mask is empty": 1})
    assert missing_statistic(several, "mean") == (
        "a map is constant (2 images); predicted mask is empty (1 image)")
    assert missing_statistic(row([2.0], {}), "std") == (
        "std needs 2 or more values; 1 image has one")
    assert missing_statistic(row([2.0, math.inf], {}), "std") == (
        "std undefined: the values include ∞")
    assert missing_statistic(row([2.0, 3.0], {}), "std") == "std undefined"


def test_methods_and_layers_views_carry_agreement_and_sanity() -> None:
    context = make_context()
    stats = dataset(3)
    methods = methods_view(context, stats, [], make_sanity(), 64)
    assert methods.matrices[0].title == "All layers"
    assert methods.matrices[0].rows[0][0].text == "—"
    assert not methods.matrices[0].rows[0][1].missing
    assert methods.sanity[0].passed == "passed" and methods.sanity[1].passed == "failed"
    assert methods.sanity[0].levels[2][1].missing
    # the same words as the per-image sanity metric on the layers page
    assert "undefined: a map is constant" in [text for _, text in methods.sanity_notes]
    # each section numbers its own notes, printed under it
    assert all(text == "no pair of defined, non-constant maps"
               for _, text in methods.matrix_notes)
    assert methods.means is not None and [name for name, _ in methods.means.rows] == METHODS
    layers = layers_view(context, stats, make_aggregates(make_results(3)), [], 64)
    assert [m.title for m in layers.matrices] == ["Method gradcam", "Method gradcam++"]
    assert layers.layers[0].channels == "512" and layers.layers[0].stride == "32"
    assert agreement_shade(0.9) == "agree-high" and agreement_shade(None) == ""


def test_ranks_give_spearman_rho_with_ties() -> None:
    from scipy import stats
    rng = np.random.default_rng(3)
    a = np.round(rng.random((20, 20)), 1).astype(np.float32)  # many ties
    b = np.clip(a + rng.normal(0, 0.3, a.shape), 0, 1).astype(np.float32)
    rho = float(np.dot(standardised_ranks(a), standardised_ranks(b)))
    assert rho == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-9)
    assert standardised_ranks(np.zeros((8, 8), np.float32)) is None


def test_dataset_stats_keep_running_sums_only() -> None:
    stats = DatasetStats(list(LAYERS), list(METHODS))
    result = make_result(0)
    same = result.cells["encoder_last", "gradcam"].map
    result.cells["encoder_last", "gradcam++"].map = same.copy()
    summary = stats.add(result, "fair")
    assert stats.method_agreement.mean("encoder_last", "gradcam", "gradcam++") == \
        pytest.approx((1.0, 1))
    assert stats.method_agreement.mean("encoder_last", "gradcam++", "gradcam")[1] == 1
    assert summary.dice == pytest.approx(0.5) and summary.source_name.endswith(".png")
    assert not hasattr(summary, "display")
    curves = stats.curves.per_method("deletion", list(METHODS))
    assert set(curves) == set(METHODS) and curves["gradcam"].shape == (CURVE_POINTS,)
    assert curves["gradcam"][0] == pytest.approx(1.0) and curves["gradcam"][-1] == 0.0


def test_overlay_figures_are_deterministic_and_sized() -> None:
    rng = np.random.default_rng(0)
    base = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    values = rng.random((40, 50)).astype(np.float32)
    mask = values > 0.7
    lut = fig.colormap_lut("viridis")
    drawn = fig.cell_figures(base, values, mask, ~mask, lut, 0.5)
    again = fig.cell_figures(base, values, mask, ~mask, lut, 0.5)
    assert set(drawn) == {"overlay", "contours", "top", "heatmap"}
    for key in drawn:
        assert drawn[key].shape == (40, 50, 3) and drawn[key].dtype == np.uint8
        assert fig.encode_png(drawn[key]) == fig.encode_png(again[key])
    assert (drawn["heatmap"][0, 0] == lut[round(values[0, 0] * 255)]).all()
    region = fig.top_region(values)
    assert region.mean() == pytest.approx(0.2, abs=0.01)
    assert fig.fit(np.zeros((1000, 500, 3), np.uint8), 320).shape == (320, 160, 3)
    assert fig.fit(base, 320) is base
    assert fig.encode_png(base)[:8] == b"\x89PNG\r\n\x1a\n"


def test_jet_is_available_and_unknown_colormaps_fail_clearly() -> None:
    assert fig.colormap_lut("jet").shape == (256, 3)
    with pytest.raises(ValueError, match="unknown colormap"):
        fig.colormap_lut("no-such-map")


def test_source_paths_are_kept_as_names_only() -> None:
    stats = DatasetStats(list(LAYERS), list(METHODS))
    result = make_result(0)
    result.source = Path("/very/private/folder/scan.png")
    assert stats.add(result, "good").source_name == "scan.png"


def test_pages_link_the_pdf_only_where_the_spec_wrote_one() -> None:
    context = make_context()
    context.pdf = None  # output.pdf: null
    assert "Archival report (PDF)" not in [link.label for link in downloads(context)]
    context.pdf = "dossier/VAL 001.pdf"  # output.pdf: site/dossier/VAL 001.pdf
    pdf = next(link for link in downloads(context) if link.label == "Archival report (PDF)")
    assert pdf.href == "dossier/VAL%20001.pdf"


def test_methods_are_compared_on_the_verdict_layers_only() -> None:
    context = make_context()
    context.verdict_layers = ["decoder_last"]
    stats = dataset(3)
    view = methods_view(context, stats, [], make_sanity(), 64)
    assert view.means is not None and "verdict layers (decoder_last;" in view.means.title
    column = [d.name for d in view.definitions].index("attention_mean")
    gradcam = dict(view.means.rows)["gradcam"][column]
    expected = np.mean(stats.metric_values("attention_mean", "decoder_last", "gradcam"))
    assert gradcam.text == format_number(float(expected))


def test_summary_verdicts_and_legend_follow_the_spec_bands() -> None:
    """metric_options.attention.bands of 20 / 50 / 100: a median ratio of 7 is concerning,
    as each image's own verdict is, not excellent by the default bands."""
    context = make_context()
    context.verdict_bands = VerdictBands(fair=20.0, good=50.0, excellent=100.0)
    stats = dataset(3)
    aggregates = [AggregateRow("encoder_last", "gradcam", "attention_ratio", n=2, mean=7.0,
                               std=0.1, median=7.0, min=6.9, max=7.1, n_na=0, na_reasons={})]
    cell = summary_rows(context, stats, aggregates, Footnotes())[0].cells[0]
    assert cell.verdict.key == "concerning"
    view = index_view(context, stats, aggregates, [])
    assert view.bands_text == ("above 100 excellent, 50–100 good, 20–50 fair, "
                               "below 20 concerning")


def test_a_missing_mean_dice_says_why() -> None:
    context = make_context()  # its metrics have no Dice
    assert dice_summary([], context)[1] == "Dice not computed (not among the spec's metrics)"
    dice = dataclasses.replace(context.metric_definitions[0], name="dice")
    context.metric_definitions = [*context.metric_definitions, dice]
    assert dice_summary([], context) == ("n/a", "no image has a defined Dice")
    context.mask_source = None
    assert dice_summary([], context)[1] == "no ground truth (data.masks not given)"


def test_the_approximate_note_is_only_on_pages_that_mark_a_value_and_the_headline_says_so(
        ) -> None:
    context = make_context()
    stats = dataset(3)
    aggregates = make_aggregates(make_results(3))
    marked = index_view(context, stats, aggregates, [])
    assert marked.page.approximate_note.startswith("≈ approximate")
    assert marked.overall.approximate_at == ["encoder_last × gradcam++"]
    assert marked.has_pdf  # the fixture's report has a PDF
    context.approximate = []  # nothing approximate, though a note was written
    exact = index_view(context, stats, aggregates, [])
    assert exact.page.approximate_note == "" and exact.overall.approximate_at == []
    assert layers_view(context, stats, aggregates, [], 64).page.approximate_note == ""
    assert methods_view(context, stats, [], [], 64).page.approximate_note == ""
    assert not any("≈" in name for m in methods_view(context, stats, [], [], 64).matrices
                   for name in m.names)
    context.approximate = [("encoder_last", "gradcam++")]  # the agreement matrices say so
    methods = methods_view(context, stats, [], [], 64)
    labels = {m.title: m.names for m in methods.matrices}
    assert labels["Layer encoder_last"] == ["gradcam", "gradcam++ ≈"]
    assert labels["Layer decoder_last"] == ["gradcam", "gradcam++"]
    assert labels["All layers"] == ["gradcam", "gradcam++ ≈"]
    layers = {m.title: m.names for m in layers_view(context, stats, aggregates, [], 64).matrices}
    assert layers["Method gradcam++"] == ["encoder_last ≈", "decoder_last"]
    context.pdf = None
    assert not index_view(context, stats, aggregates, []).has_pdf


def test_the_headline_names_counted_maps_that_failed_the_sanity_check() -> None:
    """gradcam++ fails the fixture's sanity check at both layers: its maps are still counted
    (each image's verdict counts them too) but named, as the approximate one is."""
    context = make_context()
    view = index_view(context, dataset(3), make_aggregates(make_results(3)), [],
                      sanity=make_sanity())
    assert view.overall.sanity_failed == ["encoder_last × gradcam++", "decoder_last × gradcam++"]
    assert index_view(context, dataset(3), make_aggregates(make_results(3)),
                      []).overall.sanity_failed == []  # no sanity check, nothing claimed
    worst = summarise_verdicts({("encoder_last", "gradcam"): "good",
                                ("encoder_last", "gradcam++"): "concerning",
                                ("decoder_last", "gradcam"): "good"}, [],
                               [("encoder_last", "gradcam++")])
    assert worst.worst_text == "worst: concerning at encoder_last × gradcam++ ≈"


def test_the_headline_names_only_maps_it_counted() -> None:
    """A map with no verdict (n/a) is not counted by the median, so it is not named among
    the counted approximate or sanity-failing maps either."""
    from reportgen.report.results import SanityRow
    from reportgen.report.views.summary import SummaryCell, SummaryRow, overall_verdict

    context = make_context()  # approximate: encoder_last x gradcam++
    na, good = ValueView("n/a", 1, missing=True), ValueView("3.000")

    def cell(value: ValueView, verdict: str) -> SummaryCell:
        return SummaryCell(value, verdict_view(verdict), [])

    rows = [SummaryRow("encoder_last", [cell(good, "good"), cell(na, "n/a")]),
            SummaryRow("decoder_last", [cell(good, "good"), cell(good, "good")])]
    failed = [SanityRow("encoder_last", "gradcam++", ["x"], [0.9], [0.9], 0.5, False)]
    summary = overall_verdict(context, rows, ["gradcam", "gradcam++"], failed)
    assert summary.median == "good"
    assert summary.approximate_at == [] and summary.sanity_failed == []


def test_layer_agreement_cites_only_its_own_notes() -> None:
    """The PDF prints the layer matrices without the layer means tables: their notes must
    not be numbered among the tables' (a note citing nothing)."""
    from reportgen.report.views.layers import layer_agreement

    notes = Footnotes()
    layer_agreement(make_context(), dataset(3), notes)
    assert all(reason == "no pair of defined, non-constant maps" for _, reason in notes.notes)
