"""A small real report for the PDF and verification tests: 2 images at 64 px with
ground truth, gradcam + layercam on 2 layers, the cheap metrics; builds in seconds."""

from __future__ import annotations

from pathlib import Path

from reportgen.build import BuildOptions, build
from tests.helpers import write_images, write_spec

REPORT = {"title": "Lesion model validation", "id": "VAL-PDF-1", "author": "Quality team",
          "date": "2025-01-31",
          "intended_use": "Validation of the **lesion** segmentation model.\n\n## Scope\n\n"
                          "Adult scans only.",
          "reviewers": [{"name": "Dr. A. Reviewer", "role": "Clinical lead"}]}


def write_project(root: Path, images: int = 2) -> Path:
    """Images, masks and a spec under `root`; returns the spec's path."""
    write_images(root, count=images, size=64)
    return write_spec(root / "spec.yaml", report=REPORT,
                      layers=["encoder_last", "decoder_last"], methods=["gradcam", "layercam"],
                      metrics=["attention", "dice", "localisation"])


def build_project(root: Path, images: int = 2) -> Path:
    """Write and build the small project under `root`; returns the site folder."""
    spec = root / "spec.yaml"
    if not spec.exists():
        write_project(root, images)
    build(spec, BuildOptions())
    return root / "site"
