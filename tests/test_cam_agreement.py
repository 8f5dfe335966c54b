"""The engine's maps agree with pytorch-grad-cam on the same model, input, layer and target.

pytorch-grad-cam min-max scales at layer resolution and then resizes; the engine
resizes first and uses a relative epsilon. Both libraries' raw maps are compared
directly, then pytorch-grad-cam's raw map goes through the engine's normalisation
and is compared with the engine's map (Pearson r >= 0.999, max |diff| <= 1e-3),
and its own final output is checked for the same ranking (Pearson r >= 0.999).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import (
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from reportgen.compute.cam import CamEngine, SegmentationTarget
from reportgen.compute.cam.normalise import normalise
from reportgen.compute.models import build_model, resolve_layers
from tests.cam_fixtures import LAYERS, pearson, synthetic_shapes, trained_unetpp

GRADIENT_METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "gradcam-elementwise": GradCAMElementWise,
}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_pytorch_grad_cam(cam_class, model, module, images, regions, reshape_transform=None):
    """pytorch-grad-cam as its README teaches, one target per image; returns its raw
    map (before ReLU and scaling) and its final output."""
    recorded = {}

    class Recording(cam_class):
        def get_cam_image(self, *args, **kwargs):
            recorded["raw"] = super().get_cam_image(*args, **kwargs)
            return recorded["raw"]

    cam = Recording(model=model, target_layers=[module], reshape_transform=reshape_transform)
    targets = [SemanticSegmentationTarget(0, mask.numpy().astype(np.float32)) for mask in regions]
    try:
        output = cam(input_tensor=images, targets=targets)
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(recorded["raw"]), torch.from_numpy(output)


def assert_agree(result, key, images, their_raw, their_output, raw_tolerance=1e-4):
    size = tuple(images.shape[-2:])
    our_raw = result.raw[key]
    scale = their_raw.abs().max().item()
    assert scale > 0
    assert torch.allclose(our_raw, their_raw, rtol=raw_tolerance, atol=raw_tolerance * scale)

    theirs, their_flags = normalise(their_raw, size)
    assert result.flags[key] == their_flags
    informative = [index for index, flags in enumerate(their_flags) if not flags]
    for index in informative:
        ours = result.maps[key][index]
        assert pearson(ours, theirs[index]) >= 0.999
        assert (ours - theirs[index]).abs().max().item() <= 1e-3
        assert pearson(ours, their_output[index]) >= 0.999
    return informative


@pytest.fixture(scope="module")
def batch():
    model = trained_unetpp()
    images, _ = synthetic_shapes(4, seed=7)
    with torch.no_grad():
        regions = torch.sigmoid(model(images)[:, 0]) > 0.5
    assert regions.flatten(1).any(dim=1).all()
    return model, images, regions


@pytest.fixture(scope="module")
def gradient_result(batch):
    model, images, _ = batch
    engine = CamEngine(model, LAYERS, list(GRADIENT_METHODS), batch_size=4)
    return engine.explain(images, SegmentationTarget(class_index=0, region="prediction"))


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("method", list(GRADIENT_METHODS))
def test_gradient_method_matches_pytorch_grad_cam(batch, gradient_result, layer, method):
    model, images, regions = batch
    module = model.get_submodule(LAYERS[layer])
    their_raw, their_output = run_pytorch_grad_cam(
        GRADIENT_METHODS[method], model, module, images, regions
    )
    assert_agree(gradient_result, (layer, method), images, their_raw, their_output)


@pytest.mark.parametrize(
    ("layer", "picked"),
    [("encoder_early", slice(0, 2)), ("encoder_last", slice(1, 2)), ("decoder_last", slice(0, 2))],
)
def test_scorecam_fp32_matches_pytorch_grad_cam(batch, layer, picked):
    model, images, regions = batch
    images, regions = images[picked], regions[picked]
    engine = CamEngine(
        model, {layer: LAYERS[layer]}, ["scorecam"], precision="fp32", scorecam_chunk=16
    )
    result = engine.explain(images, SegmentationTarget(class_index=0, region="prediction"))
    their_raw, their_output = run_pytorch_grad_cam(
        ScoreCAM, model, model.get_submodule(LAYERS[layer]), images, regions
    )
    # Score-CAM's softmax over channel scores amplifies float32 rounding in the scores.
    informative = assert_agree(
        result, (layer, "scorecam"), images, their_raw, their_output, raw_tolerance=1e-3
    )
    # encoder_last is 2 x 2 at 64 px and its softmax is nearly one-hot: the raw maps
    # (compared above) are the meaningful check there.
    assert informative or layer == "encoder_last"
    assert not result.approximate


def test_the_maps_compared_are_informative(gradient_result):
    """Most maps of the agreement test carry spatial information (not flagged)."""
    flagged = [flags for per_image in gradient_result.flags.values() for flags in per_image]
    assert sum(not flags for flags in flagged) >= 0.6 * len(flagged)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_a_channels_last_encoder_stage_matches_pytorch_grad_cams_reshape_transform(method):
    """timm's MambaOut (like Swin) outputs [N, H, W, C] stages: the alias names the stage
    with `:nhwc` and the engine explains it as [N, C, H, W], as pytorch-grad-cam does
    with a reshape_transform."""
    torch.manual_seed(0)
    model = build_model("Unet", "tu-mambaout_femto", classes=1).eval()
    path = resolve_layers(model, ["encoder_early"], (64, 64))["encoder_early"]
    assert path == "encoder.model.stages_0:nhwc"
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    regions = torch.ones(2, 64, 64, dtype=torch.bool)
    result = CamEngine(model, ["encoder_early"], [method], input_size=(64, 64)).explain(
        images, SegmentationTarget(class_index=0, region="image"))
    their_raw, their_output = run_pytorch_grad_cam(
        GRADIENT_METHODS[method], model, model.get_submodule(path.removesuffix(":nhwc")),
        images, regions, reshape_transform=lambda output: output.permute(0, 3, 1, 2))
    assert assert_agree(result, ("encoder_early", method), images, their_raw, their_output)
