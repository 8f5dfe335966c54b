"""The CAM engine's promises: one pass, one target per image, truthful hooks, honest flags."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import nn

from reportgen.compute.cam import (
    METHODS,
    CamEngine,
    SegmentationTarget,
    check_methods,
    compute_cam,
    list_methods,
)
from reportgen.compute.cam.hooks import ActivationRecorder
from reportgen.compute.cam.normalise import normalise
from reportgen.compute.cam.scorecam import _fp32_switches, strict_fp32
from reportgen.errors import LayerError, UserError
from tests.cam_fixtures import LAYERS, pearson, synthetic_shapes

GRADIENT_METHODS = [name for name, entry in METHODS.items() if entry.family == "gradient"]
PREDICTION = SegmentationTarget(class_index=0, region="prediction")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images():
    return synthetic_shapes(4, seed=11)[0]


def test_one_forward_and_one_backward_per_batch_serve_every_gradient_method(model, images):
    counts = {"forward": 0, "backward": 0}

    def count_backward(grad):
        counts["backward"] += 1

    def count_forward(module, inputs, output):
        counts["forward"] += 1
        if output.requires_grad:
            output.register_hook(count_backward)

    handle = model.register_forward_hook(count_forward)
    try:
        engine = CamEngine(model, LAYERS, GRADIENT_METHODS, batch_size=2)
        result = engine.explain(images, PREDICTION)
    finally:
        handle.remove()
    assert counts == {"forward": 2, "backward": 2}
    assert set(result.maps) == {(layer, method) for layer in LAYERS for method in GRADIENT_METHODS}
    assert result.logits.shape == (4, 1, 64, 64)
    for maps in result.maps.values():
        assert maps.shape == (4, 64, 64) and maps.dtype == torch.float32


def test_each_image_of_a_batch_gets_its_own_target(model, images):
    layers = {"decoder_last": LAYERS["decoder_last"], "encoder_early": LAYERS["encoder_early"]}
    methods = ["gradcam", "layercam", "scorecam"]
    pair = images[1:3]
    batched = CamEngine(model, layers, methods, batch_size=2).explain(pair, PREDICTION)
    for index in range(2):
        single = CamEngine(model, layers, methods, batch_size=1).explain(
            pair[index : index + 1], PREDICTION
        )
        for key, maps in batched.maps.items():
            assert batched.flags[key][index] == single.flags[key][0]
            assert torch.allclose(maps[index], single.maps[key][0], atol=1e-4), key
    for key in [("decoder_last", "layercam"), ("decoder_last", "scorecam")]:
        assert batched.flags[key] == [[], []]
        assert batched.maps[key].flatten(1).std(dim=1).min() > 0.05
    assert (
        pearson(
            batched.maps["decoder_last", "layercam"][0], batched.maps["decoder_last", "layercam"][1]
        )
        < 0.9
    )


def test_an_empty_target_region_is_flagged_not_drawn(model, images):
    masks = torch.zeros(2, 64, 64)
    masks[0, 20:40, 20:40] = 1
    target = SegmentationTarget(class_index=0, region="ground_truth")
    engine = CamEngine(model, {"decoder_last": LAYERS["decoder_last"]}, ["gradcam", "scorecam"])
    result = engine.explain(images[:2], target, gt_masks=masks)
    for key in result.maps:
        assert result.flags[key] == [[], ["empty_target"]]
        assert torch.isfinite(result.maps[key][0]).all()
        assert torch.isnan(result.maps[key][1]).all()
    assert result.regions[1].sum() == 0


def test_ground_truth_region_needs_masks(model, images):
    engine = CamEngine(model, {"decoder_last": LAYERS["decoder_last"]}, ["gradcam"])
    with pytest.raises(UserError, match="ground-truth masks"):
        engine.explain(images[:1], SegmentationTarget(region="ground_truth"))


def test_the_target_region_is_the_prediction_the_metrics_use():
    logits = torch.tensor([[[[-3.0, 1.0]], [[3.0, 0.5]]]])  # [1 image, 2 classes, 1 x 2 pixels]
    sigmoid = SegmentationTarget(class_index=1, threshold=0.5)
    softmax = SegmentationTarget(class_index=1, activation="softmax")
    assert torch.equal(sigmoid.regions(logits), sigmoid.prediction(logits))
    assert torch.equal(softmax.regions(logits), softmax.prediction(logits))
    assert softmax.prediction(logits).tolist() == [[[True, False]]]
    torch.testing.assert_close(softmax.probability(logits),
                               torch.softmax(logits, 1)[:, 1])
    with pytest.raises(UserError, match="'softmax' needs 2 or more output channels"):
        SegmentationTarget(activation="softmax").regions(logits[:, :1])


class ConvBnInplaceRelu(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(4, 1, 1)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.weight.uniform_(0.5, 2)

    def forward(self, x):
        return self.head(self.relu(self.bn(self.conv(x))))


def test_activation_of_a_layer_followed_by_an_inplace_relu_is_its_true_output():
    model = ConvBnInplaceRelu().eval()
    x = torch.randn(2, 3, 16, 16)
    with ActivationRecorder(model, {"bn": model.bn}) as recorder, torch.no_grad():
        model(x)
    recorded = recorder.check()["bn"]
    with torch.no_grad():
        truth = model.bn(model.conv(x))
    assert (truth < 0).any()
    assert torch.equal(recorded, truth)

    # Gradients are taken with respect to the same, unmodified output.
    result = CamEngine(model, {"bn": model.bn}, ["hirescam"]).explain(
        x, SegmentationTarget(region="image")
    )
    activation = truth.clone().requires_grad_(True)
    score = model.head(torch.relu(activation))[:, 0].sum()
    (gradient,) = torch.autograd.grad(score, activation)
    assert torch.allclose(result.raw["bn", "hirescam"], (gradient * truth).sum(dim=1), atol=1e-5)


class AliasedInplace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.same = nn.Identity()
        self.head = nn.Conv2d(2, 1, 1)

    def forward(self, x):
        features = self.conv(x)
        kept = self.same(features)
        features.relu_()
        return self.head(kept + features)


def test_output_modified_in_place_through_an_alias_is_an_error():
    model = AliasedInplace().eval()
    engine = CamEngine(model, {"identity": "same"}, ["gradcam"])
    with pytest.raises(LayerError, match="modified in place"):
        engine.explain(torch.randn(1, 3, 8, 8), SegmentationTarget(region="image"))


def test_a_module_that_never_runs_is_a_layer_error_naming_it(model, images):
    engine = CamEngine(model, {"head": "encoder._conv_head"}, ["gradcam"])
    with pytest.raises(LayerError, match=r"encoder\._conv_head.*never runs"):
        engine.explain(images[:1], PREDICTION)


def test_unknown_layers_and_methods_are_user_errors_with_hints(model):
    # the spec's resolver: it names the closest path, the parent's children and the aliases
    with pytest.raises(LayerError, match="Did you mean 'decoder.blocks.x_0_4'.*Aliases"):
        CamEngine(model, {"d": "decoder.blocks.x_0_5"}, ["gradcam"])
    with pytest.raises(UserError, match="did you mean 'gradcam\\+\\+'"):
        CamEngine(model, LAYERS, ["gradcam+"])
    with pytest.raises(UserError, match="precision"):
        CamEngine(model, LAYERS, ["scorecam"], precision="fp8")


def fake_oom_above(limit: int, when_grad: bool | None = None):
    def pre_hook(module, inputs):
        if len(inputs[0]) > limit and (when_grad is None or torch.is_grad_enabled() == when_grad):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    return pre_hook


def test_out_of_memory_halves_the_batch_and_continues(model, images):
    layers = {"decoder_last": LAYERS["decoder_last"]}
    expected = CamEngine(model, layers, ["gradcam"], batch_size=4).explain(images, PREDICTION)
    handle = model.register_forward_pre_hook(fake_oom_above(1))
    engine = CamEngine(model, layers, ["gradcam"], batch_size=8)
    try:
        result = engine.explain(images, PREDICTION)
        again = engine.explain(images, PREDICTION)  # starts from the size that fitted
    finally:
        handle.remove()
    assert result.events == [
        "out of memory; batch size halved to 2",
        "out of memory; batch size halved to 1",
    ]
    assert again.events == [] and engine.batch_size == 1
    key = ("decoder_last", "gradcam")
    assert torch.allclose(result.maps[key], expected.maps[key], atol=1e-5)
    assert torch.equal(again.maps[key], result.maps[key])


def test_out_of_memory_in_score_cam_halves_the_chunk(model, images):
    layers = {"decoder_last": LAYERS["decoder_last"]}
    engine = CamEngine(model, layers, ["scorecam"], scorecam_chunk=16)
    expected = engine.explain(images[:1], PREDICTION)
    handle = model.register_forward_pre_hook(fake_oom_above(4, when_grad=False))
    try:
        result = CamEngine(model, layers, ["scorecam"], scorecam_chunk=16).explain(
            images[:1], PREDICTION
        )
    finally:
        handle.remove()
    assert result.events == [
        "Score-CAM out of memory; chunk halved to 8",
        "Score-CAM out of memory; chunk halved to 4",
    ]
    key = ("decoder_last", "scorecam")
    assert torch.allclose(result.maps[key], expected.maps[key], atol=1e-4)


def test_normalisation_epsilon_is_relative_to_the_map():
    raw = torch.rand(2, 8, 8) - 0.3
    maps, flags = normalise(raw, (32, 32))
    tiny_maps, tiny_flags = normalise(raw * 1e-9, (32, 32))
    assert flags == tiny_flags == [[], []]
    assert torch.allclose(maps, tiny_maps, atol=1e-5)
    # An absolute epsilon of 1e-7 (pytorch-grad-cam's scale_cam_image) flattens such a map.
    flattened = scale_cam_image(np.maximum(raw.numpy() * 1e-9, 0))
    assert flattened.max() < 0.05


def test_uninformative_maps_are_flagged():
    raw = torch.stack(
        [
            -torch.rand(4, 4),
            torch.full((4, 4), 3.0),
            torch.tensor([[1.0, float("nan")], [0.0, 2.0]]).repeat(2, 2),
            torch.rand(4, 4),
        ]
    )
    maps, flags = normalise(raw, (8, 8))
    assert flags == [["all_zero"], ["constant"], ["non_finite"], []]
    assert maps[0].eq(0).all() and maps[1].eq(0).all() and maps[2].isnan().all()
    assert maps[3].min() == 0 and maps[3].max() == 1


def test_faster_score_cam_is_marked_approximate(model, images):
    layers = {"encoder_early": LAYERS["encoder_early"]}
    full = CamEngine(model, layers, ["scorecam"]).explain(images[:1], PREDICTION)
    fast = CamEngine(model, layers, ["scorecam"], scorecam_max_channels=8).explain(
        images[:1], PREDICTION
    )
    assert full.approximate == set()
    assert fast.approximate == {("encoder_early", "scorecam")}
    assert fast.maps["encoder_early", "scorecam"].shape == (1, 64, 64)


def test_faster_score_cam_scores_only_max_channels_masked_inputs(model, images):
    """The saving is real: 8 masked inputs (plus the clean forward), not one per
    channel of the layer (24 at encoder_early)."""
    layers = {"encoder_early": LAYERS["encoder_early"]}
    counted = []
    handle = model.register_forward_pre_hook(lambda _, args: counted.append(args[0].shape[0]))
    try:
        CamEngine(model, layers, ["scorecam"], scorecam_max_channels=8,
                  scorecam_chunk=4).explain(images[:1], PREDICTION)
        fast = sum(counted)
        counted.clear()
        CamEngine(model, layers, ["scorecam"], scorecam_chunk=4).explain(images[:1], PREDICTION)
        full = sum(counted)
    finally:
        handle.remove()
    assert fast == 1 + 8
    assert full > fast + 8  # every channel scored


def test_works_inside_no_grad_and_inference_mode(model, images):
    model.zero_grad(set_to_none=True)
    layers = {"decoder_last": LAYERS["decoder_last"]}
    expected = CamEngine(model, layers, ["gradcam++"]).explain(images[:1], PREDICTION)
    with torch.no_grad():
        in_no_grad = CamEngine(model, layers, ["gradcam++"]).explain(images[:1], PREDICTION)
    with torch.inference_mode():
        in_inference = CamEngine(model, layers, ["gradcam++"]).explain(images[:1], PREDICTION)
    key = ("decoder_last", "gradcam++")
    assert torch.equal(in_no_grad.maps[key], expected.maps[key])
    assert torch.equal(in_inference.maps[key], expected.maps[key])
    assert all(parameter.grad is None for parameter in model.parameters())


def test_compute_cam_is_the_engine_for_one_layer_and_method(model, images):
    single = compute_cam(model, images[0], LAYERS["decoder_last"], "layercam")
    engine = CamEngine(model, {"d": LAYERS["decoder_last"]}, ["layercam"])
    assert single.shape == (64, 64)
    assert torch.equal(single, engine.explain(images[:1], PREDICTION).maps["d", "layercam"][0])


def test_adapter_methods_run_through_pytorch_grad_cam(model, images):
    methods = ["eigencam", "randomcam", "fem", "shapleycam", "kpca-cam"]
    layers = {"encoder_early": LAYERS["encoder_early"]}
    result = CamEngine(model, layers, methods).explain(images[:2], PREDICTION)
    # AblationCAM swaps the module for one that takes one argument: a plain convolution.
    conv = {"conv": "encoder._blocks.2._project_conv"}
    ablation = CamEngine(model, conv, ["ablationcam"]).explain(images[:2], PREDICTION)
    result.maps.update(ablation.maps)
    assert len(result.maps) == len(methods) + 1
    for maps in result.maps.values():
        assert maps.shape == (2, 64, 64)
        assert torch.isfinite(maps).all() and maps.max() <= 1
    # each image of a batch gets its own target region, as the native methods do
    for index in range(2):
        single = CamEngine(model, conv, ["ablationcam"]).explain(
            images[index : index + 1], PREDICTION)
        assert torch.allclose(ablation.maps["conv", "ablationcam"][index],
                              single.maps["conv", "ablationcam"][0], atol=1e-4)
        single = CamEngine(model, layers, ["shapleycam"]).explain(
            images[index : index + 1], PREDICTION)
        assert torch.allclose(result.maps["encoder_early", "shapleycam"][index],
                              single.maps["encoder_early", "shapleycam"][0], atol=1e-4)


def test_a_failing_adapter_is_a_user_error_and_leaves_the_model_intact(model, images):
    block = model.get_submodule(LAYERS["encoder_early"])
    engine = CamEngine(model, {"encoder_early": block}, ["ablationcam"])
    with pytest.raises(UserError, match="AblationCAM fails"):
        engine.explain(images[:1], PREDICTION)
    assert model.get_submodule(LAYERS["encoder_early"]) is block


def test_check_reports_every_layer_and_method(model, images):
    layers = {"decoder_last": LAYERS["decoder_last"], "unused": "encoder._conv_head"}
    rows = check_methods(model, layers, ["gradcam", "fullgrad"], images[0], PREDICTION, "cpu")
    by_key = {(row.layer, row.method): row for row in rows}
    assert len(rows) == 4
    ok = by_key["decoder_last", "gradcam"]
    assert ok.ok and ok.map_min == 0 and ok.map_max == 1 and ok.flags == [] and ok.seconds > 0
    assert not by_key["unused", "gradcam"].ok
    assert "never runs" in by_key["unused", "gradcam"].reason
    assert not by_key["decoder_last", "fullgrad"].ok


def test_list_methods_describes_every_registered_method():
    rows = list_methods()
    names = [row.name for row in rows]
    assert names[:4] == ["gradcam", "gradcam++", "xgradcam", "layercam"]
    assert {"scorecam", "eigencam", "hirescam", "gradcam-elementwise"} <= set(names)
    assert {row.family for row in rows} == {"gradient", "score", "adapter"}
    assert all(row.cost and row.reference for row in rows)
    assert all(entry.description for entry in METHODS.values())


def test_channels_last_and_static_chunk_shapes_change_no_map(model, images):
    """The GPU's fast paths (channels-last memory format, fixed Score-CAM chunk shapes for
    a compiled model) compute the same maps; checked here on the CPU."""
    layers = {"encoder_early": LAYERS["encoder_early"], "decoder_last": LAYERS["decoder_last"]}
    methods = ["gradcam", "layercam", "scorecam"]
    plain = CamEngine(model, layers, methods, scorecam_chunk=3).explain(images[:2], PREDICTION)
    fast_model = copy.deepcopy(model)
    engine = CamEngine(fast_model, layers, methods, scorecam_chunk=3, channels_last=True)
    engine.scorecam_compile = True  # static chunk shapes, without paying for a compilation
    fast = engine.explain(images[:2], PREDICTION)
    weight = fast_model.get_submodule("encoder._conv_stem").weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    for key, maps in plain.maps.items():
        assert torch.allclose(maps, fast.maps[key], atol=1e-4), key


def test_strict_fp32_turns_tf32_off_inside_and_restores_the_settings():
    switches = _fp32_switches()
    saved = [getattr(owner, name) for owner, name, _ in switches]
    try:
        with strict_fp32():
            assert [getattr(owner, name) for owner, name, _ in switches] == [
                value for _, _, value in switches]
        assert [getattr(owner, name) for owner, name, _ in switches] == saved
        with strict_fp32(enabled=False):
            assert [getattr(owner, name) for owner, name, _ in switches] == saved
        engine = CamEngine(nn.Conv2d(3, 1, 1), {"conv": ""}, ["gradcam"], precision="fp32")
        assert not engine.strict_fp32  # on the CPU there is no TF32 to turn off
    finally:
        for (owner, name, _), value in zip(switches, saved, strict=True):
            setattr(owner, name, value)


def test_a_chunk_below_one_is_a_user_error_not_an_endless_loop(model):
    with pytest.raises(UserError, match="chunk size must be >= 1"):
        CamEngine(model, {"decoder_last": LAYERS["decoder_last"]}, ["scorecam"],
                  scorecam_chunk=0)


def test_channels_last_is_skipped_for_a_model_it_cannot_convert():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.Unflatten(1, (1, 4)), nn.Conv3d(1, 1, 1), nn.Flatten(1, 2),
                          nn.Conv2d(4, 1, 1))
    engine = CamEngine(model, {"first": "0"}, ["gradcam"], channels_last=True)
    assert not engine.channels_last
    maps = engine.explain(torch.randn(2, 3, 16, 16), SegmentationTarget(region="image"))
    assert maps.maps["first", "gradcam"].shape == (2, 16, 16)
