"""The static report site, written one image at a time.

    writer = SiteWriter(out_dir, context, image_ids, single_file=False)
    for result in results:
        writer.add_image(result)      # images/<id>.html and its figures, now
    files = writer.finish(aggregates, sanity)   # index, methods, layers, audit, plots
    write_pdf(..., writer.built)                # the PDF renders the same views

`add_image` is `commit_image(prepare_image(result))`: the drawing, encoding and
writing of an image's files (`prepare_image`) may run on worker threads for several
images at once; its summary and running sums are kept (`commit_image`) in the
images' order on the writer's thread.

`add_image` keeps only a small summary of each image (see `stats.ImageSummary`)
and running sums for the method/layer agreement and the mean curves, so memory
stays flat for thousands of images. Every page links relatively and loads only
files inside the site; the same inputs give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import IO

import jinja2
import numpy as np
from markupsafe import Markup

from reportgen.output import inside
from reportgen.render import figures as fig
from reportgen.render import plots
from reportgen.report import layout
from reportgen.report.layout import cell_figure_name
from reportgen.report.results import AggregateRow, ImageResult, ReportContext, SanityRow
from reportgen.report.statistics import RANK_SIZE, DatasetStats
from reportgen.report.views.audit import audit_view
from reportgen.report.views.common import (
    NavItem,
    PlotView,
    href,
    ordered_names,
    page_view,
    summarise_verdicts,
)
from reportgen.report.views.image import ImageRecord, cell_problem, image_page_view, image_record
from reportgen.report.views.layers import layers_view
from reportgen.report.views.methods import methods_view
from reportgen.report.views.summary import gallery_items, index_view

CELL_SIZE = 320  # longest side of a grid figure, px
MAIN_SIZE = 512  # longest side of input / ground truth / prediction, px
THUMB_SIZE = 192  # longest side of an index thumbnail, px
# The grid figures (4 per layer x method) are JPEG (quality GRID_JPEG_QUALITY, full
# chroma): a 5 x 4 grid is 80 figures per image, which JPEG writes about 20x faster and 4x
# smaller than PNG, with no visible loss at this quality. The input, ground truth and
# prediction figures are lossless PNG.
GRID_JPEG_QUALITY = 90
SINGLE_CELL_SIZE = 128  # grid figures in report-single.html
SINGLE_MAIN_SIZE = 208
SINGLE_JPEG_QUALITY = 62
ASSETS = ("site.css", "site.js")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SECTIONS_MARKER = "<!--reportgen:image-sections-->"


@dataclasses.dataclass
class PreparedImage:
    """One image's files written, its summary not yet kept (`SiteWriter.prepare_image`)."""

    result: ImageResult
    record: ImageRecord  # what the views show of it, kept for the PDF
    verdict: str  # the image's median verdict (`summarise_verdicts`)
    ranks: dict  # its maps' standardised ranks (`DatasetStats.map_ranks`)
    single: str | None  # its section of report-single.html, when one is written


@dataclasses.dataclass
class BuiltSite:
    """What the writer keeps of a build once the site is written, for the PDF: the
    dataset's summaries, every image's record, the aggregates, the sanity check and the
    plots' captions."""

    stats: DatasetStats
    images: list[ImageRecord]
    aggregates: Sequence[AggregateRow]
    sanity: Sequence[SanityRow]
    plot_captions: dict[str, str]


def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of the site templates (autoescaping on, strict undefined)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("reportgen.templates", "site"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def asset_text(name: str) -> str:
    """The text of a packaged asset (site.css, site.js)."""
    return resources.files("reportgen.templates").joinpath("assets", name).read_text(
        encoding="utf-8")


class SiteWriter:
    """Writes the report site under `out_dir`, streaming the per-image pages."""

    def __init__(self, out_dir: Path, context: ReportContext, image_ids: list[str],
                 single_file: bool = False) -> None:
        for image_id in image_ids:
            if not SAFE_ID.match(image_id):
                raise ValueError(f"image id {image_id!r} is not file-name safe "
                                 "(letters, digits, '.', '_', '-')")
        if len(set(image_ids)) != len(image_ids):
            raise ValueError("image ids must be unique")
        self.out_dir = Path(out_dir)
        self.context = context
        self.plot_captions: dict[str, str] = {}  # plot name -> caption, once `finish` drew them
        self.built: BuiltSite | None = None  # once `finish` wrote the site
        self.image_ids = list(image_ids)
        self.single_file = single_file
        self._positions = {image_id: index for index, image_id in enumerate(self.image_ids)}
        self._added: set[str] = set()
        self._lock = threading.Lock()
        self._written: list[Path] = []
        self._env = template_environment()
        self._lut = fig.colormap_lut(context.colormap)
        layers, methods = ordered_names(context, [])
        self.stats = DatasetStats(layers, methods, context.verdict_bands)
        self.images: list[ImageRecord] = []  # each added image's record, in commit order
        self._single_parts: IO[str] | None = None
        if single_file:
            self._single_parts = tempfile.TemporaryFile("w+", encoding="utf-8")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name in ASSETS:
            self._write_text(layout.asset(name), asset_text(name))
        self._write_bytes(layout.COLORBAR, fig.encode_png(fig.colour_bar(self._lut)))

    # ------------------------------------------------------------------ files

    def _write_bytes(self, relative: str, data: bytes) -> None:
        path = inside(self.out_dir, self.out_dir / relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        with self._lock:  # images are written from several threads
            self._written.append(path)

    def _write_text(self, relative: str, text: str) -> None:
        self._write_bytes(relative, text.encode("utf-8"))

    def _render(self, template: str, **values: object) -> str:
        return self._env.get_template(template).render(**values)

    # ------------------------------------------------------------------ images

    def add_image(self, result: ImageResult) -> None:
        """Write images/<id>.html with its figures and thumbnail; keep its summary."""
        self.commit_image(self.prepare_image(result))

    def prepare_image(self, result: ImageResult) -> PreparedImage:
        """Draw, encode and write one image's page, figures and thumbnail (thread-safe).

        The costly part of `add_image`: several images may be prepared at once, on
        worker threads, then committed in the images' order (see `commit_image`).
        """
        with self._lock:
            if result.id not in self._positions:
                raise ValueError(f"image {result.id!r} is not among the writer's image ids")
            if result.id in self._added:
                raise ValueError(f"image {result.id!r} was already added")
            self._added.add(result.id)
        position = self._positions[result.id]
        previous = self.image_ids[position - 1] if position > 0 else None
        following = (self.image_ids[position + 1]
                     if position + 1 < len(self.image_ids) else None)

        sources = self._figures(result)
        record = image_record(result)
        view = image_page_view(self.context, record, sources, position, len(self.image_ids),
                               previous, following)
        self._write_text(layout.image_page(result.id),
                         self._render("image.html", view=view, page=view.page))
        small = fig.fit(fig.as_rgb(result.display), THUMB_SIZE)
        thumb = fig.draw_outline(small, fig.fit_mask(result.prediction, small.shape[:2]),
                                 fig.PREDICTION_COLOUR)
        self._write_bytes(layout.thumb(result.id), fig.encode_jpeg(thumb, 85))
        single = (self._single_section(result, record, position, previous, following)
                  if self.single_file else None)
        verdict = summarise_verdicts({key: cell.verdict for key, cell in result.cells.items()},
                                     self.context.verdict_layers).median
        return PreparedImage(result, record, verdict, DatasetStats.map_ranks(result), single)

    def commit_image(self, prepared: PreparedImage) -> None:
        """Keep a prepared image's summary (on the writer's thread).

        Commit in the order the images are computed, as `add_image` would be called:
        the running sums (agreement, mean curves) and report-single.html follow it.
        """
        self.stats.add(prepared.result, prepared.verdict, prepared.ranks)
        self.images.append(prepared.record)
        if self._single_parts is not None and prepared.single is not None:
            self._single_parts.write(prepared.single)

    def _figures(self, result: ImageResult) -> dict[str, str]:
        """Write the figures of one image; return figure name -> src relative to its page."""
        sources: dict[str, str] = {}
        for name, image in self._composed(result, MAIN_SIZE, CELL_SIZE, with_variants=True):
            suffix = layout.figure_suffix(name)
            data = (fig.encode_jpeg(image, GRID_JPEG_QUALITY, full_chroma=True)
                    if suffix == "jpg" else fig.encode_png(image))
            path = layout.figure(result.id, name, suffix)
            self._write_bytes(path, data)
            sources[name] = href(f"../{path}")
        return sources

    def _composed(self, result: ImageResult, main_size: int, cell_size: int,
                  with_variants: bool) -> list[tuple[str, np.ndarray]]:
        """The figures of one image as (name, RGB array).

        With `with_variants` every overlay variant and the heatmap of each cell;
        without, only the contours overlay (the single-file report).
        """
        base = fig.as_rgb(result.display)
        main = fig.fit(base, main_size)
        shape = main.shape[:2]
        prediction = fig.fit_mask(result.prediction, shape)
        out = [("input", main), ("prediction", fig.prediction_figure(main, prediction))]
        if result.ground_truth is not None:
            truth = fig.fit_mask(result.ground_truth, shape)
            out.append(("ground_truth", fig.ground_truth_figure(main, truth)))

        small = fig.fit(base, cell_size)
        small_shape = small.shape[:2]
        small_prediction = fig.fit_mask(result.prediction, small_shape)
        small_truth = (None if result.ground_truth is None
                       else fig.fit_mask(result.ground_truth, small_shape))
        layers, methods = ordered_names(self.context, result.cells)
        for r, layer in enumerate(layers):
            for c, method in enumerate(methods):
                cell = result.cells.get((layer, method))
                if cell is None or cell_problem(cell):
                    continue
                values = np.clip(fig.fit_map(cell.map, small_shape), 0.0, 1.0)
                drawn = fig.cell_figures(small, values, small_prediction, small_truth,
                                         self._lut, self.context.alpha)
                keys = [*drawn] if with_variants else ["contours"]
                out += [(cell_figure_name(r, c, key), drawn[key]) for key in keys]
        return out

    def _single_section(self, result: ImageResult, record: ImageRecord, position: int,
                        previous: str | None, following: str | None) -> str:
        """The image's section of report-single.html, figures embedded as JPEG data URIs."""
        sources = {
            name: fig.data_uri(fig.encode_jpeg(image, SINGLE_JPEG_QUALITY), "image/jpeg")
            for name, image in self._composed(result, SINGLE_MAIN_SIZE, SINGLE_CELL_SIZE,
                                              with_variants=False)
        }
        sources["colorbar"] = fig.data_uri(fig.encode_png(fig.colour_bar(self._lut)),
                                           "image/png")
        view = image_page_view(self.context, record, sources, position, len(self.image_ids),
                               previous, following, root="")
        return self._render("single_image.html", view=view)

    # ------------------------------------------------------------------ dataset pages

    def finish(self, aggregates: list[AggregateRow], sanity: list[SanityRow]) -> list[Path]:
        """Write the dataset pages, the plots and report-single.html; return every file."""
        order = self._positions
        self.stats.summaries.sort(key=lambda summary: order[summary.id])
        self.images.sort(key=lambda record: order[record.id])
        for image_id in self.image_ids:
            if image_id not in self._added:
                self._write_missing(image_id)

        drawn = self._plots(sanity)
        self.plot_captions = {name: plot.caption for name, plot in drawn.items()}
        page_plots = {name: PlotView(p.title, href(layout.plot(p.name)) if p.png else None,
                                     p.alt, p.caption, p.reason,
                                     *(fig.png_size(p.png) if p.png else (0, 0)))
                      for name, p in drawn.items()}

        def pick(names: Sequence[str], table: dict[str, PlotView]) -> list[PlotView]:
            return [table[name] for name in names]

        index = index_view(self.context, self.stats, aggregates,
                           pick(("dice", "attention_ratio", "curves"), page_plots),
                           sanity=sanity)
        methods = methods_view(self.context, self.stats,
                               pick(("methods", "curves", "sanity"), page_plots), sanity,
                               RANK_SIZE)
        layers = layers_view(self.context, self.stats, aggregates, pick(("layers",), page_plots),
                             RANK_SIZE)
        audit = audit_view(self.context, self.stats)
        for page, view in ((layout.INDEX, index), (layout.METHODS, methods),
                           (layout.LAYERS, layers), (layout.AUDIT, audit)):
            self._write_text(page, self._render(page, view=view, page=view.page))
        self.built = BuiltSite(self.stats, self.images, aggregates, sanity, self.plot_captions)
        if self._single_parts is not None:
            self._write_single(self._single_parts, drawn, aggregates, sanity)
            self._single_parts = None
        return sorted(set(self._written))

    def _plots(self, sanity: Sequence[SanityRow]) -> dict[str, plots.Plot]:
        """Draw every dataset plot once and write those that have data."""
        titles = {d.name: d.title for d in self.context.metric_definitions}
        distribution_metrics = [(name, titles.get(name, name.replace("_", " "))) for name in
                                ("attention_ratio", "energy_pointing_game", "deletion_auc",
                                 "insertion_auc")]
        drawn = [
            plots.dice_plot(self.stats),
            plots.attention_ratio_plot(self.stats),
            plots.curves_plot(self.stats),
            plots.sanity_plot(sanity, self.stats.methods),
            plots.layer_profile_plot(self.stats),
            plots.methods_distribution_plot(self.stats, distribution_metrics),
        ]
        for plot in drawn:
            if plot.png is not None:
                self._write_bytes(layout.plot(plot.name), plot.png)
        return {plot.name: plot for plot in drawn}

    def _write_missing(self, image_id: str) -> None:
        """A page for an image that was announced but never added, so no link breaks."""
        view = page_view(self.context, f"Image {image_id}", "", "../")
        self._write_text(layout.image_page(image_id),
                         self._render("missing.html", page=view, image_id=image_id))

    def _write_single(self, parts: IO[str], drawn: dict[str, plots.Plot],
                      aggregates: list[AggregateRow], sanity: list[SanityRow]) -> None:
        """report-single.html: every page in one file, figures embedded as data URIs."""
        embedded = {name: PlotView(p.title, fig.data_uri(p.png, "image/png") if p.png else None,
                                   p.alt, p.caption, p.reason,
                                   *(fig.png_size(p.png) if p.png else (0, 0)))
                    for name, p in drawn.items()}

        def pick(names: Sequence[str]) -> list[PlotView]:
            return [embedded[name] for name in names]

        index = index_view(self.context, self.stats, aggregates,
                           pick(("dice", "attention_ratio", "curves")), sanity=sanity)
        index = dataclasses.replace(index, gallery=[], downloads=[])
        methods = methods_view(self.context, self.stats, pick(("methods", "curves", "sanity")),
                               sanity, RANK_SIZE)
        layers = layers_view(self.context, self.stats, aggregates, pick(("layers",)), RANK_SIZE)
        audit = dataclasses.replace(audit_view(self.context, self.stats, "#image-{id}"),
                                    downloads=[])
        page = page_view(self.context, "Report", "")
        page.nav = [NavItem(target, label, False) for target, label in (
            ("#summary", "Summary"), ("#all-images", "Images"), ("#methods", "Methods"),
            ("#layers", "Layers"), ("#audit", "Audit"))]
        html = self._render(
            "single.html", page=page, index=index, methods=methods, layers=layers, audit=audit,
            images=gallery_items(self.stats, {}, "#image-{id}"),
            css=Markup(asset_text("site.css")), js=Markup(asset_text("site.js")),
            marker=Markup(SECTIONS_MARKER))
        head, tail = html.split(SECTIONS_MARKER)
        path = self.out_dir / layout.SINGLE
        parts.seek(0)
        with path.open("w", encoding="utf-8", newline="\n") as out:
            out.write(head)
            while chunk := parts.read(1 << 20):
                out.write(chunk)
            out.write(tail)
        parts.close()
        self._written.append(path)
