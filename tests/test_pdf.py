"""The archival PDF: a PDF/A-3u dossier with the spec, manifest and metrics attached,
readable, printable and reproducible."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pikepdf
import pytest
from pypdf import PdfReader

from reportgen.manifest import TIME_FIELDS
from reportgen.render.pdf_figures import PrintFigures, pixels_for
from reportgen.verify import verify_pdf
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
    assert "overall verdict" in texts[0].lower()
    contents = texts[1]
    assert "Contents" in contents and "Audit appendix" in contents
    # Page numbers come from target-counter: the audit page named in the contents has the audit.
    audit_line = next(line for line in contents.splitlines() if "Audit appendix" in line)
    audit_page = int(audit_line.rstrip(". ").split()[-1].strip("."))
    assert "A Audit appendix" in texts[audit_page - 1]
    assert f"Page 2 of {total}" in contents
    assert any("Image img00" in text for text in texts)
    assert any("Image img01" in text for text in texts)
    everything = "\n".join(texts)
    for expected in ("Metric definitions", "attention ratio", "Input hashes", "Software versions",
                     "Reviewer sign-off", "Dr. A. Reviewer", "Clinical lead", "Signature",
                     "RANDOM weights"):
        assert expected in everything


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
    assert small == (site / "figures" / "small.jpg").resolve().as_uri()  # fits: used as is
    printed = figures.get("figures/big.png", 50.0)
    assert printed is not None and printed.startswith(scratch.resolve().as_uri())
    picture = cv2.imread(printed.removeprefix("file://"), cv2.IMREAD_UNCHANGED)
    assert picture.ndim == 3 and picture.shape[2] == 3  # alpha flattened on white
    assert max(picture.shape[:2]) <= pixels_for(50.0) <= 400
    assert tuple(int(v) for v in picture[0, 0]) == (127, 127, 255)  # BGR of red on white
    assert figures.get("figures/missing.png", 50.0) is None


def _without(manifest: dict, *extra: str) -> dict:
    trimmed = {k: v for k, v in manifest.items() if k not in TIME_FIELDS}
    trimmed["outputs"] = {k: v for k, v in manifest["outputs"].items() if k not in extra}
    return trimmed


def test_rebuilds_of_the_same_spec_are_identical_apart_from_time(project: Path, monkeypatch):
    """Two more builds of the same spec (SOURCE_DATE_EPOCH set): equal maps, and every
    file byte-identical, the PDF included (a reproducible build shows no timings)."""
    default_site = project / "default-site"
    shutil.move(project / "site", default_site)
    try:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", "1738281600")
        shutil.move(build_project(project), project / "first")
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
    audit = next(page for label, page in listed.items() if "Audit appendix" in label)
    assert "A Audit appendix" in texts[audit - 1]
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
    assert "Embedded files" in chapters["A Audit appendix"]
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
    pytest.importorskip("pyhanko")
    from reportgen.render.pdf_sign import sign_pdf
    from tests.site_fixtures import make_context
    from tests.test_verify import _self_signed_p12

    pdf = tmp_path / "signed.pdf"
    shutil.copy(parted / "site" / "report.pdf", pdf)
    sign_pdf(pdf, _self_signed_p12(tmp_path, b"secret"), "secret", make_context())
    report = verify_pdf(pdf)
    assert report.ok and report.signature.status == "valid", report
