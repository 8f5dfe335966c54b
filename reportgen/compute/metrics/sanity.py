"""Sanity check by cascading model-parameter randomisation (Adebayo et al.,
"Sanity checks for saliency maps", NeurIPS 2018).

The model's parameterised stages are re-initialised one after another, from
the output (segmentation head) back to the input (earliest encoder stage), on
a deep copy of the model; after each stage the maps are computed again and
compared with the trained model's maps. A method that explains what the model
learned gives maps that stop resembling the trained ones; a method that only
reflects the input (an edge detector) keeps giving the same map.

Similarity is the Spearman rank correlation ρ and SSIM between the trained and
the randomised map. The verdict uses |ρ| as Adebayo et al. do: a map that
turns into its own negative still shows the same structure.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reportgen.compute.metrics.values import MapKey

ExplainFn = Callable[[nn.Module], Mapping[MapKey, Tensor]]
"""model -> {(layer, method): maps [N, H, W]} for a fixed set of N images."""

DEFAULT_THRESHOLD = 0.5
"""A method passes when the mean |ρ| at full randomisation is below this."""

_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _stages(name: str, module: nn.Module) -> list[str]:
    """Stages of one module: its parameterised children, with ModuleList and
    ModuleDict children (block lists) expanded into their blocks and single-child
    wrappers (timm's FeatureListNet, a `features` Sequential) looked through."""
    if next(module.parameters(recurse=False), None) is not None:
        return [name]
    children = [(f"{name}.{child_name}", child) for child_name, child in module.named_children()
                if _has_parameters(child)]
    if not children:
        return [name]
    if len(children) == 1:
        return _stages(*children[0])
    stages = []
    for child_name, child in children:
        if isinstance(child, _CONTAINERS):
            stages += [f"{child_name}.{block_name}" for block_name, block in child.named_children()
                       if _has_parameters(block)]
        else:
            stages.append(child_name)
    return stages


def model_stages(model: nn.Module) -> list[str]:
    """The randomisable stages of `model` in registration order, for any smp model:
    each top-level child (encoder, decoder, segmentation_head, ...) split into its
    stages, e.g. `encoder.layer1`, `decoder.blocks.0`, `segmentation_head.0`."""
    return [stage for name, child in model.named_children() if _has_parameters(child)
            for stage in _stages(name, child)]


def _execution_order(model: nn.Module, stages: list[str], explain_fn: ExplainFn,
                     ) -> tuple[list[str], dict[MapKey, Tensor]]:
    """Run explain_fn on the trained model, noting the order in which stages first
    run. Returns (stages in execution order, the trained maps)."""
    ran: list[str] = []
    modules = dict(model.named_modules())

    def record(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            if name not in ran:
                ran.append(name)
        return hook

    handles = [modules[name].register_forward_hook(record(name)) for name in stages]
    try:
        maps = {key: value.detach() for key, value in explain_fn(model).items()}
    finally:
        for handle in handles:
            handle.remove()
    # Stages that never run (e.g. encoder layers below encoder_depth) change
    # nothing; an explain_fn that ignores the model leaves registration order.
    return (ran or stages), maps


def cascade_order(model: nn.Module, explain_fn: ExplainFn | None = None) -> list[str]:
    """Stages from output to input: reverse execution order when `explain_fn` is
    given (it is run once on the model), else reverse registration order."""
    stages = model_stages(model)
    if explain_fn is not None:
        stages = _execution_order(model, stages, explain_fn)[0]
    return stages[::-1]


def _devices(module: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})


def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise every parameter of `module` with its layer's own default
    initialiser (`reset_parameters`; normalisation layers also reset their running
    statistics), drawn from a generator seeded with `seed`. Parameters of layers
    without one are drawn from a truncated normal N(0, 0.02²). The global random
    state is left as it was."""
    reset: set[int] = set()
    with torch.random.fork_rng(devices=_devices(module)), torch.no_grad():
        torch.manual_seed(seed)
        for layer in module.modules():
            own = list(layer.parameters(recurse=False))
            if own and callable(getattr(layer, "reset_parameters", None)):
                layer.reset_parameters()
                reset.update(id(p) for p in own)
        for parameter in module.parameters():
            if id(parameter) not in reset:
                nn.init.trunc_normal_(parameter, std=0.02)


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks along dim 1 of values [N, P], tied values sharing their mean rank."""
    ordered, order = values.sort(dim=1, stable=True)
    count = values.shape[1]
    position = torch.arange(count, device=values.device).expand_as(ordered)
    new = ordered[:, 1:] != ordered[:, :-1]
    edge = torch.ones_like(new[:, :1])
    starts = position.where(torch.cat([edge, new], dim=1), 0).cummax(dim=1).values
    ends = position.where(torch.cat([new, edge], dim=1), count - 1).flip(1).cummin(dim=1)
    mean_rank = (starts + ends.values.flip(1)).double() / 2
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def _centred_ranks(maps: Tensor) -> Tensor:
    """The average ranks of each map's pixels [N, P], less their mean."""
    ranks = _average_ranks(maps.flatten(1))
    return ranks - ranks.mean(dim=1, keepdim=True)


def spearman(first: Tensor, second: Tensor) -> Tensor:
    """Spearman rank correlation ρ per pair of maps [N, H, W] (Spearman, 1904):
    the Pearson correlation of the pixels' ranks, ties given their mean rank.
    NaN where either map is constant."""
    centred = [_centred_ranks(maps) for maps in (first, second)]
    covariance = (centred[0] * centred[1]).sum(dim=1)
    norms = centred[0].norm(dim=1) * centred[1].norm(dim=1)
    return (covariance / norms).where(norms > 0, float("nan"))


def standardised_ranks(maps: Tensor) -> Tensor:
    """Each map's pixel ranks [N, P] as in `spearman`, centred and scaled to unit length,
    so that the dot product of two rows is their Spearman ρ: ranking each map once serves
    every pair it is compared in. NaN rows for constant maps (ρ is undefined there)."""
    centred = _centred_ranks(maps)
    # The sum of squares of half-integer ranks is exact; its root is taken with
    # math.sqrt, which rounds correctly (torch's vectorised sqrt can be 1 ulp off), and
    # divided by elementwise (torch multiplies by the reciprocal of a single number), so
    # the same map gives the same bits on any platform.
    squares = centred.square().sum(dim=1).tolist()
    length = torch.tensor([math.sqrt(total) for total in squares], dtype=centred.dtype,
                          device=centred.device)[:, None].expand_as(centred)
    return (centred / length).where(length > 0, float("nan"))


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    offsets = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def ssim(first: Tensor, second: Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> Tensor:
    """Mean structural similarity per pair of maps [N, H, W] (Wang et al., "Image
    quality assessment: from error visibility to structural similarity", IEEE TIP
    2004): SSIM = (2μₓμᵧ + C₁)(2σₓᵧ + C₂) / ((μₓ² + μᵧ² + C₁)(σₓ² + σᵧ² + C₂)) with
    C₁ = (0.01·R)², C₂ = (0.03·R)², local statistics under an 11-pixel Gaussian
    window (σ = 1.5; smaller on small maps), averaged over the valid region."""
    x, y = (maps.double().unsqueeze(1) for maps in (first, second))
    size = min(window, *x.shape[-2:])
    kernel = _gaussian_window(size, sigma, x)

    def blur(image: Tensor) -> Tensor:
        image = F.conv2d(image, kernel.view(1, 1, 1, -1))
        return F.conv2d(image, kernel.view(1, 1, -1, 1))

    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x**2
    var_y = blur(y * y) - mean_y**2
    cov = blur(x * y) - mean_x * mean_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)
             / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)))
    return index.flatten(1).mean(dim=1)


@dataclass(frozen=True)
class SanityLevel:
    """Similarity after randomising every stage up to and including `stage`."""

    stage: str
    spearman: dict[MapKey, Tensor]  # signed ρ per image, [N]
    ssim: dict[MapKey, Tensor]  # [N]


@dataclass(frozen=True)
class SanityVerdict:
    """"pass" when mean |ρ| at full randomisation < threshold, else "fail";
    "n/a" when ρ is undefined for every image (constant maps)."""

    status: Literal["pass", "fail", "n/a"]
    statistic: float | None  # mean |ρ| over images at full randomisation
    threshold: float
    reason: str = ""


@dataclass(frozen=True)
class SanityResult:
    """The cascade, from the first randomised stage (output side) to full
    randomisation."""

    levels: tuple[SanityLevel, ...]
    threshold: float

    @property
    def final(self) -> SanityLevel:
        return self.levels[-1]

    def curves(self, key: MapKey) -> tuple[list[float | None], list[float | None]]:
        """Mean |ρ| and mean SSIM over images at each level (None where undefined),
        for plotting the cascade."""
        def mean(values: Tensor) -> float | None:
            defined = values[~values.isnan()]
            return float(defined.mean()) if defined.numel() else None
        return ([mean(level.spearman[key].abs()) for level in self.levels],
                [mean(level.ssim[key]) for level in self.levels])

    def verdicts(self) -> dict[MapKey, SanityVerdict]:
        """Pass/fail per (layer, method) from |ρ| at full randomisation."""
        verdicts = {}
        for key, rho in self.final.spearman.items():
            defined = rho[~rho.isnan()].abs()
            if defined.numel() == 0:
                verdicts[key] = SanityVerdict("n/a", None, self.threshold,
                                              "rank correlation undefined: constant maps")
                continue
            statistic = float(defined.mean())
            status = "pass" if statistic < self.threshold else "fail"
            verdicts[key] = SanityVerdict(status, statistic, self.threshold)
        return verdicts


def _checkpoints(cascade: list[str], levels: int | Sequence[str] | None) -> list[str]:
    if levels is None:
        return cascade
    if isinstance(levels, int):
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        count = min(levels, len(cascade))
        return [cascade[math.ceil((i + 1) * len(cascade) / count) - 1] for i in range(count)]
    unknown = [name for name in levels if name not in cascade]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; the cascade is {cascade}")
    return sorted(levels, key=cascade.index)


def sanity_check(model: nn.Module, explain_fn: ExplainFn, seed: int = 0,
                 levels: int | Sequence[str] | None = None,
                 threshold: float = DEFAULT_THRESHOLD) -> SanityResult:
    """Cascading randomisation of `model` (unchanged; a deep copy is randomised).

    The cascade is every stage (see `model_stages`) in reverse execution order.
    `levels` picks where maps are compared: None for after every stage, an int k
    for k checkpoints spread evenly along the cascade (the last is always full
    randomisation), or stage names. Stage i of the cascade is re-initialised with
    seed `seed + i`, so results are reproducible. `explain_fn` is called once on
    the trained model and once per level.
    """
    order, trained = _execution_order(model, model_stages(model), explain_fn)
    cascade = order[::-1]
    checkpoints = set(_checkpoints(cascade, levels))
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    results = []
    for index, stage in enumerate(cascade):
        reinitialise(modules[stage], seed + index)
        if stage not in checkpoints:
            continue
        maps = explain_fn(randomised)
        results.append(SanityLevel(
            stage=stage,
            spearman={key: spearman(trained[key], maps[key].detach()) for key in trained},
            ssim={key: ssim(trained[key], maps[key].detach()) for key in trained},
        ))
    return SanityResult(tuple(results), threshold)
