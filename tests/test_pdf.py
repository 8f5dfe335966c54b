"""The archival PDF: a PDF/A-3u dossier with the spec, manifest and metrics attached,
readable, printable and reproducible."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pikepdf
import pytest
from pypdf import PdfReader

from reportgen.build import BuildOptions, build
from reportgen.compute.metrics.registry import GROUPS, METRICS
from reportgen.manifest import TIME_FIELDS
from reportgen.render.pdf import (
    METRIC_COLUMN_MM,
    METRIC_LABELS_MM,
    PAGE_CONTENT_MM,
    VERDICT_MM,
    metric_columns_fitting,
    print_tables,
    split_metric_columns,
)
from reportgen.render.pdf_figures import PRINT_URL, SITE_URL, PrintFigures, pixels_for
from reportgen.report.results import ShownValue
from reportgen.report.views.common import Definition, Footnotes, value_view
from reportgen.verify import verify_pdf
from tests.helpers import write_images, write_spec
from tests.pdf_fixtures import REPORT, build_project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pdf")
    build_project(root)
    return root


def page_texts(pdf: Path) -> list[str]:
    return [page.extract_text() or "" for page in PdfReader(pdf).pages]


def test_build_writes_a_pdfa3u_with_metadata_and_tags(project: Path):
    with pikepdf.open(project / "site" / "report.pdf") as pdf:
        assert len(pdf.pages) > 5
        info = pdf.docinfo
        assert str(info["/Title"]) == REPORT["title"]
        assert str(info["/Author"]) == REPORT["author"]
        assert "UnetPlusPlus" in str(info["/Subject"])
        assert "gradcam" in str(info["/Keywords"])
        assert str(info["/CreationDate"]).startswith("D:20250131")
        xmp = pdf.Root.Metadata.read_bytes().decode()
        meta = pdf.open_metadata()
        assert meta["pdfaid:part"] == "3"
        assert meta["pdfaid:conformance"] == "U"
        assert 'pdfuaid:part="1"' in xmp
        assert str(pdf.Root.Lang) == "en"
        assert "/StructTreeRoot" in pdf.Root
        assert "/OutputIntents" in pdf.Root
        for page in pdf.pages:
            for image in page.get_images().values():
                assert image.get("/Interpolate", False) is not True  # forbidden by PDF/A
                assert "/SMask" not in image  # figures are flattened to RGB


def test_pdf_attaches_the_spec_as_given_the_manifest_and_the_metrics(project: Path):
    site = project / "site"
    with pikepdf.open(site / "report.pdf") as pdf:
        files = {name: spec.get_file().read_bytes() for name, spec in pdf.attachments.items()}
        relations = {name: str(spec.obj.get("/AFRelationship"))
                     for name, spec in pdf.attachments.items()}
        assert len(pdf.Root.AF) == 3
    assert files == {"spec.yaml": (project / "spec.yaml").read_bytes(),
                     "manifest.json": (site / "data" / "manifest.json").read_bytes(),
                     "metrics.csv": (site / "data" / "metrics.csv").read_bytes()}
    assert relations == {"spec.yaml": "/Source", "manifest.json": "/Data",
                         "metrics.csv": "/Data"}


def test_pdf_has_cover_contents_sections_audit_and_signoff(project: Path):
    texts = page_texts(project / "site" / "report.pdf")
    total = len(texts)
    assert REPORT["title"] in texts[0] and "VAL-PDF-1" in texts[0]
    cover = " ".join(texts[0].split())
    assert "median verdict" in cover.lower()
    assert "median attention ratios of every layer × method at" in cover  # what it is of
    # plots carry the site's captions, which say what a plot cannot show
    assert any("Dashed lines: verdict bands (1 fair, 2 good, 5 excellent)" in " ".join(t.split())
               for t in texts)
    contents = texts[1]
    assert "Contents" in contents and "Audit trail" in contents
    # Page numbers come from target-counter: the audit page named in the contents has the audit.
    audit_line = next(line for line in contents.splitlines() if "Audit trail" in line)
    audit_page = int(audit_line.rstrip(". ").split()[-1].strip("."))
    assert "A Audit trail" in texts[audit_page - 1]
    assert f"Page 2 of {total}" in contents
    assert any("Image img00" in text for text in texts)
    assert any("Image img01" in text for text in texts)
    everything = "\n".join(texts)
    for expected in ("Metric definitions", "attention ratio", "Input hashes", "Software versions",
                     # what the site's methods and layers pages show is archived too
                     "Methods side by side", "Agreement between methods",
                     "Agreement between layers", "Layer encoder_last", "Method layercam",
                     "Reviewer sign-off", "Dr. A. Reviewer", "Clinical lead", "Signature",
                     "RANDOM weights"):
        assert expected in everything
    # the spec's Markdown is rendered: its heading prints, but stays out of the outline
    summary = " ".join(next(t for t in texts if "1 Summary" in t and "Intended use" in t).split())
    assert "Validation of the lesion segmentation model. Scope Adult scans only." in summary
    assert "**" not in summary and "##" not in summary
    with pikepdf.open(project / "site" / "report.pdf") as pdf, pdf.open_outline() as outline:
        titles, stack = [], list(outline.root)
        while stack:
            item = stack.pop()
            titles.append(item.title)
            stack.extend(item.children)
    assert "Scope" not in titles and "1 Summary" in titles


def test_pdftoppm_renders_the_cover_and_an_image_section(project: Path, tmp_path: Path):
    if shutil.which("pdftoppm") is None:
        pytest.skip("poppler-utils not installed")
    pdf = project / "site" / "report.pdf"
    image_page = next(i for i, text in enumerate(page_texts(pdf), 1) if "Image img00" in text
                      and "Input" in text)
    for page in (1, image_page):
        prefix = tmp_path / f"page{page}"
        subprocess.run(["pdftoppm", "-r", "50", "-png", "-f", str(page), "-l", str(page),
                        str(pdf), str(prefix)], check=True, capture_output=True)
        (rendered,) = tmp_path.glob(f"page{page}*.png")
        picture = cv2.imread(str(rendered))
        assert picture is not None and picture.shape[0] > 400
        assert picture.std() > 5  # not a blank page


def test_print_figures_are_downsampled_and_flattened(tmp_path: Path):
    site, scratch = tmp_path / "site", tmp_path / "scratch"
    (site / "figures").mkdir(parents=True)
    big = np.zeros((2000, 1600, 4), np.uint8)
    big[..., 2] = 255
    big[..., 3] = 128  # half transparent red
    cv2.imwrite(str(site / "figures" / "big.png"), big)
    cv2.imwrite(str(site / "figures" / "small.jpg"), np.full((64, 64, 3), 90, np.uint8))
    figures = PrintFigures(site, scratch)
    small = figures.get("figures/small.jpg", 40.0)
    assert small == SITE_URL + "figures/small.jpg"  # fits: used as is
    printed = figures.get("figures/big.png", 50.0)
    assert printed == PRINT_URL + "figures/big.png"  # a URL that names no real folder
    picture = cv2.imread(str(figures.roots[PRINT_URL] / "figures/big.png"),
                         cv2.IMREAD_UNCHANGED)
    assert picture.ndim == 3 and picture.shape[2] == 3  # alpha flattened on white
    assert max(picture.shape[:2]) <= pixels_for(50.0) <= 400
    assert tuple(int(v) for v in picture[0, 0]) == (127, 127, 255)  # BGR of red on white
    assert figures.get("figures/missing.png", 50.0) is None


def test_pdf_names_the_reportgen_commit_and_the_data_relative_to_the_spec(project: Path):
    text = "\n".join(page_texts(project / "site" / "report.pdf"))
    manifest = json.loads((project / "site" / "data" / "manifest.json").read_text())
    commit = manifest["versions"]["reportgen-commit"]
    assert "reportgen-commit" in text and commit[:12] in text
    assert "2 images from images" in text and "Ground truth masks" in text
    assert str(project) not in text.replace("\n", "")


def _without(manifest: dict, *extra: str) -> dict:
    trimmed = {k: v for k, v in manifest.items() if k not in TIME_FIELDS}
    trimmed["outputs"] = {k: v for k, v in manifest["outputs"].items() if k not in extra}
    return trimmed


def test_rebuilds_of_the_same_spec_are_identical_apart_from_time(project: Path, monkeypatch):
    """Two more builds of the same spec (SOURCE_DATE_EPOCH set): equal maps, and every
    file byte-identical, the PDF included (a reproducible build shows no timings). The
    builds run as different processes would: each writes in a scratch folder named by
    its process id, which must not reach the PDF."""
    default_site = project / "default-site"
    shutil.move(project / "site", default_site)
    try:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", "1738281600")
        monkeypatch.setattr("reportgen.output.os.getpid", lambda: 1001)
        shutil.move(build_project(project), project / "first")
        monkeypatch.setattr("reportgen.output.os.getpid", lambda: 2002)
        second = build_project(project)
        first = project / "first"
        _compare_rebuilds(first, second, default_site)
    finally:
        shutil.rmtree(project / "site", ignore_errors=True)
        shutil.rmtree(project / "first", ignore_errors=True)
        shutil.move(default_site, project / "site")


def _compare_rebuilds(first: Path, second: Path, default_site: Path) -> None:
    timing_pages = {"audit.html"}
    names = sorted(p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(first).as_posix() for p in first.rglob("*")
                           if p.is_file())
    differing = {n for n in names if (first / n).read_bytes() != (second / n).read_bytes()}
    assert differing == set()
    for npz in (second / "data" / "maps").glob("*.npz"):
        with zipfile.ZipFile(npz) as a, zipfile.ZipFile(first / "data" / "maps" / npz.name) as b:
            assert {n: a.read(n) for n in a.namelist()} == {n: b.read(n) for n in b.namelist()}
    one, two = (json.loads((s / "data" / "manifest.json").read_text()) for s in (first, second))
    assert one["started"] == two["started"] == "2025-01-31T00:00:00+00:00"
    assert one["timings"] == two["timings"] == {}
    assert _without(one, *timing_pages) == _without(two, *timing_pages)
    # The PDFs print the same pages and carry the same spec and metrics either way.
    assert page_texts(first / "report.pdf") == page_texts(second / "report.pdf")
    with pikepdf.open(first / "report.pdf") as a, pikepdf.open(second / "report.pdf") as b:
        for name in ("spec.yaml", "metrics.csv"):
            assert (a.attachments[name].get_file().read_bytes()
                    == b.attachments[name].get_file().read_bytes())
    # The default build (real clock) differs from these only in the time fields.
    default = json.loads((default_site / "data" / "manifest.json").read_text())
    assert default["timings"]
    assert _without(default, *timing_pages) == _without(one, *timing_pages)


def test_pdf_dates_and_identifier_come_from_the_report(project: Path):
    """No clock and no random number in the PDF: dates are the report date, the file
    identifier is derived from the report id."""
    from reportgen.render import pdf as pdf_module

    site = project / "site"
    with pikepdf.open(site / "report.pdf") as pdf:
        creation = str(pdf.docinfo["/CreationDate"])
        identifier = bytes(pdf.trailer.ID[0])
    assert creation == "D:20250131000000Z"
    assert identifier == pdf_module.pdf_identifier(REPORT["id"])
    assert pdf_module.pdf_identifier("VAL-PDF-2") != identifier  # one per report id


@pytest.fixture(scope="module")
def parted(tmp_path_factory) -> Path:
    """A 5-image dossier laid out in parts of 2 image sections (3 image parts)."""
    root = tmp_path_factory.mktemp("pdf-parts")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("reportgen.render.pdf.CHUNK_IMAGES", 2)
        build_project(root, images=5)
    return root


def test_a_dossier_laid_out_in_parts_numbers_its_pages_and_contents(parted: Path):
    pdf = parted / "site" / "report.pdf"
    texts = page_texts(pdf)
    total = len(texts)
    assert REPORT["title"] in texts[0] and "Page" not in texts[0]  # the cover has no footer
    for number, text in enumerate(texts[1:], 2):
        assert f"Page {number} of {total}" in text, number
    contents = texts[1]
    listed = {}
    for line in contents.splitlines():
        words = line.rstrip(". ").split()
        if words and words[-1].strip(".").isdigit():
            listed[" ".join(words[:-1]).rstrip(". ")] = int(words[-1].strip("."))
    images = {label: page for label, page in listed.items() if label.startswith("Image")}
    assert len(images) == 5
    for label, page in images.items():
        assert label.split(" —")[0] in texts[page - 1], label
    audit = next(page for label, page in listed.items() if "Audit trail" in label)
    assert "A Audit trail" in texts[audit - 1]
    sign = next(page for label, page in listed.items() if "Reviewer sign-off" in label)
    assert "B Reviewer sign-off" in texts[sign - 1] and "Dr. A. Reviewer" in texts[sign - 1]
    # the entries that lead into other parts are links to the pages they name
    with pikepdf.open(pdf) as document:
        number = {page.objgen: n for n, page in enumerate(document.pages, 1)}
        targets = {number[a.Dest[0].objgen] for a in document.pages[1].Annots
                   if isinstance(a.get("/Dest"), pikepdf.Array)}
        assert all(int(a.F) & 4 for a in document.pages[1].Annots)  # printable (PDF/A)
    assert targets == {*images.values(), audit, sign}


def test_a_dossier_laid_out_in_parts_is_one_pdfa3u_with_its_attachments(parted: Path):
    site = parted / "site"
    with pikepdf.open(site / "report.pdf") as pdf:
        meta = pdf.open_metadata()
        assert meta["pdfaid:part"] == "3" and meta["pdfaid:conformance"] == "U"
        assert str(pdf.docinfo["/Title"]) == REPORT["title"]
        assert "/OutputIntents" in pdf.Root and str(pdf.Root.Lang) == "en"
        assert "/StructTreeRoot" not in pdf.Root  # parts are untagged: no UA claim
        assert "pdfuaid" not in pdf.Root.Metadata.read_bytes().decode()
        files = {name: spec.get_file().read_bytes() for name, spec in pdf.attachments.items()}
        assert len(pdf.Root.AF) == 3
        with pdf.open_outline() as outline:
            (top,) = outline.root  # the title, as in one layout
            chapters = {item.title: [child.title for child in item.children]
                        for item in top.children}
    assert files == {"spec.yaml": (parted / "spec.yaml").read_bytes(),
                     "manifest.json": (site / "data" / "manifest.json").read_bytes(),
                     "metrics.csv": (site / "data" / "metrics.csv").read_bytes()}
    assert top.title == REPORT["title"]
    assert [title.split(" —")[0] for title in chapters["4 Images"]] == [
        f"Image img0{i}" for i in range(5)]
    assert "Embedded files" in chapters["A Audit trail"]
    assert "B Reviewer sign-off" in chapters
    head = (site / "report.pdf").read_bytes()[:32].splitlines()
    assert head[0] == b"%PDF-1.7"  # WeasyPrint's PDF/A-3 version, kept by the merge
    assert head[1].startswith(b"%") and all(byte > 127 for byte in head[1][1:5])  # binary
    assert verify_pdf(site / "report.pdf").ok


def test_a_dossier_laid_out_in_parts_rebuilds_byte_identical(parted: Path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1738281600")
    monkeypatch.setattr("reportgen.render.pdf.CHUNK_IMAGES", 2)
    default_site = parted / "default-site"
    shutil.move(parted / "site", default_site)
    try:
        first = (build_project(parted) / "report.pdf").read_bytes()
        second = (build_project(parted) / "report.pdf").read_bytes()
    finally:
        shutil.rmtree(parted / "site", ignore_errors=True)
        shutil.move(default_site, parted / "site")
    assert first == second


def test_a_dossier_laid_out_in_parts_can_be_signed_and_verified(parted: Path, tmp_path: Path):
    from reportgen.render.pdf_sign import sign_pdf
    from tests.site_fixtures import make_context
    from tests.test_verify import _self_signed_p12

    pdf = tmp_path / "signed.pdf"
    shutil.copy(parted / "site" / "report.pdf", pdf)
    sign_pdf(pdf, _self_signed_p12(tmp_path, b"secret"), "secret", make_context())
    report = verify_pdf(pdf)
    assert report.ok and report.signature.status == "valid", report


@pytest.fixture(scope="module")
def every_metric(tmp_path_factory) -> Path:
    """A dossier with every metric group, so its images have every metric column; the
    first image is part of the sanity check, the second is not."""
    root = tmp_path_factory.mktemp("pdf-every-metric")
    write_images(root, count=2, size=64)
    write_spec(root / "spec.yaml", report=REPORT, layers=["encoder_last", "decoder_last"],
               methods=["gradcam", "gradcam++"], metrics=list(GROUPS),
               metric_options={"faithfulness": {"steps": 4},
                               "sanity": {"images": 1, "levels": 2}})
    build(root / "spec.yaml", BuildOptions())
    return root


def word_boxes(pdf: Path) -> list[tuple[float, list[tuple[str, float, float, float]]]]:
    """Per page: its width and its words as (text, x min, x max, y min), in PDF points."""
    if shutil.which("pdftotext") is None:
        pytest.skip("poppler-utils not installed")
    xhtml = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], check=True,
                           capture_output=True, text=True).stdout
    pages = []
    for page in xhtml.split("<page ")[1:]:
        width = float(re.search(r'width="([\d.]+)"', page).group(1))
        words = [(html.unescape(text), float(x0), float(x1), float(y0)) for x0, y0, x1, text
                 in re.findall(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" '
                               r'yMax="[\d.]+">([^<]*)</word>', page)]
        pages.append((width, words))
    return pages


def test_every_table_column_of_a_dossier_with_every_metric_is_on_the_page(every_metric: Path):
    """Nine metric columns per layer x method: every word of every page, table cells
    included, lies inside the 18 mm side margins, and the sanity values of the image in
    the sanity check are printed under their column heads."""
    site = every_metric / "site"
    pages = word_boxes(site / "report.pdf")
    margin = 18 / 25.4 * 72
    for number, (width, words) in enumerate(pages, 1):
        outside = [w for w in words if w[1] < margin - 1 or w[2] > width - margin + 1]
        assert outside == [], f"page {number}: {outside}"

    texts = page_texts(site / "report.pdf")
    first = next(i for i, text in enumerate(texts) if "Image img00" in text and "Input" in text)
    last = next(i for i, text in enumerate(texts) if "Image img01" in text and "Input" in text)
    section = [(page, word) for page in range(first, last) for word in pages[page][1]]
    with (site / "data" / "metrics.csv").open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if row["image"] == "img00"
                and row["metric"] in ("sanity_spearman", "sanity_ssim")]
    assert len(rows) == 8  # 2 layers x 2 methods x 2 sanity metrics
    for metric, head in (("sanity_spearman", "correlation"), ("sanity_ssim", "SSIM")):
        (page, column), = [(p, w) for p, w in section if w[0] == head]
        # numbers are right-aligned under their (right-aligned) column head
        printed = sorted(w[0] for p, w in section if p == page
                         and abs(w[2] - column[2]) < 1.5 and w[3] > column[3])
        expected = sorted(value_view(ShownValue.of_row(r["value"], r["status"], r["reason"]),
                                     Footnotes()).text for r in rows if r["metric"] == metric)
        assert printed == expected, metric


def test_metric_columns_are_split_into_whole_groups_that_fit_the_page():
    """The per-map metrics of every group: stacked tables of whole groups in registry
    order, none wider than the page, only the first with the verdict."""
    columns = [Definition(m.name, m.title, m.formula, m.direction, m.reference)
               for m in METRICS.values() if m.per_map]
    groups = {m.name: m.group for m in METRICS.values()}
    tables = split_metric_columns(columns, groups)
    assert [names for names, _ in tables] == [["attention", "localisation"],
                                              ["faithfulness", "sanity"]]
    assert [d for _, shown in tables for d in shown] == columns
    for index, (_, shown) in enumerate(tables):
        verdict = VERDICT_MM if index == 0 else 0.0
        assert len(shown) <= metric_columns_fitting(verdict=index == 0)
        assert METRIC_LABELS_MM + verdict + len(shown) * METRIC_COLUMN_MM <= PAGE_CONTENT_MM
    # a group wider than a table is split over as many tables as it needs
    wide = [Definition(f"m{i}", f"metric {i}", "", "", "") for i in range(13)]
    sizes = [len(shown) for _, shown in split_metric_columns(wide, {})]
    assert sum(sizes) == 13 and len(sizes) == 3
    assert sizes[:2] == [metric_columns_fitting(verdict=True),
                         metric_columns_fitting(verdict=False)]


def test_an_images_metric_tables_cover_its_columns_and_name_their_groups():
    """The print tables are consecutive slices of the image view's columns: together
    every column once, each captioned with its metric groups, the verdict in the first."""
    columns = [Definition(m.name, m.title, m.formula, m.direction, m.reference)
               for m in METRICS.values() if m.per_map]
    groups = {m.name: m.group for m in METRICS.values()}
    first, second = print_tables(columns, groups)
    assert first.caption == "Metrics per layer and method, 1 of 2: attention and localisation"
    assert second.caption == ("Metrics per layer and method, 2 of 2: faithfulness and "
                              "sanity check (cascading randomisation)")
    assert (first.verdict, second.verdict) == (True, False)
    assert (first.start, first.stop, second.start, second.stop) == (
        0, first.stop, first.stop, len(columns))


def test_characters_no_font_prints_are_named_in_the_warnings_before_they_print_as_boxes(
        tmp_path: Path):
    """A character that no installed font has prints as an empty box, while the PDF's text
    layer still reads right: the build names it (and where it is) in the report's warnings,
    in the manifest and in the PDF itself. U+10FFFD is in no font."""
    write_images(tmp_path, count=1, size=64)
    spec = write_spec(tmp_path / "spec.yaml",
                      report={**REPORT, "title": "Validation \U0010fffd"},
                      layers=["decoder_last"], methods=["gradcam"], metrics=["attention"])
    build(spec, BuildOptions())
    manifest = json.loads((tmp_path / "site" / "data" / "manifest.json").read_text())
    [warning] = [w for w in manifest["warnings"] if "no installed font" in w]
    assert "1 character(s)" in warning and "\U0010fffd (U+10FFFD)" in warning
    assert "; in title)" in warning and "fonts-noto-cjk" in warning  # the spec escapes it
    text = subprocess.run(["pdftotext", str(tmp_path / "site" / "report.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    assert "no installed font" in text


def test_a_report_every_font_prints_has_no_font_warning(project: Path):
    """Greek, accents and the report's symbols (ρ, ≥, –) are in the machine's fonts."""
    manifest = json.loads((project / "site" / "data" / "manifest.json").read_text())
    assert not [w for w in manifest["warnings"] if "font" in w]


def test_approximate_score_cam_is_marked_per_layer_and_every_grid_has_its_scale(
        tmp_path: Path):
    """max_channels 16 leaves out channels at encoder_last (320) but not at decoder_last
    (16) or seg_head (1): the PDF says so in the note, marks only encoder_last's values,
    and prints the colour scale and the outline colours under every image's grid."""
    write_images(tmp_path, count=1, size=64)
    spec = write_spec(tmp_path / "spec.yaml", report=REPORT,
                      layers=["encoder_last", "decoder_last", "seg_head"],
                      methods=["gradcam", "scorecam"],
                      method_options={"scorecam": {"max_channels": 16}}, metrics=["attention"])
    build(spec, BuildOptions())
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "site" / "report.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    note = ("≈ approximate: Score-CAM scored only the 16 highest-variance channels "
            "(method_options.scorecam.max_channels) at encoder_last (320 channels)")
    flowing = " ".join(text.split())
    assert note in flowing
    assert "map value 0 (none) to 1 (highest in that map" in flowing
    assert "magenta outline: ground truth" in flowing
    # the cover says which layers its verdict leaves out, and why
    assert "Not counted: seg_head (its maps restate the predicted logits" in flowing
    summary = text.split("Verdict summary")[1].split("Attention")[0]
    lines: dict[str, str] = {}
    for line in summary.splitlines():
        if line.strip():
            lines.setdefault(line.split()[0], line)  # the table's row, not the note's line
    assert "≈" in lines["encoder_last"] and "≈" not in lines["decoder_last"]
    # and the data says which rows of metrics.csv come from approximate maps
    manifest = json.loads((tmp_path / "site" / "data" / "manifest.json").read_text())
    assert manifest["engine"]["approximate"] == [["encoder_last", "scorecam"]]


def test_the_hash_table_shows_input_paths_as_the_cover_shows_their_folders():
    """Relative to the spec where they share a folder with it; absolute where a relative
    path would only climb to the root (/tmp/specs -> ../../data/...)."""
    from reportgen.render.pdf import _input_hashes

    manifest = {"inputs": {"spec": {"path": "spec.yaml", "sha256": "s"},
                           "images": [{"id": "a", "path": "a.png", "sha256": "1",
                                       "location": "images/a.png", "mask": "a.png",
                                       "mask_sha256": "2",
                                       "mask_location": "../../data-reportgen/masks/a.png"}]}}
    rows = _input_hashes(manifest, Path("/tmp/specs"))
    assert ("Image a", "images/a.png", "1") in rows
    assert ("Mask a", "/data-reportgen/masks/a.png", "2") in rows


def test_an_image_section_without_ratios_explains_its_approximate_rows(tmp_path: Path):
    """With localisation only, no grid cell has a ratio to mark; the metric rows of the
    approximate map are marked all the same, so the section says what the mark means."""
    from reportgen.render.pdf import print_image
    from reportgen.report.views.image import CellRecord, ImageRecord
    from tests.site_fixtures import make_context

    context = make_context()  # approximate: encoder_last x gradcam++
    cells = {(layer, method): CellRecord("n/a", {"energy_pointing_game": ShownValue(0.5)},
                                         [], "")
             for layer in ("encoder_last", "decoder_last") for method in ("gradcam", "gradcam++")}
    image = ImageRecord("img-000", "a.png", None, False, None, None, cells, [], (64, 64))
    section = print_image(context, image, PrintFigures(tmp_path, tmp_path), 0, 1)
    marked = [(r.layer, r.method) for r in section.view.metric_rows if r.approximate]
    assert marked == [("encoder_last", "gradcam++")]
    assert section.view.page.approximate_note == context.approximate_note
