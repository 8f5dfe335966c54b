"""The method registry: name -> family, cost, reference and the computation.

Gradient-family methods are pure functions of one layer's activations A and the
gradients G = d score / d A (both [N, K, h, w], float32, on the model's device)
returning a raw map [N, h, w] before the ReLU. Their arithmetic follows
pytorch-grad-cam 1.5 (`pytorch_grad_cam/*.py`) exactly, constants included, so
that maps agree with it. Score-CAM lives in `scorecam.py`; the rest of
pytorch-grad-cam's catalogue runs through `adapter.py`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from reportgen.errors import UserError

GradientMethod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Family = Literal["gradient", "score", "adapter"]

GRADIENT_COST = "1 forward + 1 backward, shared by every gradient method and layer"


@dataclass(frozen=True)
class MethodEntry:
    """One registered method.

    `compute` is the (A, G) -> raw map function for the gradient family, None for
    Score-CAM, and the pytorch-grad-cam class name for adapters.
    """

    name: str
    family: Family
    cost: str
    reference: str
    description: str
    compute: GradientMethod | str | None = None


class MethodListing(NamedTuple):
    """A row of `reportgen methods`."""

    name: str
    family: str
    cost: str
    reference: str


METHODS: dict[str, MethodEntry] = {}


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """sum_k w_k A_k for channel weights [N, K]."""
    return (weights[:, :, None, None] * activations).sum(dim=1)


def _gradient(name: str, reference: str) -> Callable[[GradientMethod], GradientMethod]:
    def register(function: GradientMethod) -> GradientMethod:
        description = " ".join((function.__doc__ or "").split())
        METHODS[name] = MethodEntry(
            name, "gradient", GRADIENT_COST, reference, description, function
        )
        return function

    return register


@_gradient("gradcam", "Selvaraju et al., ICCV 2017, arXiv:1610.02391")
def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: w_k = mean_ij G_kij; map = sum_k w_k A_k."""
    return _weighted_sum(gradients.mean(dim=(2, 3)), activations)


@_gradient("gradcam++", "Chattopadhyay et al., WACV 2018, arXiv:1710.11063")
def gradcam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (eq. 19, exponential-output form): a_kij = G^2 / (2 G^2 + sum_ab A_kab G^3
    + 1e-6), a_kij = 0 where G = 0; w_k = sum_ij ReLU(G_kij) a_kij; map = sum_k w_k A_k."""
    squared = gradients.pow(2)
    cubed = squared * gradients
    activation_sums = activations.sum(dim=(2, 3), keepdim=True)
    alpha = squared / (2 * squared + activation_sums * cubed + 1e-6)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    weights = (gradients.clamp(min=0) * alpha).sum(dim=(2, 3))
    return _weighted_sum(weights, activations)


@_gradient("xgradcam", "Fu et al., BMVC 2020, arXiv:2008.02312")
def xgradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM: w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7); map = sum_k w_k A_k."""
    activation_sums = activations.sum(dim=(2, 3), keepdim=True)
    weights = (gradients * activations / (activation_sums + 1e-7)).sum(dim=(2, 3))
    return _weighted_sum(weights, activations)


@_gradient("layercam", "Jiang et al., IEEE TIP 2021, doi:10.1109/TIP.2021.3089943")
def layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """LayerCAM: map = sum_k ReLU(G_k) * A_k (element-wise weights)."""
    return (gradients.clamp(min=0) * activations).sum(dim=1)


@_gradient("hirescam", "Draelos & Carin, 2020, arXiv:2011.08891")
def hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiResCAM: map = sum_k G_k * A_k (element-wise, no spatial averaging)."""
    return (gradients * activations).sum(dim=1)


@_gradient("gradcam-elementwise", "pytorch-grad-cam (Gildenblat et al.), GradCAMElementWise")
def gradcam_elementwise(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Element-wise Grad-CAM: map = sum_k ReLU(G_k * A_k) (then the common ReLU)."""
    return (gradients * activations).clamp(min=0).sum(dim=1)


METHODS["scorecam"] = MethodEntry(
    name="scorecam",
    family="score",
    cost="K forwards per layer (K = channels, or scorecam max_channels)",
    reference="Wang et al., CVPR-W 2020, arXiv:1910.01279",
    description=(
        "Score-CAM: M_k = minmax(upsample(A_k)) per channel; s_k = target score of "
        "model(x * M_k); w = softmax_k(s); map = sum_k w_k A_k. With max_channels only the "
        "channels of highest activation variance are scored (Faster Score-CAM), an "
        "approximation."
    ),
)


def _adapter(name: str, class_name: str, cost: str, reference: str, description: str) -> None:
    METHODS[name] = MethodEntry(name, "adapter", cost, reference, description, class_name)


_adapter(
    "eigencam",
    "EigenCAM",
    "1 forward per layer",
    "Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299",
    "Eigen-CAM: projection of A on its first principal component.",
)
_adapter(
    "eigengradcam",
    "EigenGradCAM",
    "1 forward + 1 backward per layer",
    "pytorch-grad-cam, after arXiv:2008.00299",
    "First principal component of G * A.",
)
_adapter(
    "seg-eigencam",
    "SegEigenCAM",
    "1 forward + 1 backward per layer",
    "Chung & Ying, Appl. Sci. 2025, doi:10.3390/app15137562",
    "First principal component of |G| * A with sign correction.",
)
_adapter(
    "ablationcam",
    "AblationCAM",
    "2 forwards + K forwards per layer (K = channels)",
    "Desai & Ramaswamy, WACV 2020",
    "w_k = (s - s_without_k) / s; map = sum_k w_k A_k.",
)
_adapter(
    "fullgrad",
    "FullGrad",
    "1 forward + 1 backward; uses every biased layer, not the given one",
    "Srinivas & Fleuret, NeurIPS 2019, arXiv:1905.00780",
    "|x * dS/dx| plus sum over biased layers of |b * G|, each min-max scaled. Fails on "
    "models with biased layers that never run (smp EfficientNet's unused head).",
)
_adapter(
    "kpca-cam",
    "KPCA_CAM",
    "1 forward per layer",
    "Karmani et al., 2024, KPCA-CAM",
    "Projection of A on its first kernel principal component.",
)
_adapter(
    "randomcam",
    "RandomCAM",
    "1 forward + 1 backward per layer",
    "pytorch-grad-cam baseline",
    "w_k ~ U(-1, 1); map = sum_k w_k A_k. A sanity baseline.",
)
_adapter(
    "shapleycam",
    "ShapleyCAM",
    "1 forward + 1 backward + 1 Hessian-vector product per layer",
    "Cai, 2025, arXiv:2501.06261",
    "w_k = mean_ij (G - 0.5 * H A)_kij; map = sum_k w_k A_k.",
)
_adapter(
    "fem",
    "FEM",
    "1 forward per layer",
    "Fuad et al., IPTA 2020",
    "FEM: w_k = fraction of pixels with A_k > mean(A_k) + 2 std(A_k); map = sum_k w_k A_k.",
)


def get_method(name: str) -> MethodEntry:
    """The registry entry for `name`; a UserError with a suggestion for unknown names."""
    try:
        return METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown CAM method '{name}'{hint}; known: {', '.join(METHODS)}") from None


def list_methods() -> list[MethodListing]:
    """Every registered method as (name, family, cost in passes per image, reference)."""
    return [MethodListing(e.name, e.family, e.cost, e.reference) for e in METHODS.values()]
