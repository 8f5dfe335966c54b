"""Dice, IoU, energy-based pointing game and pointing-game hit with known answers."""

import math

import pytest
import torch

from reportgen.compute.metrics import dice, energy_pointing_game, iou, pointing_game

SIZE = 32


def square(top: int, left: int, side: int = 10) -> torch.Tensor:
    out = torch.zeros(SIZE, SIZE)
    out[top:top + side, left:left + side] = 1
    return out


EMPTY = torch.zeros(SIZE, SIZE)


@pytest.mark.parametrize(("truth", "expected_dice", "expected_iou"), [
    (square(5, 5), 1.0, 1.0),
    (square(5, 10), 0.5, 1 / 3),  # half of each square overlaps: 50 pixels
    (square(20, 20), 0.0, 0.0),
    (EMPTY, 0.0, 0.0),
])
def test_dice_and_iou_of_a_square_prediction(truth, expected_dice, expected_iou):
    assert dice(square(5, 5), truth)[0].value == pytest.approx(expected_dice)
    assert iou(square(5, 5), truth)[0].value == pytest.approx(expected_iou)


def test_both_empty_is_a_perfect_prediction_by_convention():
    assert dice(EMPTY, EMPTY)[0].value == 1.0
    assert iou(EMPTY, EMPTY)[0].value == 1.0


def test_dice_takes_a_batch_of_images_and_masks_of_any_encoding():
    prediction = torch.stack([square(5, 5), square(5, 5)]).bool()
    truth = (torch.stack([square(5, 5), square(5, 10)]) * 255).to(torch.uint8)
    assert [v.value for v in dice(prediction, truth)] == pytest.approx([1.0, 0.5])


def test_masks_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        dice(square(5, 5), torch.zeros(8, 8))


def test_energy_pointing_game_is_the_share_of_the_map_inside_the_truth():
    maps = torch.stack([square(5, 5), square(5, 5) * 0.5 + 0.1])
    exact, soft = energy_pointing_game(maps, square(5, 10))
    assert exact.value == pytest.approx(0.5)
    # soft: 0.6 on the square, 0.1 elsewhere; truth holds 50 square pixels and 50 others
    assert soft.value == pytest.approx((50 * 0.6 + 50 * 0.1) / (100 * 0.6 + (SIZE**2 - 100) * 0.1))


def test_energy_pointing_game_is_na_without_truth_or_energy():
    no_truth = energy_pointing_game(square(5, 5)[None], EMPTY)[0]
    no_energy = energy_pointing_game(torch.zeros(1, SIZE, SIZE), square(5, 5))[0]
    assert (no_truth.status, no_truth.reason) == ("n/a", "ground-truth mask is empty")
    assert (no_energy.status, no_energy.reason) == ("n/a", "map is zero everywhere")


def peaks(*points: tuple[int, int]) -> torch.Tensor:
    out = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.5
    for row, col in points:
        out[row, col] = 1.0
    return out


def test_pointing_game_hits_when_the_peak_is_in_the_truth():
    maps = torch.stack([peaks((7, 7)), peaks((25, 25))])
    assert [v.value for v in pointing_game(maps, square(5, 5))] == [1.0, 0.0]


def test_pointing_game_tie_counts_as_hit_only_when_every_peak_is_inside():
    maps = torch.stack([peaks((7, 7), (12, 12)), peaks((7, 7), (25, 25))])
    assert [v.value for v in pointing_game(maps, square(5, 5))] == [1.0, 0.0]


def test_pointing_game_reports_broken_and_empty_inputs():
    broken = peaks((7, 7))
    broken[0, 0] = math.inf
    nan_map, zero_map = pointing_game(torch.stack([broken, torch.zeros(SIZE, SIZE)]), square(5, 5))
    assert nan_map.status == "invalid" and zero_map.status == "n/a"
    assert pointing_game(peaks((7, 7))[None], EMPTY)[0].reason == "ground-truth mask is empty"
