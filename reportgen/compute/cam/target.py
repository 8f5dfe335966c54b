"""The segmentation target: which pixels of which class a map explains.

Seg-Grad-CAM (Vinogradova et al., 2020, arXiv:2002.11434) explains a segmentation
model through the sum of the target class logits over a region of pixels:

    score_n = sum_{(i, j) in R_n} y_n[c, i, j]

with y the logits [N, C, H, W], c the class index and R_n the region of image n.
pytorch-grad-cam calls this `SemanticSegmentationTarget(category, mask)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from reportgen.errors import UserError

Region = Literal["prediction", "ground_truth", "image"]
REGIONS: tuple[str, ...] = ("prediction", "ground_truth", "image")
ACTIVATIONS: tuple[str, ...] = ("sigmoid", "softmax")


@dataclass(frozen=True)
class SegmentationTarget:
    """Sum of the logits of class `class_index` over the target region of each image.

    region:
        "prediction": the model's own prediction from the same forward pass,
        sigmoid(logit) > threshold (`activation="sigmoid"`), or argmax over classes ==
        class (`activation="softmax"`);
        "ground_truth": the given masks (non-zero, or > 0.5 for float masks, is inside);
        "image": every pixel.
    """

    class_index: int = 0
    region: Region = "prediction"
    threshold: float = 0.5
    activation: Literal["sigmoid", "softmax"] = "sigmoid"

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise UserError(f"target region '{self.region}' is not one of {', '.join(REGIONS)}")
        if self.activation not in ACTIVATIONS:
            raise UserError(
                f"target activation '{self.activation}' is not one of {', '.join(ACTIVATIONS)}"
            )
        if self.class_index < 0:
            raise UserError(f"target class index must be >= 0, got {self.class_index}")

    def regions(self, logits: torch.Tensor, gt_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean target regions [N, H, W], detached, from the logits of the one forward pass."""
        logits = logits.detach()
        n, classes, height, width = logits.shape
        if self.class_index >= classes:
            raise UserError(
                f"target class index {self.class_index} does not exist: the model has "
                f"{classes} output channel(s)"
            )
        if self.region == "image":
            return torch.ones(n, height, width, dtype=torch.bool, device=logits.device)
        if self.region == "ground_truth":
            if gt_masks is None:
                raise UserError("target region 'ground_truth' needs ground-truth masks")
            if tuple(gt_masks.shape) != (n, height, width):
                raise UserError(
                    f"ground-truth masks have shape {tuple(gt_masks.shape)}, "
                    f"expected {(n, height, width)} (one mask per image at the output size)"
                )
            gt_masks = gt_masks.to(logits.device)
            return gt_masks > 0.5 if gt_masks.is_floating_point() else gt_masks != 0
        return self.prediction(logits)

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Probability of the target class [N, H, W] (float32): sigmoid of its logit, or
        its softmax over the classes."""
        if self.activation == "sigmoid":
            return torch.sigmoid(logits[:, self.class_index].float())
        self._check_softmax(logits)
        return torch.softmax(logits.float(), dim=1)[:, self.class_index]

    def prediction(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's predicted mask of the target class [N, H, W] (bool)."""
        if self.activation == "sigmoid":
            return self.probability(logits) > self.threshold
        self._check_softmax(logits)
        return logits.argmax(dim=1) == self.class_index

    @staticmethod
    def _check_softmax(logits: torch.Tensor) -> None:
        if logits.shape[1] == 1:
            raise UserError("activation 'softmax' needs 2 or more output channels: over one "
                            "channel it is 1 everywhere (use 'sigmoid' for a 1-class model)")

    def scores(self, logits: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Per-image target scores [N] (float32), differentiable in the logits."""
        class_logits = logits[:, self.class_index].float()
        return (class_logits * regions.to(class_logits.dtype)).sum(dim=(-2, -1))


class RegionTarget:
    """The same score for one image, in pytorch-grad-cam's target protocol.

    pytorch-grad-cam calls a target with one image's model output [C, H, W].
    """

    def __init__(self, class_index: int, region: torch.Tensor):
        self.class_index = class_index
        self.region = region

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        class_logits = model_output[self.class_index].float()
        return (class_logits * self.region.to(class_logits.device, class_logits.dtype)).sum()


def logits_of(output: object) -> torch.Tensor:
    """The segmentation logits [N, C, H, W] of a model output; smp models built with
    `aux_params` return (mask logits, class logits)."""
    if isinstance(output, list | tuple):
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        raise UserError(
            "the model must return segmentation logits [N, C, H, W], got "
            f"{getattr(output, 'shape', type(output).__name__)}"
        )
    return output
