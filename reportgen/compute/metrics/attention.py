"""Attention statistics of a normalised map L in [0, 1] and the attention verdict.

These are the statistics of the original attention report: how much of the
map's mass sits on the model's own predicted mask P compared with the rest of
the image.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor

from reportgen.compute.metrics.values import (
    NON_FINITE_MAP,
    ZERO_MAP,
    MetricValue,
    Status,
    as_mask,
    non_finite_maps,
    per_map,
    zero_maps,
)
from reportgen.compute.verdict_bands import DEFAULT_BANDS, VerdictBands

Verdict = Literal["excellent", "good", "fair", "concerning", "n/a", "invalid"]


def verdict(ratio: float | None, bands: VerdictBands = DEFAULT_BANDS, *,
            status: Status = "ok") -> Verdict:
    """The verdict for an attention ratio under `bands`.

    A ratio of +inf (no attention at all outside the mask) is "excellent"; a
    missing or NaN ratio is "n/a"; status "invalid" (non-finite map) is "invalid".
    """
    if status == "invalid":
        return "invalid"
    if status == "n/a" or ratio is None or math.isnan(ratio):
        return "n/a"
    if ratio > bands.excellent:
        return "excellent"
    if ratio >= bands.good:
        return "good"
    if ratio >= bands.fair:
        return "fair"
    return "concerning"


def attention_mean(maps: Tensor) -> list[MetricValue]:
    """Attention mean: mean(L) over all pixels, per map of maps [M, H, W]."""
    values = maps.double().flatten(1).mean(dim=1)
    return per_map(values, [(non_finite_maps(maps), "invalid", NON_FINITE_MAP)])


def attention_std(maps: Tensor) -> list[MetricValue]:
    """Attention std: population standard deviation √(mean((L − mean L)²)) over
    all pixels (NumPy's default, as in the original report), per map."""
    values = maps.double().flatten(1).std(dim=1, correction=0)
    return per_map(values, [(non_finite_maps(maps), "invalid", NON_FINITE_MAP)])


def attention_ratio(maps: Tensor, mask: Tensor) -> list[MetricValue]:
    """Attention ratio: mean(L inside P) / mean(L outside P), per map.

    P is the predicted mask [H, W]. n/a when P is empty, when P covers the whole
    image, or when the map is zero everywhere (0/0). A map that is positive in P
    and exactly zero outside has ratio +inf ("excellent").
    """
    inside = as_mask(mask).to(maps.device)
    flat = maps.double().flatten(1)
    mean_in = flat[:, inside.flatten()].mean(dim=1)
    mean_out = flat[:, ~inside.flatten()].mean(dim=1)
    return per_map(mean_in / mean_out, [
        (non_finite_maps(maps), "invalid", NON_FINITE_MAP),
        (not bool(inside.any()), "n/a", "predicted mask is empty"),
        (bool(inside.all()), "n/a", "predicted mask covers the whole image (no background)"),
        (zero_maps(maps), "n/a", ZERO_MAP),
    ])
