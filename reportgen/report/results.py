"""The typed results a build hands to rendering (site and PDF).

The build pipeline fills these from the engine and the metrics; the renderers
turn them into view models and files. Nothing here computes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reportgen.compute.metrics.attention import VerdictBands
from reportgen.compute.metrics.export import AggregateRow

__all__ = ["AggregateRow", "Cell", "CellKey", "ImageResult", "LayerRow", "MethodRow",
           "MetricDefinition", "ShownValue", "ModelCard", "ReportContext", "SanityRow"]

CellKey = tuple[str, str]  # (layer name as in the spec, method name)


@dataclass
class ShownValue:
    """A metric value as the report shows it: one number, or n/a with the reason (never a
    NaN shown as a number). Built from an exported row (`of_row`); the metrics' own
    `reportgen.compute.metrics.MetricValue` also carries the status."""

    value: float | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None

    @classmethod
    def of_row(cls, value: float | str | None, status: str, reason: str) -> ShownValue:
        """The value shown for one exported metric row (a MetricRow or a metrics.csv row)."""
        if status == "ok" and value not in ("", None):
            return cls(float(value))
        return cls(None, reason or status)


@dataclass
class Cell:
    """One image x layer x method."""

    layer: str
    method: str
    map: np.ndarray | None  # [H, W] float32 in [0, 1]; None when undefined
    flags: list[str] = field(default_factory=list)  # e.g. all_zero, constant, empty_target
    metrics: dict[str, ShownValue] = field(default_factory=dict)  # keyed by metric name
    verdict: str = "n/a"  # excellent | good | fair | concerning | invalid | n/a
    curves: dict[str, list[float]] = field(default_factory=dict)  # deletion / insertion


@dataclass
class ImageResult:
    id: str  # file-name-safe, unique
    source: Path  # the input file
    display: np.ndarray  # [H, W, 3] uint8 at the model's input size
    probability: np.ndarray  # [H, W] float32 target-class probability
    prediction: np.ndarray  # [H, W] bool predicted mask of the target class
    ground_truth: np.ndarray | None  # [H, W] bool
    mask_source: Path | None
    dice: ShownValue | None  # None without ground truth
    iou: ShownValue | None
    cells: dict[CellKey, Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # conversions applied, warnings


@dataclass
class LayerRow:
    name: str  # alias or path as written in the spec
    path: str  # resolved dotted module path
    channels: int | None
    stride: float | None
    meaning: str = ""


@dataclass
class MethodRow:
    name: str
    family: str
    cost: str
    reference: str
    description: str = ""
    approximate: bool = False
    note: str = ""  # e.g. "max_channels 16 of 320: approximate"


@dataclass
class MetricDefinition:
    name: str
    title: str
    formula: str
    direction: str
    reference: str
    group: str


@dataclass
class ModelCard:
    architecture: str
    encoder: str
    checkpoint_name: str
    checkpoint_sha256: str
    checkpoint_format: str
    parameters: int
    input_size: tuple[int, int]
    classes: list[str]
    target_class: str
    activation: str
    normalization: str


@dataclass
class ReportContext:
    """Everything about the build that is not per image."""

    title: str
    report_id: str
    author: str
    date: str
    description: str
    intended_use: str
    limitations: str
    reviewers: list[tuple[str, str]]
    model: ModelCard
    layers: list[LayerRow]
    methods: list[MethodRow]
    metric_definitions: list[MetricDefinition]
    image_count: int
    image_source: str
    mask_source: str | None
    target_region: str
    spec_text: str
    spec_name: str
    device: str
    precision: str
    seed: int
    colormap: str
    alpha: float
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    bounds: list[str] = field(default_factory=list)  # what the spec limited, said wherever shown
    # (layer, method) whose maps are approximations, marked "≈" wherever their values are
    # shown, and what "≈" means there
    approximate: list[tuple[str, str]] = field(default_factory=list)
    approximate_note: str = ""
    # layers whose verdicts make the median verdicts of each image and of the report
    verdict_layers: list[str] = field(default_factory=list)  # empty: every layer
    verdict_note: str = ""  # which layers the verdicts leave out, and why
    pdf: str | None = None  # the PDF's path in the site (POSIX), None when none is written
    verdict_bands: VerdictBands = field(default_factory=VerdictBands)  # attention.bands


@dataclass
class SanityRow:
    """Cascading-randomisation result of one layer x method (Adebayo et al., 2018)."""

    layer: str
    method: str
    levels: list[str]  # randomised down to: "segmentation_head", "decoder.blocks.x", ...
    spearman: list[float | None]  # per level, mean |Spearman rho| over images (as the verdict)
    ssim: list[float | None]
    threshold: float
    passed: bool | None  # None when undefined
    reason: str = ""
