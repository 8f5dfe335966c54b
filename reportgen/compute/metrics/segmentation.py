"""Segmentation quality of the predicted mask P against the ground truth G."""

from __future__ import annotations

from torch import Tensor

from reportgen.compute.metrics.values import MetricValue, as_mask, per_map


def _count(masks: Tensor) -> Tensor:
    return masks.flatten(1).sum(dim=1).double()


def _overlap(prediction: Tensor, ground_truth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """|P ∩ G|, |P|, |G| per image for masks [H, W] or [N, H, W]."""
    pred = as_mask(prediction)
    truth = as_mask(ground_truth).to(pred.device)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth "
                         f"{tuple(truth.shape)} differ in shape")
    pred, truth = pred.reshape(-1, *pred.shape[-2:]), truth.reshape(-1, *truth.shape[-2:])
    return _count(pred & truth), _count(pred), _count(truth)


def dice(prediction: Tensor, ground_truth: Tensor) -> list[MetricValue]:
    """Dice coefficient 2|P ∩ G| / (|P| + |G|) per image (Dice, 1945).

    Masks are [H, W] or [N, H, W]. When P and G are both empty the prediction is
    exactly right and Dice is 1 by convention.
    """
    both, pred, truth = _overlap(prediction, ground_truth)
    total = pred + truth
    return per_map((2 * both / total).where(total > 0, 1.0), [])


def iou(prediction: Tensor, ground_truth: Tensor) -> list[MetricValue]:
    """Intersection over union |P ∩ G| / |P ∪ G| per image (Jaccard, 1912).

    Masks are [H, W] or [N, H, W]; 1 by convention when both are empty.
    """
    both, pred, truth = _overlap(prediction, ground_truth)
    union = pred + truth - both
    return per_map((both / union).where(union > 0, 1.0), [])
