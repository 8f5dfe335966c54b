"""The archival PDF: a print rendering of the report, PDF/A-3u with its evidence attached.

    write_pdf(site, site / "report.pdf", context, spec_path, manifest, writer.built)

The PDF is drawn by WeasyPrint from print templates of its own
(`templates/pdf/`, `assets/pdf.css`): cover, table of contents, methods and
metric definitions, aggregate tables, one section per image, the audit trail
and a reviewer sign-off block. It renders the site's page views (`report.views`),
adding only print sizes and page breaks, and its figures are the site's figure
files, downsampled for print (`render.pdf_figures`), so nothing is computed twice.

Standards. The file is PDF/A-3u (ISO 19005-3, Unicode text) because PDF/A-3 is
the part that allows arbitrary embedded files: the spec exactly as given, the
manifest and `metrics.csv` are attached with AFRelationship Source / Data.
WeasyPrint writes one variant per file, so PDF/UA-1 cannot be asked for as well;
instead the PDF is tagged (`pdf_tags`, a structure tree with the document
language, headings, tables and figure alternative texts) and carries the PDF/UA-1
identification in its XMP metadata, which is exactly what WeasyPrint's own
`pdf/ua-1` variant adds on top of tagging. PDF/A-3a would also demand tagging,
but the dossier is declared `u` (the level reviewers' validators check) so that a
tagging shortcoming of the experimental WeasyPrint tagger cannot void the
archival claim. Figures are flattened to RGB (no soft masks) and colours are sRGB
with WeasyPrint's sRGB output intent.

Memory. WeasyPrint keeps a whole document's layout until it writes it (about 1-2 MiB
per image section). A dossier of more than `CHUNK_IMAGES` images is therefore laid out
in parts (front matter, `CHUNK_IMAGES` image sections at a time, appendices), each
written as a PDF of its own and concatenated (pypdf), in two passes so that "page X of
Y" and the contents carry the final numbers; see `_write_in_parts`. Such a dossier is
still PDF/A-3u with its attachments, metadata, outline and linked contents, but
untagged: the parts' structure trees cannot be joined, so it makes no PDF/UA claim.

Determinism. The creation and modification dates are the report date (midnight
UTC), attachment dates are the same instant, and the file identifier is derived
from the report id; WeasyPrint's second identifier is an MD5 of the content. Two
builds of the same spec therefore give byte-identical PDFs whenever the embedded
manifest is identical, i.e. with `SOURCE_DATE_EPOCH` set (see `manifest`);
otherwise they differ only by the manifest's time fields, in the attachment and
in the audit trail's timing table.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from importlib import resources
from itertools import groupby
from pathlib import Path

import jinja2
import pydyf

from reportgen import __version__
from reportgen.errors import UserError
from reportgen.hashing import sha256_file
from reportgen.manifest import shown_location
from reportgen.render.pdf_figures import SITE_URL, PrintFigures
from reportgen.render.site import BuiltSite
from reportgen.report import layout
from reportgen.report.layout import cell_figure_name
from reportgen.report.results import ReportContext, ShownValue
from reportgen.report.statistics import RANK_SIZE
from reportgen.report.views.audit import AuditView, audit_view
from reportgen.report.views.common import (
    Definition,
    Footnotes,
    MatrixView,
    VerdictSummary,
    format_count,
    ordered_names,
)
from reportgen.report.views.image import ImagePageView, ImageRecord, image_page_view
from reportgen.report.views.layers import LayerView, layer_agreement, layer_rows
from reportgen.report.views.methods import MethodsView, methods_view
from reportgen.report.views.summary import IndexView, index_view

log = logging.getLogger(__name__)

PDF_VARIANT = "pdf/a-3u"
LANG = "en"
PAGE_CONTENT_MM = 174.0  # A4 width (210 mm) minus 18 mm margins
GRID_LABEL_MM = 26.0  # the layer-name column of an image's grid
MAIN_FIGURE_MM = 54.0  # input / ground truth / prediction, three across
PLOT_MM = 150.0
MAX_CELL_MM = 48.0
# An image's metric tables (the widths `table.metrics` in pdf.css gives its columns):
# layer and method head every row of every table, the verdict only the first table's,
# and the metric columns share the rest, each at least METRIC_COLUMN_MM wide.
METRIC_LABELS_MM = 50.0  # layer (25 mm) and method (25 mm)
VERDICT_MM = 23.0
METRIC_COLUMN_MM = 20.0
GROUP_TITLES = {"attention": "attention", "dice": "overlap with the ground truth",
                "localisation": "localisation", "faithfulness": "faithfulness",
                "sanity": "sanity check (cascading randomisation)"}
GRID_VARIANTS = ("contours", "overlay")  # the overlay shown in print, first found
PLOTS = (("attention_ratio", "Attention ratio per layer and method"),
         ("dice", "Dice per image"), ("methods", "Methods compared"),
         ("layers", "Attention through the network"), ("curves", "Deletion and insertion"),
         ("sanity", "Sanity check"))
DECISIONS = ("Approved", "Approved with conditions", "Rejected")
BLANK_REVIEWERS = 2
COMPACT_SUMMARY_METHODS = 5  # above this, the verdict summary's type shrinks to fit words
CHUNK_IMAGES = 40  # image sections per separately laid-out part of a larger dossier
PT = 0.75  # PDF points per CSS pixel
UA_IDENTIFICATION = (b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                     b'<rdf:Description rdf:about="" '
                     b'xmlns:pdfuaid="http://www.aiim.org/pdfua/ns/id/" pdfuaid:part="1"/>'
                     b'</rdf:RDF>')


# --------------------------------------------------------------------------- view model


@dataclass(frozen=True)
class PrintFigure:
    src: str | None  # None: the placeholder is printed instead
    alt: str
    caption: str
    placeholder: str = ""


@dataclass(frozen=True)
class PrintTable:
    """One of an image's metric tables: the metric columns [start, stop) of its view,
    whole metric groups side by side, as many as fit the page width; every row starts
    with its layer and method."""

    caption: str
    start: int
    stop: int
    verdict: bool  # whether the attention-ratio verdict is printed (the first table)


@dataclass
class PrintImage:
    """An image's section of the PDF: the site's view of the image (`ImagePageView`, its
    figures the print versions) and its metric columns split into tables that fit."""

    anchor: str
    view: ImagePageView
    tables: list[PrintTable]


@dataclass
class SignOff:
    name: str
    role: str


@dataclass
class PdfView:
    """Everything the print templates show; built in Python, printed by Jinja."""

    title: str
    report_id: str
    author: str
    date: str
    generator: str
    keywords: list[str]
    subject: str
    overall: VerdictSummary
    cover_rows: list[tuple[str, str]]
    warnings: list[str]
    bounds: list[str]
    index: IndexView
    summary_class: str  # "summary", or "summary compact" when many methods share the width
    methods: MethodsView
    layer_matrices: list[MatrixView]  # agreement between layers, one per method
    layer_footnotes: list[tuple[int, str]]
    layers: list[LayerView]
    plots: list[PrintFigure]
    audit: AuditView
    input_hashes: list[tuple[str, str, str]]  # (what, file, sha256)
    timings: list[tuple[str, str]]
    attachments: list[tuple[str, str]]  # (file name, what it is)
    reviewers: list[SignOff]
    decisions: tuple[str, ...]
    images: Iterator[PrintImage]
    image_toc: list[tuple[str, str]]  # (anchor, label)
    colorbar: str | None
    colormap: str
    sections: Callable[[int, int], Iterator[PrintImage]]  # image sections [start, stop)
    # What one rendering holds: "all" (the whole dossier in one layout), or a part of
    # a dossier laid out in parts: "front" (cover to the images' introduction),
    # "images" (the sections `images` yields) or "back" (appendices).
    part: str = "all"
    page_refs: dict[str, int] | None = None  # anchor -> page, printed in the contents


def grid_cell_mm(method_count: int) -> float:
    """Printed width of one grid figure: the grid fills the page width."""
    return min(MAX_CELL_MM, (PAGE_CONTENT_MM - GRID_LABEL_MM) / max(1, method_count) - 2.0)


def metric_columns_fitting(verdict: bool) -> int:
    """How many metric columns one of an image's metric tables holds within the page
    width, beside the layer and method (and the verdict, where `verdict`)."""
    free = PAGE_CONTENT_MM - METRIC_LABELS_MM - (VERDICT_MM if verdict else 0.0)
    return max(1, int(free // METRIC_COLUMN_MM))


def split_metric_columns(columns: Sequence[Definition], groups: Mapping[str, str]
                         ) -> list[tuple[list[str], list[Definition]]]:
    """An image's metric columns as stacked tables that fit the page: (metric groups,
    columns) per table. The groups (`groups`: metric name -> group) keep their order and
    stay whole, side by side while `metric_columns_fitting` allows; only a group wider
    than a table is split. The first table also holds the verdict."""
    tables: list[tuple[list[str], list[Definition]]] = []
    for group, run in groupby(columns, key=lambda d: groups.get(d.name, "")):
        pending = list(run)
        if tables and (len(tables[-1][1]) + len(pending)
                       <= metric_columns_fitting(verdict=len(tables) == 1)):
            tables[-1][0].append(group)
            tables[-1][1].extend(pending)
            continue
        while pending:
            room = metric_columns_fitting(verdict=not tables)
            tables.append(([group], pending[:room]))
            pending = pending[room:]
    return tables


def print_tables(columns: Sequence[Definition], groups: Mapping[str, str]) -> list[PrintTable]:
    """An image's metric columns as the stacked tables that print them
    (`split_metric_columns`), each captioned with its metric groups."""
    split = split_metric_columns(columns, groups)
    tables = []
    start = 0
    for number, (names, shown) in enumerate(split, 1):
        titles = " and ".join(dict.fromkeys(GROUP_TITLES.get(g, g or "other metrics")
                                            for g in names))
        count = f", {number} of {len(split)}" if len(split) > 1 else ""
        tables.append(PrintTable(f"Metrics per layer and method{count}: {titles}", start,
                                 start + len(shown), number == 1))
        start += len(shown)
    return tables


def print_figures(image: ImageRecord, figures: PrintFigures, layers: Sequence[str],
                  methods: Sequence[str]) -> dict[str, str]:
    """An image's figures for print, by the names the image view looks up: the input,
    ground truth and prediction, and one overlay per grid cell (`GRID_VARIANTS`)."""
    found: dict[str, str] = {}
    for name in ("input", "ground_truth", "prediction"):
        src = figures.get(layout.figure(image.id, name, layout.figure_suffix(name)),
                          MAIN_FIGURE_MM)
        if src:
            found[name] = src
    cell_mm = grid_cell_mm(len(methods))
    for r in range(len(layers)):
        for c in range(len(methods)):
            for variant in GRID_VARIANTS:
                name = cell_figure_name(r, c, variant)
                src = figures.get(layout.figure(image.id, name, layout.figure_suffix(name)),
                                  cell_mm)
                if src:
                    found[name] = src
                    break
    return found


def read_metric_rows(path: Path) -> dict[str, list[dict[str, str]]]:
    """The rows of `metrics.csv` grouped by image id (file order kept)."""
    grouped: dict[str, list[dict[str, str]]] = {}
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                grouped.setdefault(row["image"], []).append(row)
    return grouped


def with_exported_metrics(image: ImageRecord, rows: Sequence[dict[str, str]]) -> ImageRecord:
    """`image` with every metric value of its exported rows: the sanity check's values
    per map are measured after the image's page is written, so only the export has
    them all."""
    metrics: dict[tuple[str, str], dict[str, ShownValue]] = {}
    for row in rows:
        if row["layer"] or row["method"]:
            metrics.setdefault((row["layer"], row["method"]), {})[row["metric"]] = (
                ShownValue.of_row(row["value"], row["status"], row["reason"]))
    cells = {key: replace(cell, metrics={**cell.metrics, **metrics.get(key, {})})
             for key, cell in image.cells.items()}
    return replace(image, cells=cells)


def print_image(context: ReportContext, image: ImageRecord, figures: PrintFigures,
                position: int, total: int) -> PrintImage:
    """The print section of one image: its view, with the print versions of its figures."""
    layers, methods = ordered_names(context, image.cells)
    sources = print_figures(image, figures, layers, methods)
    colorbar = figures.get(layout.COLORBAR, 60.0)
    if colorbar:
        sources["colorbar"] = colorbar
    view = image_page_view(context, image, sources, position, total, None, None)
    groups = {d.name: d.group for d in context.metric_definitions}
    return PrintImage(f"image-{image.id}", view, print_tables(view.metric_columns, groups))


def _input_hashes(manifest: dict, spec_folder: Path) -> list[tuple[str, str, str]]:
    """(what, where, sha256) of every input; images and masks where the manifest locates
    them, shown as the cover shows folders (`shown_location`)."""
    inputs = manifest.get("inputs", {})

    def where(location: str | None, name: str) -> str:
        return shown_location(spec_folder / location, spec_folder) if location else name

    spec = inputs.get("spec", {})
    rows = [("Spec", spec.get("path") or "", spec.get("sha256") or "")]
    checkpoint = inputs.get("checkpoint", {})
    rows.append(("Checkpoint", checkpoint.get("path") or "none",
                 checkpoint.get("sha256") or "—"))
    for image in inputs.get("images", []):
        rows.append((f"Image {image['id']}", where(image.get("location"), image["path"]),
                     image["sha256"]))
        if image.get("mask"):
            rows.append((f"Mask {image['id']}", where(image.get("mask_location"), image["mask"]),
                         image.get("mask_sha256") or ""))
    return rows


def print_plots(figures: PrintFigures, captions: Mapping[str, str]) -> list[PrintFigure]:
    """The dataset plots the site drew, in print order; `captions` (plot name -> caption,
    as the site's) say what a plot cannot show."""
    plots = []
    for name, title in PLOTS:
        src = figures.get(layout.plot(name), PLOT_MM)
        if src:
            caption = captions.get(name, "")
            plots.append(PrintFigure(src, f"Plot: {title}",
                                     f"{title}. {caption}" if caption else title))
    return plots


def cover_rows(context: ReportContext) -> list[tuple[str, str]]:
    """The cover's summary of the report, as (label, value) rows."""
    card = context.model
    return [("Report id", context.report_id), ("Author", context.author or "—"),
            ("Date", context.date),
            ("Model", f"{card.architecture} / {card.encoder}"),
            ("Checkpoint", f"{card.checkpoint_name}"),
            ("Checkpoint SHA-256", card.checkpoint_sha256 or "—"),
            ("Target", f"{card.target_class} ({context.target_region})"),
            ("Data", f"{format_count(context.image_count)} images from "
                     f"{context.image_source or '—'}"),
            ("Ground truth", context.mask_source or "none"),
            ("Methods", ", ".join(m.name for m in context.methods)),
            ("Layers", ", ".join(row.name for row in context.layers))]


def pdf_view(folder: Path, context: ReportContext, manifest: dict, site: BuiltSite,
             figures: PrintFigures, spec_path: Path) -> PdfView:
    """The PDF's view model, from what the site writer kept (`site`) and the metrics the
    site in `folder` exported; the image sections are produced lazily while rendering."""
    stats = site.stats
    exported = read_metric_rows(folder / layout.METRICS_CSV)
    images = [with_exported_metrics(image, exported.get(image.id, [])) for image in site.images]
    index = index_view(context, stats, site.aggregates, [], text_headings=4,
                       sanity=site.sanity)
    layer_notes = Footnotes()  # the matrices' own: the PDF prints no layer means tables
    layer_matrices = layer_agreement(context, stats, layer_notes)

    def sections(start: int = 0, stop: int | None = None) -> Iterator[PrintImage]:
        for position in range(start, len(images) if stop is None else stop):
            yield print_image(context, images[position], figures, position, len(images))

    card = context.model
    timings = manifest.get("timings") or {}
    reviewers = [SignOff(name, role) for name, role in context.reviewers]
    reviewers += [SignOff("", "")] * (BLANK_REVIEWERS if not reviewers else 0)
    return PdfView(
        title=context.title, report_id=context.report_id, author=context.author,
        date=context.date, generator=f"reportgen {__version__}",
        keywords=["class activation maps", "segmentation", "explainability",
                  card.architecture, card.encoder, *(m.name for m in context.methods)],
        subject=(f"Class-activation-map validation of {card.architecture} / {card.encoder} "
                 f"({card.target_class}) on {format_count(context.image_count)} images"),
        overall=index.overall, cover_rows=cover_rows(context),
        warnings=list(context.warnings), bounds=list(context.bounds),
        index=index,
        summary_class="summary compact" if len(index.methods) > COMPACT_SUMMARY_METHODS
        else "summary",
        methods=methods_view(context, stats, [], site.sanity, RANK_SIZE),
        layer_matrices=layer_matrices, layer_footnotes=layer_notes.notes,
        layers=layer_rows(context), plots=print_plots(figures, site.plot_captions),
        audit=audit_view(context, stats),
        input_hashes=_input_hashes(manifest, spec_path.resolve().parent),
        timings=[(stage, f"{seconds:.2f} s") for stage, seconds in sorted(timings.items())],
        attachments=[(spec_path.name, "the spec exactly as given (Source)"),
                     ("manifest.json", "inputs, versions, device, timings and output hashes "
                                       "(Data)"),
                     ("metrics.csv", "every metric of every image, layer and method (Data)")],
        reviewers=reviewers, decisions=DECISIONS,
        images=sections(),
        image_toc=[(f"image-{s.id}", f"Image {s.id} — {s.source_name}") for s in images],
        colorbar=figures.get(layout.COLORBAR, 60.0),
        colormap=context.colormap,
        sections=sections,
    )


# --------------------------------------------------------------------------- rendering


def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of the print templates (autoescaping, strict undefined)."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("reportgen.templates", "pdf"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, keep_trailing_newline=True)
    return environment


def document_date(text: str) -> datetime:
    """The report date as midnight UTC (the PDF's creation date); today if unreadable."""
    try:
        day = date.fromisoformat(text[:10])
    except ValueError:
        log.warning("report date %r is not an ISO date; the PDF is dated today", text)
        day = datetime.now(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def pdf_identifier(report_id: str) -> bytes:
    """The PDF's permanent file identifier: the same for every version of a report."""
    return hashlib.md5(f"reportgen:{report_id}".encode(), usedforsecurity=False).hexdigest(
    ).encode()


def _unique_associated_files(document: object, pdf: pydyf.PDF) -> None:
    """Keep each attachment once in the catalog's /AF array (WeasyPrint 70 lists each
    twice: once from the name tree and once from the file specifications)."""
    if "AF" in pdf.catalog:
        unique: list[object] = []
        for reference in pdf.catalog["AF"]:
            if reference not in unique:
                unique.append(reference)
        pdf.catalog["AF"] = pydyf.Array(unique)


def render_html(view: PdfView) -> str:
    """The print HTML of the dossier (or of the part `view.part`)."""
    return template_environment().get_template("report.html").render(view=view)


def _site_fetcher(roots: Mapping[str, Path]):
    """A WeasyPrint URL fetcher that reads each prefix of `roots` from its folder, and
    nothing but local files and data URIs (the dossier never reaches the network)."""
    from weasyprint.urls import URLFetcher

    folders = {prefix: folder.resolve().as_uri() + "/" for prefix, folder in roots.items()}

    class SiteFetcher(URLFetcher):
        def fetch(self, url: str, headers: dict | None = None):
            for prefix, folder in folders.items():
                if url.startswith(prefix):
                    url = folder + url[len(prefix):]
                    break
            return super().fetch(url, headers)

    return SiteFetcher(allowed_protocols=("file", "data"))


def _layout(view: PdfView, roots: Mapping[str, Path], stylesheets: Sequence[str], tags: bool):
    """WeasyPrint's layout of `view` (a `weasyprint.Document`); its figures' URLs are
    read from the folders of `roots` (`PrintFigures.roots`)."""
    from weasyprint import CSS, HTML

    return HTML(string=render_html(view), base_url=SITE_URL,
                url_fetcher=_site_fetcher(roots)).render(
        stylesheets=[CSS(string=text) for text in stylesheets], pdf_tags=tags)


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence WeasyPrint's progress messages (a line per step and page) while inside."""
    progress = logging.getLogger("weasyprint.progress")
    level = progress.level
    progress.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        progress.setLevel(level)


def _set_metadata(document: object, stamp: str, tagged: bool) -> None:
    metadata = document.metadata
    metadata.created = metadata.modified = stamp
    metadata.lang = LANG
    if tagged:
        metadata.xmp_metadata.append(UA_IDENTIFICATION)


def _page_css(first_page: int | None, total: int) -> str:
    """Page numbering of one part of a dossier laid out in parts: "Page X of `total`",
    X counting from `first_page` (None: the front part, whose first page is the cover
    without header or footer)."""
    footer = f'"Page " counter(page) " of {total}"'
    css = f"@page {{ @bottom-right {{ content: {footer}; }} }}"
    if first_page is not None:
        css += (f"@page :first {{ counter-reset: page {first_page}; "
                "@top-left { content: element(header); } "
                "@bottom-left { content: element(footer); } "
                f"@bottom-right {{ content: {footer}; }} }}")
    return css


def _write_in_parts(view: PdfView, css: str, roots: Mapping[str, Path], pdf_path: Path,
                    image_count: int, chunk_images: int, stamp: str, scratch: Path,
                    write_options: dict) -> None:
    """Lay the dossier out in parts (front matter, `chunk_images` image sections at a
    time, appendices) so that memory does not grow with the number of images: WeasyPrint
    holds a whole document's layout until it is written. Each part is written as a PDF
    of its own and the parts are concatenated.

    A first pass lays every part out to count its pages and find where each contents
    entry lands; the second lays them out again with the page numbers ("Page X of Y",
    the contents) and writes them. Numbers in a footer do not move anything, so each
    image part's pages are the same in both passes; the front part is laid out again
    until its contents' numbers no longer change its length. The parts are untagged:
    tagged parts' structure trees cannot be joined into one, and PDF/A-3u needs none.
    """
    parts = [("front", 0, 0)]
    parts += [("images", start, min(start + chunk_images, image_count))
              for start in range(0, image_count, chunk_images)]
    parts.append(("back", 0, 0))
    toc = ["summary", "methods", "results", "images", *(a for a, _ in view.image_toc),
           "audit", "signoff"]

    def part_view(index: int, refs: dict[str, int] | None = None) -> PdfView:
        kind, start, stop = parts[index]
        images = view.sections(start, stop) if kind == "images" else iter(())
        return replace(view, part=kind, images=images, page_refs=refs)

    def first_pages(counts: list[int]) -> list[int]:
        return [1 + sum(counts[:index]) for index in range(len(counts))]

    counts: list[int] = []
    # anchor -> (part, page within the part, its top and the page's height in CSS px)
    where: dict[str, tuple[int, int, float, float]] = {}

    def record(index: int, document: object) -> None:
        for number, page in enumerate(document.pages):
            for anchor, box in page.anchors.items():
                if anchor in toc:
                    where.setdefault(anchor, (index, number, box[1], page.height))

    estimate = dict.fromkeys(toc, 10 ** len(str(30 + 3 * image_count)) - 1)
    for index in range(len(parts)):
        document = _layout(part_view(index, estimate if index == 0 else None), roots,
                           [css, _page_css(None if index == 0 else 1, 0)], tags=False)
        counts.append(len(document.pages))
        record(index, document)
        del document

    for _ in range(4):
        starts, total = first_pages(counts), sum(counts)
        refs = {anchor: starts[place[0]] + place[1] for anchor, place in where.items()}
        front = _layout(part_view(0, refs), roots, [css, _page_css(None, total)], tags=False)
        if len(front.pages) == counts[0]:
            break
        counts[0] = len(front.pages)
        where = {a: place for a, place in where.items() if place[0] != 0}
        record(0, front)
    else:
        raise RuntimeError("the PDF's contents do not settle on a page count")
    crossing = _take_crossing_links(front, where)
    files = [scratch / f"part-{index:05d}.pdf" for index in range(len(parts))]
    _set_metadata(front, stamp, tagged=False)
    front.write_pdf(files[0], pdf_tags=False, **write_options)
    del front
    part_options = {k: v for k, v in write_options.items() if k != "attachments"}
    for index in range(1, len(parts)):
        document = _layout(part_view(index), roots, [css, _page_css(starts[index], total)],
                           tags=False)
        if len(document.pages) != counts[index]:
            raise RuntimeError(f"PDF part {index} changed its page count between passes")
        _set_metadata(document, stamp, tagged=False)
        document.write_pdf(files[index], pdf_tags=False, **part_options)
        del document

    _join_parts(files, [kind for kind, _, _ in parts], crossing, where, starts, pdf_path)


def _take_crossing_links(front: object, where: Mapping[str, tuple[int, int, float, float]]
                         ) -> list[tuple[int, tuple, float, str]]:
    """Remove from the front part's pages the contents links that lead into other parts,
    and return them as (front page, rectangle in CSS px, page height, anchor): they
    become links after the join (left in, WeasyPrint would report their anchors missing
    and drop them)."""
    crossing = []
    for number, page in enumerate(front.pages):
        local = []
        for kind, target, rectangle, box in page.links:
            if kind == "internal" and where.get(target, (0,))[0] != 0:
                crossing.append((number, rectangle, page.height, target))
            else:
                local.append((kind, target, rectangle, box))
        page.links[:] = local
    return crossing


def _join_parts(files: Sequence[Path], kinds: Sequence[str],
                crossing: Sequence[tuple[int, tuple, float, str]],
                where: Mapping[str, tuple[int, int, float, float]], starts: Sequence[int],
                pdf_path: Path) -> None:
    """Concatenate the parts' PDFs into `pdf_path`: the front part's catalog, one outline
    as one layout gives it, and the contents links that cross parts."""
    from pypdf import PdfReader, PdfWriter
    from pypdf.annotations import Link
    from pypdf.generic import Fit, NameObject, NumberObject

    writer = PdfWriter(clone_from=files[0])  # catalog: metadata, output intent, files
    # The outline as one layout gives it: rebuilt from the parts' outlines, the image
    # sections under "4 Images" (the front part's last chapter), the appendices under
    # the title.
    del writer.root_object["/Outlines"]
    reader = PdfReader(files[0])
    front = _copy_outline(writer, reader, reader.outline, 0, None)
    title, chapters = front[0] if front else (None, [])
    images_chapter = chapters[-1][0] if chapters else title
    for index, path in enumerate(files[1:], 1):
        offset = len(writer.pages)
        writer.append(path, import_outline=False)
        reader = PdfReader(path)
        parent = images_chapter if kinds[index] == "images" else title
        _copy_outline(writer, reader, reader.outline, offset, parent)
    for number, (left, top, right, bottom), height, anchor in crossing:
        part, page, anchor_top, target_height = where[anchor]
        link = Link(rect=(left * PT, (height - bottom) * PT, right * PT, (height - top) * PT),
                    target_page_index=starts[part] - 1 + page,
                    fit=Fit.xyz(top=(target_height - anchor_top) * PT))
        link[NameObject("/F")] = NumberObject(4)  # printable, as PDF/A wants
        writer.add_annotation(page_number=number, annotation=link)
    with pdf_path.open("wb") as handle:
        writer.write(handle)


def _copy_outline(writer: object, reader: object, items: list, offset: int,
                  parent: object) -> list[tuple[object, list]]:
    """Add `reader`'s outline `items` (pypdf's nested list) under `parent` in `writer`,
    whose pages from `offset` on are `reader`'s; returns the added items as
    (item, its children) pairs."""
    from pypdf.generic import Fit

    added: list[tuple[object, list]] = []
    for entry in items:
        if isinstance(entry, list):
            if added:
                added[-1][1].extend(_copy_outline(writer, reader, entry, offset,
                                                  added[-1][0]))
            continue
        item = writer.add_outline_item(
            title=entry.title, page_number=offset + reader.get_destination_page_number(entry),
            parent=parent, fit=Fit.xyz(left=entry.left, top=entry.top, zoom=entry.zoom))
        added.append((item, []))
    return added


def write_pdf(site: Path, pdf_path: Path, context: ReportContext, spec_path: Path,
              manifest: dict, built: BuiltSite, chunk_images: int | None = None) -> Path:
    """Write the PDF/A-3u dossier of the site in `site` to `pdf_path`.

    `built` is what the site writer kept of the build (`SiteWriter.built`): the image
    sections render its records with the site's image view.

    `manifest` is the content of the site's `data/manifest.json` (already written);
    the spec is attached from `spec_path`, whose bytes must still hash to the
    manifest's record of it. A dossier of more than `chunk_images` images (default
    `CHUNK_IMAGES`) is laid out in parts, so that its memory stays bounded.
    """
    with _quiet_progress():  # importing WeasyPrint parses its stylesheets, with messages
        from weasyprint import Attachment

    spec_bytes = spec_path.read_bytes()
    recorded = manifest.get("inputs", {}).get("spec", {}).get("sha256")
    if recorded and hashlib.sha256(spec_bytes).hexdigest() != recorded:
        raise UserError(f"{spec_path} changed during the build; build again")
    when = document_date(context.date)
    stamp = when.isoformat().replace("+00:00", "Z")
    css = resources.files("reportgen.templates").joinpath("assets", "pdf.css").read_text(
        encoding="utf-8")
    chunk_images = CHUNK_IMAGES if chunk_images is None else chunk_images

    def attachment(data: bytes, name: str, description: str, relationship: str) -> Attachment:
        return Attachment(file_obj=io.BytesIO(data), name=name, description=description,
                          created=when, modified=when, relationship=relationship)

    write_options = {
        "pdf_variant": PDF_VARIANT,
        "attachments": [
            attachment(spec_bytes, spec_path.name, "The report's spec, as given", "Source"),
            attachment((site / layout.MANIFEST).read_bytes(), "manifest.json",
                       "Audit manifest: inputs, versions, device, timings, output hashes",
                       "Data"),
            attachment((site / layout.METRICS_CSV).read_bytes(), "metrics.csv",
                       "Every metric value of every image, layer and method", "Data"),
        ],
        "pdf_identifier": pdf_identifier(context.report_id),
        "finisher": _unique_associated_files,
    }
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reportgen-pdf-") as scratch, _quiet_progress():
        figures = PrintFigures(site, Path(scratch))
        view = pdf_view(site, context, manifest, built, figures, spec_path)
        image_count = len(built.images)
        if image_count > chunk_images:
            _write_in_parts(view, css, figures.roots, pdf_path, image_count, chunk_images,
                            stamp, Path(scratch), write_options)
        else:
            document = _layout(view, figures.roots, [css], tags=True)
            _set_metadata(document, stamp, tagged=True)
            document.write_pdf(pdf_path, pdf_tags=True, **write_options)
    log.info("PDF %s: %s bytes, sha256 %s", pdf_path.name, pdf_path.stat().st_size,
             sha256_file(pdf_path))
    return pdf_path
