"""The rest of pytorch-grad-cam's catalogue, fed our segmentation target.

One pytorch-grad-cam call per layer and batch, with one `RegionTarget` per image
(the same score as `SegmentationTarget`, on the region from our forward pass).
pytorch-grad-cam returns maps already min-max scaled at input size (absolute
epsilon 1e-7), so for adapter methods the raw map is that output.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from reportgen.compute.cam.methods import MethodEntry
from reportgen.compute.cam.target import RegionTarget, SegmentationTarget
from reportgen.errors import UserError

# pytorch-grad-cam methods that ignore reshape_transform for the activations they use
# (ShapleyCAM keeps them attached to the graph) or ablate channels in the module's own
# layout (AblationCAM): wrong or failing on a channels-last layer
CHANNELS_FIRST_ONLY = frozenset({"shapleycam", "ablationcam"})


def adapter_maps(
    entry: MethodEntry,
    model: nn.Module,
    module: nn.Module,
    images: torch.Tensor,
    target: SegmentationTarget,
    regions: torch.Tensor,
    channels_last: bool = False,
) -> torch.Tensor:
    """Maps [N, H, W] of pytorch-grad-cam method `entry` at `module`, on the images' device;
    `channels_last`: the module outputs [N, H, W, C] (pytorch-grad-cam's reshape_transform
    turns it into the [N, C, H, W] it expects)."""
    library = importlib.import_module("pytorch_grad_cam")
    replace_layer_recursive = importlib.import_module(
        "pytorch_grad_cam.utils.find_layers"
    ).replace_layer_recursive
    cam_class = getattr(library, str(entry.compute), None)
    if cam_class is None:
        raise UserError(
            f"method '{entry.name}' needs a grad-cam release that provides {entry.compute}"
        )
    if channels_last and entry.name in CHANNELS_FIRST_ONLY:
        raise UserError(
            f"method '{entry.name}': pytorch-grad-cam's {entry.compute} cannot explain a "
            "channels-last (:nhwc) layer; use another method there")
    # FullGrad ignores the given layer (it uses every biased layer) and warns if given one.
    target_layers = [] if entry.name == "fullgrad" else [module]
    reshape = (lambda output: output.permute(0, 3, 1, 2)) if channels_last else None
    cam = cam_class(model=model, target_layers=target_layers, reshape_transform=reshape)
    targets = [RegionTarget(target.class_index, region) for region in regions]
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=images.detach(), targets=targets)
    except (AssertionError, IndexError, TypeError, ValueError) as error:
        raise UserError(
            f"method '{entry.name}': pytorch-grad-cam's {entry.compute} fails on this model or "
            f"layer ({type(error).__name__}: {error})"
        ) from error
    finally:
        hooks = cam.activations_and_grads
        try:
            hooks.release()
        except RuntimeError:  # its detach of a view after a failure: remove the hooks alone
            for handle in hooks.handles:
                handle.remove()
        model.zero_grad(set_to_none=True)
        if hasattr(cam, "ablation_layer"):
            # AblationCAM swaps the layer for an ablation layer and does not swap it back
            # when the forward fails (e.g. blocks that take two arguments).
            replace_layer_recursive(model, cam.ablation_layer, module)
    return torch.from_numpy(maps).to(images.device)
