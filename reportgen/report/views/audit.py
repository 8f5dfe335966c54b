"""The audit page: spec, hashes, software, device, timings, warnings, exclusions.
"""

from __future__ import annotations

from dataclasses import dataclass

from reportgen.report import layout
from reportgen.report.results import (
    ReportContext,
)
from reportgen.report.statistics import DatasetStats
from reportgen.report.views.common import (
    Link,
    PageView,
    downloads,
    format_seconds,
    href,
    page_view,
)


@dataclass
class AuditView:
    page: PageView
    spec_name: str
    spec_text: str
    hashes: list[tuple[str, str]]
    downloads: list[Link]
    runtime: list[tuple[str, str]]
    versions: list[tuple[str, str]]
    timings: list[tuple[str, str]]
    warnings: list[str]
    excluded: list[tuple[str, str]]
    images: list[tuple[Link, str, str]]


def audit_view(context: ReportContext, stats: DatasetStats,
               link: str = layout.IMAGE_PAGE) -> AuditView:
    """Spec, hashes, software, device, timings, warnings and exclusions."""
    card = context.model
    runtime = [("Device", context.device), ("Precision", context.precision),
               ("Seed", str(context.seed)), ("Colormap", context.colormap),
               ("Overlay opacity", f"{context.alpha:.2f}"),
               ("Target region", context.target_region)]
    images = [(Link(href(link.format(id=s.id)), s.id), s.source_name, s.mask_name or "none")
              for s in stats.summaries]
    return AuditView(
        page=page_view(context, "Audit", layout.AUDIT),
        spec_name=context.spec_name, spec_text=context.spec_text,
        hashes=[("Checkpoint", card.checkpoint_name),
                ("Checkpoint SHA-256", card.checkpoint_sha256),
                ("Checkpoint format", card.checkpoint_format)],
        downloads=downloads(context),
        runtime=runtime,
        versions=sorted(context.versions.items()),
        timings=[(stage, format_seconds(seconds)) for stage, seconds in context.timings.items()],
        warnings=list(context.warnings),
        excluded=list(context.excluded),
        images=images,
    )
