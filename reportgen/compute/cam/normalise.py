"""From raw maps to maps in [0, 1], with flags instead of silent failures.

    L = upsample_bilinear(ReLU(raw), input size)
    L_norm = (L - min L) / max(max L - min L, 1e-7 * max|L|, tiny)

The epsilon is RELATIVE to the map's own magnitude: on untrained models the
gradients (hence gradient maps) are ~1e-9, and an absolute 1e-7 epsilon (as in
pytorch-grad-cam's `scale_cam_image`) would flatten them. Maps that carry no
information are flagged per image and set to 0 (all_zero, constant) or NaN
(non_finite, empty_target), never drawn as if they did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RELATIVE_EPS = 1e-7

FLAG_REASONS: dict[str, str] = {
    "all_zero": "the map is zero everywhere after the ReLU",
    "constant": "the map is constant (no spatial information)",
    "non_finite": "the map contains NaN or infinite values",
    "empty_target": "empty target region: the target score is a sum over no pixels",
}


def upsample(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize [N, h, w] -> [N, H, W] (half-pixel centres, as OpenCV's resize)."""
    if tuple(raw.shape[-2:]) == tuple(size):
        return raw
    return F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def minmax(maps: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """(m - min) / max(max - min, 1e-7 * max(|max|, |min|), tiny) over `dims`."""
    low = maps.amin(dim=dims, keepdim=True)
    high = maps.amax(dim=dims, keepdim=True)
    magnitude = torch.maximum(high.abs(), low.abs())
    tiny = torch.finfo(maps.dtype).tiny
    span = torch.maximum(high - low, RELATIVE_EPS * magnitude).clamp(min=tiny)
    return (maps - low) / span


def normalise(
    raw: torch.Tensor, size: tuple[int, int], empty: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[list[str]]]:
    """Normalised maps [N, H, W] in [0, 1] (NaN where undefined) and per-image flags.

    `empty` [N] bool marks images whose target region is empty.
    """
    maps = upsample(raw.float().clamp(min=0), size)
    finite = torch.isfinite(maps).all(dim=-1).all(dim=-1)
    safe = torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps))
    high = safe.amax(dim=(-2, -1))
    span = high - safe.amin(dim=(-2, -1))
    all_zero = finite & (high == 0)
    constant = finite & ~all_zero & (span <= RELATIVE_EPS * high)
    empty = torch.zeros_like(finite) if empty is None else empty.to(finite.device)

    normalised = minmax(safe)
    blank = (all_zero | constant)[:, None, None]
    undefined = (~finite | empty)[:, None, None]
    normalised = torch.where(blank, torch.zeros_like(normalised), normalised)
    normalised = torch.where(undefined, torch.full_like(normalised, float("nan")), normalised)

    columns = {
        "empty_target": empty,
        "non_finite": ~finite,
        "all_zero": all_zero & ~empty,
        "constant": constant & ~empty,
    }
    table = torch.stack(list(columns.values()), dim=1).tolist()
    flags = [[name for name, on in zip(columns, row, strict=True) if on] for row in table]
    return normalised, flags
