"""Localisation of a map L against the ground-truth mask G."""

from __future__ import annotations

from torch import Tensor

from reportgen.compute.metrics.values import (
    NON_FINITE_MAP,
    ZERO_MAP,
    MetricValue,
    as_mask,
    non_finite_maps,
    per_map,
    zero_maps,
)

EMPTY_TRUTH = "ground-truth mask is empty"


def energy_pointing_game(maps: Tensor, ground_truth: Tensor) -> list[MetricValue]:
    """Energy-based pointing game Σ(L · G) / Σ L per map of maps [M, H, W]
    (Wang et al., "Score-CAM", CVPR Workshops 2020).

    The share of the map's energy that falls inside the ground truth. n/a when G
    is empty or the map is zero everywhere.
    """
    inside = as_mask(ground_truth).to(maps.device)
    flat = maps.double().flatten(1)
    values = flat[:, inside.flatten()].sum(dim=1) / flat.sum(dim=1)
    return per_map(values, [
        (non_finite_maps(maps), "invalid", NON_FINITE_MAP),
        (not bool(inside.any()), "n/a", EMPTY_TRUTH),
        (zero_maps(maps), "n/a", ZERO_MAP),
    ])


def pointing_game(maps: Tensor, ground_truth: Tensor) -> list[MetricValue]:
    """Pointing-game hit: 1 when the maximum of L lies in G, else 0, per map
    (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016).

    Ties: the hit needs every pixel that attains the maximum to lie in G, so a
    map whose peak is ambiguous and partly outside G is a miss. n/a when G is
    empty or the map is zero everywhere (no peak).
    """
    inside = as_mask(ground_truth).to(maps.device)
    flat = maps.flatten(1)
    peaks = flat == flat.max(dim=1, keepdim=True).values
    values = (~peaks[:, ~inside.flatten()]).all(dim=1).double()
    return per_map(values, [
        (non_finite_maps(maps), "invalid", NON_FINITE_MAP),
        (not bool(inside.any()), "n/a", EMPTY_TRUTH),
        (zero_maps(maps), "n/a", ZERO_MAP),
    ])
