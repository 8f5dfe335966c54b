"""What the site keeps of each image after its page is written: small summaries and
running sums, so that memory stays flat however many images a report has."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from reportgen.compute.metrics.attention import VerdictBands
from reportgen.compute.metrics.sanity import standardised_ranks as rank_vectors
from reportgen.report.results import CellKey, ImageResult

RANK_SIZE = 64
"""Maps are compared at most RANK_SIZE x RANK_SIZE (area-downscaled) to keep ranking cheap."""

CURVE_POINTS = 51
"""Deletion/insertion curves are resampled to this many evenly spaced fractions."""


@dataclass
class ImageSummary:
    """The few numbers of one image that the index, the plots and the tables need."""

    id: str
    source_name: str
    mask_name: str | None
    has_ground_truth: bool
    dice: float | None
    dice_reason: str
    verdict: str  # the median verdict of the image's maps at the verdict layers
    verdicts: dict[CellKey, str] = field(default_factory=dict)
    metrics: dict[CellKey, dict[str, float | None]] = field(default_factory=dict)


def usable_map(values: np.ndarray | None, flags: Iterable[str]) -> bool:
    """True when a map can be drawn and compared: defined, finite and not flagged."""
    return values is not None and not list(flags) and bool(np.isfinite(values).all())


def standardised_ranks(values: np.ndarray, size: int = RANK_SIZE) -> np.ndarray | None:
    """The map's standardised ranks (`compute.metrics.sanity.standardised_ranks`: the dot
    product of two of them is Spearman's rho) after area-downscaling it to at most
    `size` x `size`. None when every pixel ties (rho is undefined for a constant map).
    """
    height, width = values.shape
    scale = size / max(height, width)
    if scale < 1.0:
        shape = (max(1, round(width * scale)), max(1, round(height * scale)))
        values = cv2.resize(values.astype(np.float32), shape, interpolation=cv2.INTER_AREA)
    flat = torch.from_numpy(values.astype(np.float64).ravel())
    standardised = rank_vectors(flat[None])[0].numpy()
    return None if np.isnan(standardised).any() else standardised


@dataclass
class PairAgreement:
    """Running mean of Spearman's rho between pairs of maps of the same image.

    Keys are (group, a, b): for method agreement group is a layer and a, b are
    methods; for layer agreement group is a method and a, b are layers.
    """

    sums: dict[tuple[str, str, str], float] = field(default_factory=dict)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(self, group: str, first: str, second: str, rho: float) -> None:
        key = (group, first, second)
        self.sums[key] = self.sums.get(key, 0.0) + rho
        self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, group: str, first: str, second: str) -> tuple[float | None, int]:
        """(mean rho, number of images) of a pair in either order; (None, 0) when unseen."""
        for key in ((group, first, second), (group, second, first)):
            if key in self.counts:
                return self.sums[key] / self.counts[key], self.counts[key]
        return None, 0


@dataclass
class CurveMeans:
    """Running mean of deletion/insertion curves per (layer, method, curve name)."""

    sums: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(self, layer: str, method: str, name: str, curve: list[float]) -> None:
        values = np.asarray(curve, dtype=np.float64)
        if values.size < 2 or not np.isfinite(values).all():
            return
        resampled = np.interp(np.linspace(0.0, 1.0, CURVE_POINTS),
                              np.linspace(0.0, 1.0, values.size), values)
        key = (layer, method, name)
        self.sums[key] = self.sums.get(key, np.zeros(CURVE_POINTS)) + resampled
        self.counts[key] = self.counts.get(key, 0) + 1

    def per_method(self, name: str, methods: list[str]) -> dict[str, np.ndarray]:
        """Mean curve of each method over all layers and images, in `methods` order."""
        result: dict[str, np.ndarray] = {}
        for method in methods:
            keys = [key for key in self.sums if key[1] == method and key[2] == name]
            total = sum(self.counts[key] for key in keys)
            if total:
                result[method] = sum((self.sums[key] for key in keys),
                                     np.zeros(CURVE_POINTS)) / total
        return result


def metric_float(value: object) -> float | None:
    """The float of a metric value object, or None when it is missing or not a number."""
    number = getattr(value, "value", None)
    if number is None:
        return None
    number = float(number)
    return None if math.isnan(number) else number


class DatasetStats:
    """Everything the dataset pages need, accumulated one image at a time."""

    def __init__(self, layers: list[str], methods: list[str],
                 verdict_bands: VerdictBands | None = None) -> None:
        self.layers = layers
        self.methods = methods
        self.verdict_bands = verdict_bands or VerdictBands()  # drawn on the ratio plots
        self.summaries: list[ImageSummary] = []
        self.method_agreement = PairAgreement()
        self.layer_agreement = PairAgreement()
        self.curves = CurveMeans()

    @staticmethod
    def map_ranks(result: ImageResult) -> dict[CellKey, np.ndarray]:
        """The standardised ranks of every usable map of one image (the costly part of
        `add`, a function of the image alone: it may run on another thread first)."""
        ranks: dict[CellKey, np.ndarray] = {}
        for key in sorted(result.cells):
            cell = result.cells[key]
            if usable_map(cell.map, cell.flags):
                standardised = standardised_ranks(cell.map)
                if standardised is not None:
                    ranks[key] = standardised
        return ranks

    def add(self, result: ImageResult, verdict: str,
            ranks: dict[CellKey, np.ndarray] | None = None) -> ImageSummary:
        """Record one image and return its summary (`ranks`: its `map_ranks`, when
        already computed)."""
        metrics: dict[CellKey, dict[str, float | None]] = {}
        verdicts: dict[CellKey, str] = {}
        for key in sorted(result.cells):
            cell = result.cells[key]
            metrics[key] = {name: metric_float(value)
                            for name, value in sorted(cell.metrics.items())}
            verdicts[key] = cell.verdict
            for name, curve in sorted(cell.curves.items()):
                self.curves.add(cell.layer, cell.method, name, curve)
        self._add_pairs(self.map_ranks(result) if ranks is None else ranks)
        dice = None if result.dice is None else metric_float(result.dice)
        if result.dice is None:
            dice_reason = "no ground truth"
        else:
            dice_reason = "" if dice is not None else (result.dice.reason or "undefined")
        summary = ImageSummary(
            id=result.id,
            source_name=result.source.name,
            mask_name=None if result.mask_source is None else result.mask_source.name,
            has_ground_truth=result.ground_truth is not None,
            dice=dice,
            dice_reason=dice_reason,
            verdict=verdict,
            verdicts=verdicts,
            metrics=metrics,
        )
        self.summaries.append(summary)
        return summary

    def _add_pairs(self, ranks: dict[CellKey, np.ndarray]) -> None:
        for layer in self.layers:
            for i, first in enumerate(self.methods):
                for second in self.methods[i + 1:]:
                    a, b = ranks.get((layer, first)), ranks.get((layer, second))
                    if a is not None and b is not None:
                        self.method_agreement.add(layer, first, second, float(np.dot(a, b)))
        for method in self.methods:
            for i, first in enumerate(self.layers):
                for second in self.layers[i + 1:]:
                    a, b = ranks.get((first, method)), ranks.get((second, method))
                    if a is not None and b is not None:
                        self.layer_agreement.add(method, first, second, float(np.dot(a, b)))

    def metric_values(self, metric: str, layer: str | None = None,
                      method: str | None = None) -> list[float]:
        """Every defined value of `metric` over the images (optionally one layer/method)."""
        values = []
        for summary in self.summaries:
            for (cell_layer, cell_method), cell_metrics in summary.metrics.items():
                if layer is not None and cell_layer != layer:
                    continue
                if method is not None and cell_method != method:
                    continue
                value = cell_metrics.get(metric)
                if value is not None:
                    values.append(value)
        return values
