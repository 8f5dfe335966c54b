"""Deletion and insertion curves against a score that is a known function of
the visible pixels."""

import math

import pytest
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from reportgen.compute.metrics import baseline_image, deletion_insertion, target_score_fn
from reportgen.errors import UserError

SIZE = 20


def image_mean(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(1, 2, 3))


def bright_square() -> torch.Tensor:
    """[1, SIZE, SIZE]: 1 on a 10 x 10 square (a quarter of the pixels), 0 elsewhere."""
    out = torch.zeros(1, SIZE, SIZE)
    out[0, 5:15, 5:15] = 1
    return out


def test_every_ranking_of_a_uniform_image_gives_straight_curves():
    maps = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    curves = deletion_insertion(image_mean, torch.ones(1, SIZE, SIZE), maps, steps=20,
                                baseline="zero")
    expected = 1 - torch.linspace(0, 1, 21, dtype=torch.float64)
    torch.testing.assert_close(curves.deletion, expected.expand(3, -1))
    torch.testing.assert_close(curves.insertion, expected.flip(0).expand(3, -1))
    torch.testing.assert_close(curves.deletion_auc, torch.full((3,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(curves.insertion_auc, torch.full((3,), 0.5, dtype=torch.float64))


def test_a_map_on_the_evidence_deletes_fast_and_inserts_fast():
    image = bright_square()
    maps = torch.stack([image[0], 1 - image[0]])
    curves = deletion_insertion(image_mean, image, maps, steps=20, baseline="zero")
    # Ranked right, the score falls linearly from 1/4 to 0 over the first quarter
    # of the pixels: a triangle of area 1/4 * 1/4 / 2. Ranked wrong, it stays at
    # 1/4 until the last quarter.
    triangle = 0.25 * 0.25 / 2
    assert curves.deletion_auc.tolist() == pytest.approx([triangle, 0.25 - triangle])
    assert curves.insertion_auc.tolist() == pytest.approx([0.25 - triangle, triangle])
    assert curves.deletion[0, :6].tolist() == pytest.approx([0.25, 0.2, 0.15, 0.1, 0.05, 0.0])


def test_curves_do_not_depend_on_the_batch_size_and_batches_respect_it():
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    sizes = []

    def score(images: torch.Tensor) -> torch.Tensor:
        sizes.append(len(images))
        return image_mean(images)

    small = deletion_insertion(score, image, maps, steps=10, batch_size=7)
    assert max(sizes) <= 7
    large = deletion_insertion(image_mean, image, maps, steps=10, batch_size=1000)
    torch.testing.assert_close(small.deletion, large.deletion)
    torch.testing.assert_close(small.insertion, large.insertion)


def test_blur_baseline_is_where_insertion_starts_and_deletion_ends():
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    curves = deletion_insertion(image_mean, image, torch.rand(2, SIZE, SIZE), steps=4)
    blurred = float(image_mean(gaussian_blur(image, [11, 11], [5.0, 5.0])[None]))
    assert curves.insertion[:, 0].tolist() == pytest.approx([blurred] * 2)
    assert curves.deletion[:, -1].tolist() == pytest.approx([blurred] * 2)
    assert curves.deletion[:, 0].tolist() == pytest.approx([float(image.mean())] * 2)
    torch.testing.assert_close(baseline_image(image, "zero"), torch.zeros_like(image))


def test_non_finite_map_gets_nan_curves_and_leaves_the_others_alone():
    maps = torch.rand(2, SIZE, SIZE)
    maps[1, 3, 3] = math.nan
    curves = deletion_insertion(image_mean, torch.ones(1, SIZE, SIZE), maps, steps=5,
                                baseline="zero")
    assert curves.deletion_auc[0] == pytest.approx(0.5)
    assert curves.deletion[1].isnan().all() and curves.insertion_auc[1].isnan()


class LogitsAreTheImage(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


def test_target_score_is_the_mean_class_probability_over_the_region():
    logits = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4),
                         requires_grad=True)
    region = bright_square()[0]
    inside = region.bool()
    sigmoid = target_score_fn(LogitsAreTheImage(), 1, region)(logits)
    softmax = target_score_fn(LogitsAreTheImage(), 2, region, "softmax")(logits)
    assert not sigmoid.requires_grad
    torch.testing.assert_close(
        sigmoid, logits[:, 1].sigmoid()[:, inside].mean(dim=1).double().detach())
    torch.testing.assert_close(
        softmax, logits.softmax(dim=1)[:, 2][:, inside].mean(dim=1).double().detach())


def test_empty_target_region_is_refused():
    with pytest.raises(ValueError, match="target region is empty"):
        target_score_fn(LogitsAreTheImage(), 0, torch.zeros(SIZE, SIZE))


def test_out_of_memory_halves_the_failing_chunk_and_gives_the_same_curves():
    maps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    image = bright_square()
    expected = deletion_insertion(image_mean, image, maps, steps=4, baseline="zero")
    sizes: list[int] = []

    def limited(images: torch.Tensor) -> torch.Tensor:
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return image_mean(images)

    # 2 maps x 3 interior steps x 2 curves = 12 jobs: the first chunk (12) fails, then 6
    curves = deletion_insertion(limited, image, maps, steps=4, baseline="zero", batch_size=64)
    assert curves.events == ("faithfulness out of memory; batch halved to 6",
                             "faithfulness out of memory; batch halved to 3",
                             "faithfulness out of memory; batch halved to 1")
    assert curves.batch_size == 1 and sizes[:4] == [2, 12, 6, 3]
    torch.testing.assert_close(curves.deletion, expected.deletion)
    torch.testing.assert_close(curves.insertion, expected.insertion)

    def never(images: torch.Tensor) -> torch.Tensor:  # only the two endpoints fit
        if len(images) != 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return image_mean(images)

    with pytest.raises(UserError, match="single perturbed image"):
        deletion_insertion(never, image, maps, steps=4, baseline="zero")
