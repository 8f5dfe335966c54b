"""Attention statistics and verdicts on constructed maps with known answers."""

import math

import pytest
import torch

from reportgen.compute.metrics import (
    VerdictBands,
    attention_mean,
    attention_ratio,
    attention_std,
    verdict,
)

SIZE = 32


def square(top: int, left: int, side: int = 10) -> torch.Tensor:
    """A [SIZE, SIZE] float map/mask equal to 1 on a side x side square."""
    out = torch.zeros(SIZE, SIZE)
    out[top:top + side, left:left + side] = 1
    return out


def test_map_on_its_own_mask_has_unbounded_ratio_and_excellent_verdict():
    maps = square(5, 5)[None]
    share = 100 / SIZE**2

    assert attention_mean(maps)[0].value == pytest.approx(share)
    assert attention_std(maps)[0].value == pytest.approx(math.sqrt(share * (1 - share)))
    ratio = attention_ratio(maps, square(5, 5))[0]
    assert ratio.status == "ok" and ratio.value == math.inf
    assert verdict(ratio.value) == "excellent"


def test_shifted_mask_gives_the_ratio_of_mean_inside_to_mean_outside():
    # The mask overlaps half of the square: inside mean 0.5, outside 50 ones
    # spread over the SIZE² − 100 background pixels.
    ratio = attention_ratio(square(5, 5)[None], square(5, 10))[0]
    assert ratio.value == pytest.approx(0.5 / (50 / (SIZE**2 - 100)))
    assert verdict(ratio.value) == "excellent"


def test_mask_away_from_the_attention_is_concerning():
    ratio = attention_ratio(square(5, 5)[None], square(20, 20))[0]
    assert ratio.value == 0
    assert verdict(ratio.value) == "concerning"


def test_uniform_map_has_ratio_one_and_is_fair():
    ratio = attention_ratio(torch.full((1, SIZE, SIZE), 0.3), square(5, 5))[0]
    assert ratio.value == pytest.approx(1.0)
    assert verdict(ratio.value) == "fair"


@pytest.mark.parametrize(("mask", "reason"), [
    (torch.zeros(SIZE, SIZE), "predicted mask is empty"),
    (torch.ones(SIZE, SIZE), "predicted mask covers the whole image (no background)"),
])
def test_empty_mask_or_background_is_na_with_the_reason(mask, reason):
    ratio = attention_ratio(square(5, 5)[None], mask)[0]
    assert (ratio.value, ratio.status, ratio.reason) == (None, "n/a", reason)
    assert verdict(ratio.value, status=ratio.status) == "n/a"


def test_zero_map_is_na_and_non_finite_map_is_invalid():
    broken = square(5, 5)
    broken[0, 0] = math.nan
    maps = torch.stack([torch.zeros(SIZE, SIZE), broken])
    zero, invalid = attention_ratio(maps, square(5, 5))
    assert (zero.status, zero.reason) == ("n/a", "map is zero everywhere")
    assert (invalid.value, invalid.status) == (None, "invalid")
    assert verdict(invalid.value, status=invalid.status) == "invalid"
    assert [v.status for v in attention_mean(maps)] == ["ok", "invalid"]
    assert [v.status for v in attention_std(maps)] == ["ok", "invalid"]


def test_batch_of_maps_matches_one_map_at_a_time():
    maps = torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    mask = square(8, 3)
    batched = attention_ratio(maps, mask)
    assert batched == [attention_ratio(m[None], mask)[0] for m in maps]


@pytest.mark.parametrize(("ratio", "expected"), [
    (5.01, "excellent"), (5.0, "good"), (2.0, "good"), (1.99, "fair"), (1.0, "fair"),
    (0.99, "concerning"), (math.nan, "n/a"), (None, "n/a"), (math.inf, "excellent"),
])
def test_verdict_bands_of_the_original_report(ratio, expected):
    assert verdict(ratio) == expected


def test_verdict_bands_are_configurable_and_validated():
    strict = VerdictBands(excellent=10, good=4, fair=2)
    assert [verdict(r, strict) for r in (11, 5, 3, 1.5)] == [
        "excellent", "good", "fair", "concerning"]
    with pytest.raises(ValueError, match="excellent > good > fair > 0"):
        VerdictBands(excellent=1, good=2, fair=3)
