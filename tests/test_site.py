"""The static site built from synthetic results: every page parses, every link resolves
inside the site, nothing is fetched from outside, user strings are escaped, and the
same inputs give the same bytes."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from reportgen.render import figures as fig
from reportgen.render.site import SiteWriter
from tests.site_fixtures import (
    make_aggregates,
    make_context,
    make_result,
    make_results,
    make_sanity,
    parse,
)

DATA_FILES = {"data/metrics.csv", "data/metrics.json", "data/metrics_summary.csv",
              "data/manifest.json", "data/checksums.sha256", "report.pdf"}
"""Written by the build next to the site; the only links allowed to point at missing files."""

EXTERNAL = re.compile(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|https?://")


def build(out: Path, count: int = 3, single_file: bool = False) -> list[Path]:
    results = make_results(count)
    writer = SiteWriter(out, make_context(image_count=count), [r.id for r in results],
                        single_file=single_file)
    for result in results:
        writer.add_image(result)
    return writer.finish(make_aggregates(results), make_sanity())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build(out, single_file=True)
    return out


def test_build_writes_every_page_and_returns_every_file(tmp_path: Path) -> None:
    files = build(tmp_path)
    names = {path.relative_to(tmp_path).as_posix() for path in files}
    for page in ("index.html", "methods.html", "layers.html", "audit.html",
                 "images/img-000.html", "images/img-001.html", "images/img-002.html",
                 "assets/site.css", "assets/site.js", "figures/colorbar.png",
                 "thumbs/img-000.jpg", "plots/attention_ratio.png", "plots/dice.png"):
        assert page in names
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert names == on_disk
    assert "report-single.html" not in names


def test_every_link_and_image_resolves_inside_the_site(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 8  # 4 dataset pages, 3 image pages, report-single.html
    ids = {page: parse(page).ids for page in pages}
    for page in pages:
        parsed = parse(page)
        assert parsed.links, page
        for link in parsed.links:
            if link.startswith("data:"):
                continue
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, f"{page.name}: {link}"
            if not parts.path:
                assert parts.fragment in ids[page], f"{page.name}: missing anchor {link}"
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_relative_to(site.resolve()), f"{page.name}: {link} leaves the site"
            relative = target.relative_to(site.resolve()).as_posix()
            if relative in DATA_FILES:
                continue
            assert target.is_file(), f"{page.name}: {link} does not exist"
            if parts.fragment and target.suffix == ".html":
                assert parts.fragment in ids.get(target, parse(target).ids), link


def test_no_page_asset_or_script_refers_outside(site: Path) -> None:
    for path in [*site.rglob("*.html"), *site.rglob("*.css"), *site.rglob("*.js")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), path
        assert "@import" not in text and "url(" not in text.replace("data:", ""), path


def test_every_image_has_alt_text(site: Path) -> None:
    for page in site.rglob("*.html"):
        for image in parse(page).images:
            assert (image.get("alt") or "").strip(), f"{page.name}: {image.get('src', '')[:60]}"


def test_hostile_names_are_escaped_everywhere(site: Path) -> None:
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<script>alert" not in text, page
        assert "<img src=x" not in text, page
        assert "<b>markup</b>" not in text, page
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "Validation &lt;script&gt;alert(1)&lt;/script&gt;" in index
    image = (site / "images/img-000.html").read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(2)&gt;.png" in image
    audit = (site / "audit.html").read_text(encoding="utf-8")
    assert "warning about &lt;script&gt;" in audit


def test_pages_use_semantic_headings_and_one_h1(site: Path) -> None:
    for name in ("index.html", "methods.html", "layers.html", "audit.html",
                 "images/img-001.html"):
        parsed = parse(site / name)
        assert parsed.headings.count("h1") == 1, name
        assert "h2" in parsed.headings and "table" in parsed.tags and "nav" in parsed.tags


def test_image_page_shows_grid_placeholders_metrics_and_links(site: Path) -> None:
    page = (site / "images/img-001.html").read_text(encoding="utf-8")
    parsed = parse(site / "images/img-001.html")
    assert 'rel="prev" href="img-000.html"' in page and 'rel="next" href="img-002.html"' in page
    assert "empty target region" in page  # the undefined cell is a labelled placeholder
    assert 'class="placeholder"' in page
    # 2 layers x 2 methods, one undefined: 3 cells x 3 overlays + 3 heatmaps, 3 main figures
    cell_images = [link for link in parsed.links if "/cell-" in link]
    assert len(set(cell_images)) == 3 * 4
    assert "cell-1-1-" not in page
    for title in ("attention ratio", "energy pointing game", "deletion AUC"):
        assert title in page
    assert "Score-CAM approximate: 16 of 320 channels" in page
    first = (site / "images/img-000.html").read_text(encoding="utf-8")
    assert 'rel="prev"' not in first
    flagged = (site / "images/img-002.html").read_text(encoding="utf-8")
    assert "zero everywhere" in flagged and "No ground truth" in flagged


def test_index_lists_model_card_verdicts_tables_plots_and_downloads(site: Path) -> None:
    page = (site / "index.html").read_text(encoding="utf-8")
    for text in ("UnetPlusPlus", "efficientnet-b5", "ab" * 32, "28,123,456", "64 × 64 px",
                 "Dataset/test/*.png", "Verdict summary", "mean(L in P) / mean(L out of P)",
                 "plots/attention_ratio.png", "plots/dice.png", "data/metrics.csv",
                 "data/manifest.json", "report.pdf", 'id="gallery"',
                 "Not counted: encoder_early (low ratios are expected there).",
                 "Counted maps that failed the sanity check: encoder_last × gradcam++",
                 "(of two middle verdicts, the worse)",
                 '<p class="headline">Median verdict <span class="badge',  # first, at the top
                 "warning about &lt;script&gt;"):  # the build's warnings come first
        assert text in page, text
    assert page.count('class="gallery-item"') == 3
    assert page.index('class="headline"') < page.index('id="model-card"')  # the verdict first
    # plots carry their pixel size, so the page does not shift under a reader's click
    # while they load (the gallery's thumbnails keep their place by CSS aspect-ratio)
    plots = re.findall(r'<img class="zoomable" src="plots/(\w+)\.png"[^>]*>', page)
    sized = re.findall(r'<img class="zoomable" src="plots/(\w+)\.png"[^>]* width="(\d+)" '
                       r'height="(\d+)"', page)
    assert plots and [name for name, _, _ in sized] == plots
    for name, width, height in sized:
        data = (site / "plots" / f"{name}.png").read_bytes()
        assert (int(width), int(height)) == fig.png_size(data)


def test_approximate_maps_are_marked_where_their_values_are_with_what_the_mark_means(
        site: Path) -> None:
    """Only encoder_last x gradcam++ is approximate: its summary cell, aggregate rows, layer
    means and image cells carry "≈", decoder_last's do not, and each page says what it is."""
    index = (site / "index.html").read_text(encoding="utf-8")
    summary = index.split('class="data summary"')[1].split("</table>")[0]
    rows = {row.split("</th>")[0].rsplit(">", 1)[-1]: row
            for row in re.findall(r'<th scope="row">.*?</tr>', summary, re.S)}
    assert rows["encoder_last"].count('class="approx"') == 1
    assert 'class="approx"' not in rows["decoder_last"]
    aggregates = index.split('id="aggregates"')[1].split('id="plots"')[0]
    marked = re.findall(r'<th scope="row">(\w+)</th><td>gradcam\+\+ <abbr class="approx"',
                        aggregates)
    assert marked and set(marked) == {"encoder_last"}
    for page in ("index.html", "layers.html", "methods.html", "images/img-000.html"):
        text = (site / page).read_text(encoding="utf-8")
        assert 'class="approx"' in text, page
        assert "≈ approximate: 16 of 320 channels scored at encoder_last" in text, page
    image = (site / "images/img-000.html").read_text(encoding="utf-8")
    assert "map value, 0 (none) to 1 (highest in that map" in image  # the grid's colour scale


def test_audit_has_spec_versions_hashes_and_exclusions(site: Path) -> None:
    page = (site / "audit.html").read_text(encoding="utf-8")
    for text in ("validation.yaml", "title: &lt;script&gt;", "torch", "2.5.0", "fp32",
                 "1.50 s", "unreadable", "ab" * 32, "data/manifest.json"):
        assert text in page, text


def test_reviewer_without_a_name_gets_a_blank_line_to_fill_in(tmp_path: Path) -> None:
    context = make_context(image_count=1)
    context.reviewers = [("", "Clinical reviewer"), ("Dr. Named", "ML engineer"), ("", "")]
    results = make_results(1)
    writer = SiteWriter(tmp_path, context, [r.id for r in results])
    for result in results:
        writer.add_image(result)
    writer.finish(make_aggregates(results), make_sanity())
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    items = re.findall(r"<li>(.*?)</li>",
                       page.split('id="reviewers"')[1].split("</ul>")[0], re.S)
    blank = ('<span class="blank-name" aria-hidden="true">________________</span>'
             '<span class="visually-hidden">name to be filled in</span>')
    assert items == [f"{blank} (Clinical reviewer)", "<strong>Dr. Named</strong>, ML engineer",
                     blank]


def test_plots_without_data_say_why(tmp_path: Path) -> None:
    results = [make_result(0, ground_truth=False)]
    for cell in results[0].cells.values():
        cell.metrics.clear()
        cell.curves.clear()
    writer = SiteWriter(tmp_path, make_context(image_count=1), [results[0].id])
    writer.add_image(results[0])
    files = writer.finish([], [])
    assert not any(path.parent.name == "plots" for path in files)
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "no histogram" in index and "no distribution to plot" in index
    methods = (tmp_path / "methods.html").read_text(encoding="utf-8")
    assert "sanity check was not part of this report" in methods


def test_same_inputs_give_identical_bytes(tmp_path: Path) -> None:
    first = build(tmp_path / "a", single_file=True)
    second = build(tmp_path / "b", single_file=True)
    assert [p.relative_to(tmp_path / "a") for p in first] == \
        [p.relative_to(tmp_path / "b") for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_single_file_is_self_contained(site: Path) -> None:
    single = site / "report-single.html"
    parsed = parse(single)
    assert "script" in parsed.tags and not any(
        not link.startswith(("data:", "#")) for link in parsed.links)
    text = single.read_text(encoding="utf-8")
    assert text.count('class="single-image"') == 3
    assert "data:image/jpeg;base64," in text and "data:image/png;base64," in text


def test_twenty_image_single_file_stays_small(tmp_path: Path) -> None:
    results = [make_result(index, size=160) for index in range(20)]
    writer = SiteWriter(tmp_path, make_context(image_count=20), [r.id for r in results],
                        single_file=True)
    for result in results:
        writer.add_image(result)
    writer.finish(make_aggregates(results), make_sanity())
    assert (tmp_path / "report-single.html").stat().st_size < 4 * 1024 * 1024


def test_writer_rejects_unsafe_unknown_and_repeated_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file-name safe"):
        SiteWriter(tmp_path, make_context(), ["../evil"])
    writer = SiteWriter(tmp_path, make_context(), ["img-000"])
    with pytest.raises(ValueError, match="not among"):
        writer.add_image(make_result(1))
    writer.add_image(make_result(0))
    with pytest.raises(ValueError, match="already added"):
        writer.add_image(make_result(0))


def test_announced_image_never_added_gets_a_page(tmp_path: Path) -> None:
    writer = SiteWriter(tmp_path, make_context(), ["img-000", "img-001"])
    writer.add_image(make_result(0))
    writer.finish([], [])
    assert "not rendered" in (tmp_path / "images/img-001.html").read_text(encoding="utf-8")


def test_the_methods_page_prints_each_sections_notes_under_it(site: Path) -> None:
    page = (site / "methods.html").read_text(encoding="utf-8")
    sanity = page.split('id="sanity"')[1].split('id="agreement"')[0]
    assert "a map is constant" in sanity and 'class="footnotes"' in sanity
