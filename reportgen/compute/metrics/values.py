"""Small value types shared by every metric.

A metric gives one `MetricValue` per map (or per image for image-level metrics).
A value that cannot be computed is never a number: it has `value=None`, status
"n/a" (undefined for these inputs, e.g. an empty mask) or "invalid" (the map
itself is broken, e.g. it holds NaN), and a reason in words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Status = Literal["ok", "n/a", "invalid"]
MapKey = tuple[str, str]
"""(layer, method) naming one map of an image."""

NON_FINITE_MAP = "map has non-finite values"
ZERO_MAP = "map is zero everywhere"


@dataclass(frozen=True)
class MetricValue:
    """One metric value; `value` is None exactly when status is not "ok"."""

    value: float | None
    status: Status = "ok"
    reason: str = ""

    @classmethod
    def missing(cls, reason: str, status: Status = "n/a") -> MetricValue:
        return cls(None, status, reason)


def as_mask(mask: Tensor) -> Tensor:
    """A mask as bool: bool masks as they are, float masks are inside where > 0.5
    (probabilities, 0/1), integer masks where non-zero (0/1, 0/255)."""
    if mask.dtype == torch.bool:
        return mask
    return mask > 0.5 if mask.dtype.is_floating_point else mask != 0


def non_finite_maps(maps: Tensor) -> Tensor:
    """Bool[M]: maps [M, H, W] holding NaN or infinity somewhere."""
    return ~maps.isfinite().flatten(1).all(dim=1)


def zero_maps(maps: Tensor) -> Tensor:
    """Bool[M]: maps [M, H, W] that are zero everywhere."""
    return (maps == 0).flatten(1).all(dim=1)


Condition = tuple[Tensor | bool, Status, str]


def per_map(values: Tensor, conditions: list[Condition]) -> list[MetricValue]:
    """Turn values [M] into `MetricValue`s.

    `conditions` are (Bool[M] or one bool for all maps, status, reason), checked
    in order; the first that holds for a map replaces its value. Non-finite maps
    should come first so that a broken map always reads "invalid".
    """
    count = values.shape[0]
    flags = [
        [bool(flag)] * count if isinstance(flag, bool) else flag.tolist()
        for flag, _, _ in conditions
    ]
    results = []
    for index, value in enumerate(values.double().tolist()):
        hit = next((c for c, f in zip(conditions, flags, strict=True) if f[index]), None)
        if hit is not None:
            results.append(MetricValue.missing(hit[2], hit[1]))
        elif math.isnan(value):
            results.append(MetricValue.missing("undefined (NaN)"))
        else:
            results.append(MetricValue(value))
    return results
