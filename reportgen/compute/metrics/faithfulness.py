"""Faithfulness: deletion and insertion curves (Petsiuk et al., "RISE:
Randomized input sampling for explanation of black-box models", BMVC 2018).

Pixels are ranked by the map L (highest first; ties keep raster order). For
step k of `steps`, the first ⌊k·HW/steps⌋ ranked pixels are
- deletion: replaced by the baseline in the original image,
- insertion: revealed from the original image on top of the baseline,
and the target score s is measured again. Each curve is integrated over the
removed/revealed fraction x in [0, 1] with the trapezoid rule. A faithful map
makes the score fall fast under deletion (low AUC) and rise fast under
insertion (high AUC).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from reportgen.compute.cam.target import SegmentationTarget
from reportgen.compute.metrics.values import as_mask, non_finite_maps
from reportgen.errors import UserError

log = logging.getLogger(__name__)

ScoreFn = Callable[[Tensor], Tensor]
"""images [B, C, H, W] -> target score [B]."""
Baseline = Literal["blur", "zero"]
Activation = Literal["sigmoid", "softmax"]

# RISE's insertion baseline: a Gaussian blur with an 11-pixel kernel, sigma 5.
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0

@dataclass(frozen=True)
class FaithfulnessCurves:
    """Curves and areas for M maps; rows of non-finite maps are NaN."""

    fractions: Tensor  # [steps + 1], 0 .. 1
    deletion: Tensor  # [M, steps + 1]
    insertion: Tensor  # [M, steps + 1]
    deletion_auc: Tensor  # [M]
    insertion_auc: Tensor  # [M]
    batch_size: int = 0  # perturbed images per forward that fitted (halved on out-of-memory)
    events: tuple[str, ...] = ()  # e.g. "out of memory; ..."


def target_score_fn(model: nn.Module, class_index: int, region_mask: Tensor,
                    activation: Activation = "sigmoid") -> ScoreFn:
    """A score function: the mean probability of class `class_index` over the
    target region [H, W], s = Σ(p · R) / Σ R, computed under torch.no_grad().

    The model is used as it is; put it in eval mode first.
    """
    region = as_mask(region_mask)
    if not region.any():
        raise ValueError("target region is empty")
    target = SegmentationTarget(class_index, activation=activation)
    weights = region.double() / region.sum()

    def score(images: Tensor) -> Tensor:
        with torch.no_grad():
            probabilities = target.probability(model(images)).double()
            return (probabilities * weights.to(probabilities.device)).sum(dim=(-2, -1))

    return score


def baseline_image(image: Tensor, baseline: Baseline | Tensor) -> Tensor:
    """The image every pixel is replaced by (deletion) or revealed from
    (insertion): RISE's blur, zeros in the model's input space (the dataset
    mean colour for normalised inputs), or a given tensor [C, H, W]."""
    if isinstance(baseline, Tensor):
        return baseline.to(image)
    if baseline == "zero":
        return torch.zeros_like(image)
    return gaussian_blur(image, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])


def deletion_insertion(score_fn: ScoreFn, image: Tensor, maps: Tensor, steps: int = 20,
                       baseline: Baseline | Tensor = "blur",
                       batch_size: int = 32) -> FaithfulnessCurves:
    """Deletion and insertion curves and AUCs for maps [M, H, W] of image [C, H, W].

    AUC = ∫₀¹ s(x) dx by the trapezoid rule over x = k / steps, k = 0 .. steps.
    The perturbed images of all maps are scored together in chunks of
    `batch_size`; the two endpoints (the original image and the baseline) are
    shared by every map and scored once. On a CUDA out-of-memory error the chunk
    halves and the work continues (the scores change only by float rounding); the
    result says which size fitted and what happened.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    count, height, width = maps.shape
    device = image.device
    base = baseline_image(image, baseline)
    fractions = torch.linspace(0, 1, steps + 1, dtype=torch.float64, device=device)
    deletion = torch.full((count, steps + 1), float("nan"), dtype=torch.float64, device=device)
    insertion = deletion.clone()

    valid = (~non_finite_maps(maps)).nonzero().flatten().to(device)
    original_score, base_score = score_fn(torch.stack([image, base])).double()
    deletion[valid, 0] = insertion[valid, steps] = original_score
    deletion[valid, steps] = insertion[valid, 0] = base_score

    pixels = height * width
    order = maps[valid].flatten(1).argsort(dim=1, descending=True, stable=True).to(device)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(pixels, device=device).expand_as(order))
    # One job per (map, interior step, curve); curve 0 is deletion, 1 insertion.
    jobs = torch.cartesian_prod(
        torch.arange(len(valid), device=device), torch.arange(1, steps, device=device),
        torch.arange(2, device=device)).reshape(-1, 3)
    curves = torch.stack([deletion, insertion])

    def scored(row: Tensor, step: Tensor, curve: Tensor) -> Tensor:
        changed = ranks[row] < (step * pixels // steps)[:, None]
        show_original = (changed ^ (curve == 0)[:, None]).reshape(-1, 1, height, width)
        return score_fn(torch.where(show_original, image, base)).double()

    batch_size, events = _score_in_chunks(jobs, scored, curves, valid, batch_size)
    deletion, insertion = curves.unbind()
    return FaithfulnessCurves(
        fractions=fractions,
        deletion=deletion,
        insertion=insertion,
        deletion_auc=torch.trapezoid(deletion, fractions, dim=1),
        insertion_auc=torch.trapezoid(insertion, fractions, dim=1),
        batch_size=batch_size,
        events=tuple(events),
    )


def _score_in_chunks(jobs: Tensor, scored: Callable[[Tensor, Tensor, Tensor], Tensor],
                     curves: Tensor, valid: Tensor, batch_size: int) -> tuple[int, list[str]]:
    """Score the (map, step, curve) `jobs` into `curves` in chunks of `batch_size`, halving
    the chunk on a CUDA out-of-memory error; the chunk size that fitted, and the events."""
    events: list[str] = []
    done = 0
    while done < len(jobs):
        row, step, curve = jobs[done:done + batch_size].unbind(dim=1)
        try:
            scores = scored(row, step, curve)
        except torch.OutOfMemoryError as error:
            if len(row) == 1:
                raise UserError("out of memory scoring a single perturbed image for the "
                                "faithfulness curves; lower the input size or leave the "
                                "faithfulness metrics out") from error
            scores = None
        if scores is None:  # outside the except block, so the failed chunk is released
            batch_size = max(1, len(row) // 2)
            events.append(f"faithfulness out of memory; batch halved to {batch_size}")
            log.warning(events[-1])
            torch.cuda.empty_cache()
            continue
        curves[curve, valid[row], step] = scores
        done += len(row)
    return batch_size, events
