"""The metric registry: one entry per metric, the single source of the names,
formulas and references printed in the report and of the code that computes them.

`evaluate_image` runs every registered metric of the requested groups on one
image and returns one `MetricRow` per image x layer x method x metric
(image-level metrics such as Dice have an empty layer and method).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor, nn

from reportgen.compute.metrics.attention import (
    VerdictBands,
    attention_mean,
    attention_ratio,
    attention_std,
)
from reportgen.compute.metrics.faithfulness import (
    Activation,
    Baseline,
    FaithfulnessCurves,
    deletion_insertion,
    target_score_fn,
)
from reportgen.compute.metrics.localisation import energy_pointing_game, pointing_game
from reportgen.compute.metrics.sanity import DEFAULT_THRESHOLD, SanityResult
from reportgen.compute.metrics.segmentation import dice, iou
from reportgen.compute.metrics.values import NON_FINITE_MAP, MapKey, MetricValue, Status, per_map

Group = Literal["attention", "dice", "localisation", "faithfulness", "sanity"]
Direction = Literal["higher", "lower", "n/a"]
Need = Literal["map", "prediction", "ground_truth", "image", "model"]

GROUPS: tuple[Group, ...] = ("attention", "dice", "localisation", "faithfulness", "sanity")
NEED_TITLES: dict[Need, str] = {
    "map": "activation map",
    "prediction": "predicted mask",
    "ground_truth": "ground-truth mask",
    "image": "input image",
    "model": "model",
}


@dataclass(frozen=True)
class MetricSettings:
    """Options of the metrics stage."""

    bands: VerdictBands = VerdictBands()
    faithfulness_steps: int = 20
    faithfulness_baseline: Baseline = "blur"
    batch_size: int = 32
    sanity_threshold: float = DEFAULT_THRESHOLD


@dataclass
class MetricInputs:
    """Everything the metrics may use for one image; absent inputs are None.

    maps: (layer, method) -> map [H, W] in [0, 1]; prediction, ground_truth,
    target_region: masks [H, W] (target_region defaults to the prediction);
    image: the model input [C, H, W]; model with class_index and activation for
    the faithfulness score; sanity with image_index: this image's results of a
    dataset-wide `sanity_check`.
    """

    image_id: str
    maps: Mapping[MapKey, Tensor] = field(default_factory=dict)
    prediction: Tensor | None = None
    ground_truth: Tensor | None = None
    image: Tensor | None = None
    model: nn.Module | None = None
    class_index: int = 0
    activation: Activation = "sigmoid"
    target_region: Tensor | None = None
    sanity: SanityResult | None = None
    image_index: int = 0
    settings: MetricSettings = field(default_factory=MetricSettings)

    @property
    def keys(self) -> list[MapKey]:
        return list(self.maps)

    @cached_property
    def stacked(self) -> Tensor:
        """The maps as one tensor [M, H, W], in the order of `keys`."""
        return torch.stack([self.maps[key] for key in self.keys])

    @cached_property
    def faithfulness(self) -> FaithfulnessCurves | str:
        """Deletion and insertion curves of every map, or why there are none."""
        region = self.prediction if self.target_region is None else self.target_region
        if region is None:
            return "no target region"
        if not region.any():
            return "target region is empty"
        assert self.model is not None and self.image is not None
        score_fn = target_score_fn(self.model, self.class_index, region, self.activation)
        return deletion_insertion(
            score_fn, self.image, self.stacked.to(self.image.device),
            steps=self.settings.faithfulness_steps,
            baseline=self.settings.faithfulness_baseline,
            batch_size=self.settings.batch_size,
        )

    def has(self, need: Need) -> bool:
        present = {"map": bool(self.maps), "prediction": self.prediction is not None,
                   "ground_truth": self.ground_truth is not None,
                   "image": self.image is not None, "model": self.model is not None}
        return present[need]


Measure = Callable[[MetricInputs], list[MetricValue]]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: what the report prints about it and how it is measured."""

    name: str  # machine key, e.g. attention_ratio
    title: str  # user-facing, e.g. "attention ratio"
    group: Group  # the spec's `metrics:` entry that enables it
    formula: str
    direction: Direction  # which way is better
    reference: str
    unit: str  # unit or range
    needs: tuple[Need, ...]
    measure: Measure = field(repr=False)

    @property
    def per_map(self) -> bool:
        """Whether the metric has one value per map (else one per image)."""
        return "map" in self.needs


def _curve_auc(which: Literal["deletion_auc", "insertion_auc"]) -> Measure:
    def measure(inputs: MetricInputs) -> list[MetricValue]:
        curves = inputs.faithfulness
        if isinstance(curves, str):
            return [MetricValue.missing(curves)] * len(inputs.maps)
        values = getattr(curves, which)
        return per_map(values, [(values.isnan(), "invalid", NON_FINITE_MAP)])
    return measure


def _sanity(which: Literal["spearman", "ssim"], shown: Callable[[float], float]) -> Measure:
    def measure(inputs: MetricInputs) -> list[MetricValue]:
        if inputs.sanity is None:
            return [MetricValue.missing("sanity check not run")] * len(inputs.maps)
        table = getattr(inputs.sanity.final, which)
        values = []
        for key in inputs.keys:
            value = float(table[key][inputs.image_index]) if key in table else None
            if value is None:
                values.append(MetricValue.missing("not part of the sanity check"))
            elif math.isnan(value):
                values.append(MetricValue.missing("undefined: a map is constant"))
            else:
                values.append(MetricValue(shown(value)))
        return values
    return measure


_RISE = ('Petsiuk, Das & Saenko, "RISE: Randomized input sampling for explanation of '
         'black-box models", BMVC 2018')
_ADEBAYO = ('Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018')
_AUC_NOTE = ("trapezoid rule over x = k/steps; s = mean target-class probability over "
             "the target region")

ATTENTION_SOURCE = "descriptive statistic of the normalised map (no publication)"

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in [
    MetricSpec(
        "attention_mean", "attention mean", "attention", "mean(L) over all pixels", "n/a",
        ATTENTION_SOURCE, "[0, 1]", ("map",),
        lambda inputs: attention_mean(inputs.stacked)),
    MetricSpec(
        "attention_std", "attention std", "attention", "√(mean((L − mean L)²)) over all pixels",
        "n/a", ATTENTION_SOURCE, "[0, 0.5]", ("map",),
        lambda inputs: attention_std(inputs.stacked)),
    MetricSpec(
        "attention_ratio", "attention ratio", "attention",
        "mean(L inside P) / mean(L outside P), P = predicted mask", "higher",
        ATTENTION_SOURCE + "; verdict bands from metric_options.attention.bands", "[0, ∞]",
        ("map", "prediction"),
        lambda inputs: attention_ratio(inputs.stacked, inputs.prediction)),
    MetricSpec(
        "dice", "Dice", "dice", "2|P ∩ G| / (|P| + |G|); 1 when P and G are both empty",
        "higher", 'Dice, "Measures of the amount of ecologic association between species", '
        "Ecology 1945", "[0, 1]", ("prediction", "ground_truth"),
        lambda inputs: dice(inputs.prediction, inputs.ground_truth)),
    MetricSpec(
        "iou", "IoU", "dice", "|P ∩ G| / |P ∪ G|; 1 when P and G are both empty", "higher",
        'Jaccard, "The distribution of the flora in the alpine zone", New Phytologist 1912',
        "[0, 1]", ("prediction", "ground_truth"),
        lambda inputs: iou(inputs.prediction, inputs.ground_truth)),
    MetricSpec(
        "energy_pointing_game", "energy-based pointing game", "localisation",
        "Σ(L · G) / Σ L, G = ground-truth mask", "higher",
        'Wang et al., "Score-CAM: Score-weighted visual explanations for convolutional '
        'neural networks", CVPR Workshops 2020', "[0, 1]", ("map", "ground_truth"),
        lambda inputs: energy_pointing_game(inputs.stacked, inputs.ground_truth)),
    MetricSpec(
        "pointing_game", "pointing game hit", "localisation",
        "1 if every pixel where L is maximal lies in G, else 0", "higher",
        'Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016',
        "{0, 1}", ("map", "ground_truth"),
        lambda inputs: pointing_game(inputs.stacked, inputs.ground_truth)),
    MetricSpec(
        "deletion_auc", "deletion AUC", "faithfulness",
        "∫₀¹ s(x) dx, s(x) = target score with the fraction x of pixels ranked highest by L "
        f"replaced by the baseline; {_AUC_NOTE}", "lower", _RISE, "[0, 1]",
        ("map", "image", "model"), _curve_auc("deletion_auc")),
    MetricSpec(
        "insertion_auc", "insertion AUC", "faithfulness",
        "∫₀¹ s(x) dx, s(x) = target score with the fraction x of pixels ranked highest by L "
        f"revealed on the baseline; {_AUC_NOTE}", "higher", _RISE, "[0, 1]",
        ("map", "image", "model"), _curve_auc("insertion_auc")),
    MetricSpec(
        "sanity_spearman", "sanity: rank correlation", "sanity",
        "|ρ| (Spearman) between the map of the trained model and of the fully randomised "
        "model (cascading randomisation, output to input); the method passes when the mean "
        "over images is below the threshold", "lower", _ADEBAYO, "[0, 1]", ("map", "model"),
        _sanity("spearman", abs)),
    MetricSpec(
        "sanity_ssim", "sanity: SSIM", "sanity",
        "SSIM between the map of the trained model and of the fully randomised model "
        "(11-pixel Gaussian window, σ = 1.5)", "lower", _ADEBAYO, "[−1, 1]", ("map", "model"),
        _sanity("ssim", float)),
]}


@dataclass(frozen=True)
class MetricRow:
    """One value of one metric for one image x layer x method."""

    image: str
    layer: str
    method: str
    metric: str
    value: float | None
    status: Status
    reason: str


def metrics_of(groups: Sequence[str]) -> list[MetricSpec]:
    """The registered metrics of `groups`, in registry order."""
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown metric groups {unknown}; known: {list(GROUPS)}")
    return [spec for spec in METRICS.values() if spec.group in groups]


def evaluate_image(inputs: MetricInputs, groups: Sequence[str] = GROUPS) -> list[MetricRow]:
    """Every metric of `groups` on one image; a metric whose inputs are missing
    gives n/a rows naming them."""
    rows = []
    for spec in metrics_of(groups):
        keys = inputs.keys if spec.per_map else [("", "")]
        missing = [NEED_TITLES[need] for need in spec.needs if not inputs.has(need)]
        if missing:
            values = [MetricValue.missing("no " + ", no ".join(missing))] * len(keys)
        else:
            values = spec.measure(inputs)
        rows += [MetricRow(inputs.image_id, layer, method, spec.name, v.value, v.status, v.reason)
                 for (layer, method), v in zip(keys, values, strict=True)]
    return rows
