"""The CAM engine from Python: the layer names a spec takes, inputs refused with a reason,
and a check that runs what the build will run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reportgen.compute.cam import (
    CamEngine,
    CheckOptions,
    SegmentationTarget,
    check_methods,
    compute_cam,
)
from reportgen.errors import UserError
from tests.cam_fixtures import LAYERS, synthetic_shapes

PREDICTION = SegmentationTarget(class_index=0, region="prediction")
GROUND_TRUTH = SegmentationTarget(class_index=0, region="ground_truth")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes():
    return synthetic_shapes(2, seed=5)


def test_check_runs_score_cam_as_the_build_does(model, shapes):
    """max_channels 4 and chunk 2: one forward of the image, then two of two masked
    inputs, not one per channel of the layer; encoder_last is outside the Score-CAM
    layers, so it is a skipped row, not a 320-channel run."""
    image = shapes[0][0]
    layers = {"encoder_last": LAYERS["encoder_last"], "decoder_last": LAYERS["decoder_last"]}
    batch_sizes: list[int] = []
    handle = model.register_forward_hook(lambda module, inputs, output: batch_sizes.append(
        len(inputs[0])))
    try:
        rows = check_methods(model, layers, ["scorecam"], image, PREDICTION,
                             options=CheckOptions(scorecam_max_channels=4, scorecam_chunk=2,
                                                  scorecam_layers=["decoder_last"]))
    finally:
        handle.remove()
    assert batch_sizes == [1, 2, 2]
    by_layer = {row.layer: row for row in rows}
    skipped = by_layer["encoder_last"]
    assert skipped.ok and skipped.skipped and not skipped.approximate
    assert skipped.reason == "skipped (not in method_options.scorecam.layers)"
    assert skipped.map_min is None and skipped.seconds == 0
    computed = by_layer["decoder_last"]
    assert computed.ok and computed.approximate and computed.flags == ["approximate"]
    kept, channels = computed.scored_channels
    assert kept == 4 < channels
    expected = CamEngine(model, {"decoder_last": LAYERS["decoder_last"]}, ["scorecam"],
                         scorecam_max_channels=4).explain(image[None], PREDICTION)
    maps = expected.maps["decoder_last", "scorecam"]
    assert computed.map_min == maps.min().item() and computed.map_max == maps.max().item()


def test_check_uses_the_build_precision_for_every_cell(model, shapes):
    rows = check_methods(model, {"decoder_last": LAYERS["decoder_last"]},
                         ["gradcam", "scorecam"], shapes[0][0], PREDICTION,
                         options=CheckOptions(precision="fp8"))
    assert len(rows) == 2
    assert all(not row.ok and "precision 'fp8'" in row.reason for row in rows)


def test_exact_score_cam_rows_are_not_marked_approximate(model, shapes):
    rows = check_methods(model, {"decoder_last": LAYERS["decoder_last"]}, ["scorecam"],
                         shapes[0][0], PREDICTION,
                         options=CheckOptions(scorecam_max_channels=10_000))
    assert rows[0].ok and not rows[0].approximate and rows[0].flags == []


def test_compute_cam_explains_the_ground_truth_region_of_a_given_mask(model, shapes):
    images, masks = shapes
    single = compute_cam(model, images[0], "decoder_last", "gradcam", GROUND_TRUTH,
                         gt_mask=masks[0])
    engine = CamEngine(model, {"d": LAYERS["decoder_last"]}, ["gradcam"])
    expected = engine.explain(images[:1], GROUND_TRUTH, masks[:1]).maps["d", "gradcam"][0]
    assert torch.equal(single, expected)
    assert compute_cam(model, images[0], "decoder_last", "gradcam", GROUND_TRUTH,
                       gt_mask=masks[:1]).equal(expected)


def test_compute_cam_takes_the_layer_names_a_spec_takes(model, shapes):
    image = shapes[0][0]
    by_path = compute_cam(model, image, "encoder._blocks.15", "gradcam")
    assert torch.equal(compute_cam(model, image, "encoder_last", "gradcam"), by_path)
    assert torch.equal(compute_cam(model, image, "encoder._blocks[15]", "gradcam"), by_path)


def test_the_engine_takes_aliases_and_a_list_of_names(model, shapes):
    images = shapes[0]
    by_path = CamEngine(model, LAYERS, ["gradcam"]).explain(images, PREDICTION)
    by_alias = CamEngine(model, ["encoder_last", "decoder_last"], ["gradcam"],
                         input_size=(64, 64)).explain(images, PREDICTION)
    assert set(by_alias.maps) == {("encoder_last", "gradcam"), ("decoder_last", "gradcam")}
    for key, maps in by_alias.maps.items():
        assert torch.equal(maps, by_path.maps[key]), key



def test_a_mistyped_module_path_names_the_closest_one(model):
    with pytest.raises(UserError, match=r"Did you mean 'encoder\._blocks\.15'\?"):
        CamEngine(model, ["encoder._blocks.15x"], ["gradcam"], input_size=(64, 64))


def test_compute_cam_gives_a_training_model_its_modes_back(model, shapes):
    training = copy.deepcopy(model).train()
    training.encoder.eval()  # mixed modes come back as they were, module by module
    single = compute_cam(training, shapes[0][0], "decoder_last", "gradcam")
    assert training.training and training.decoder.training and not training.encoder.training
    assert not training.encoder._bn0.training
    # the map itself is the eval-mode one (batch norm from its running statistics)
    assert torch.equal(single, compute_cam(model, shapes[0][0], "decoder_last", "gradcam"))


@pytest.mark.parametrize(("images", "message"), [
    (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8),
     r"torch.uint8, not floating point: convert and normalise them as in training"),
    (torch.randn(1, 1, 64, 64),
     r"must be \[N, 3, H, W\] with H and W multiples of 32 \(the model takes 3 input"),
    (torch.randn(1, 64, 64, 3),
     r"got shape \(1, 64, 64, 3\); channels-last .*permute\(0, 3, 1, 2\)"),
    (torch.randn(1, 3, 100, 100), r"multiples of 32 \(the model's output stride\), got 100x100; "
                                  r"pad or resize them, e.g. to 128x128"),
    (torch.randn(3, 64, 64), r"must be \[N, 3, H, W\].*got shape \(3, 64, 64\)"),
    (torch.randn(0, 3, 64, 64), r"no images to explain: the batch is empty"),
], ids=["uint8", "one_channel", "channels_last", "size_100", "no_batch_axis", "empty"])
def test_images_the_model_cannot_take_are_refused_with_the_expected_layout(model, images, message):
    engine = CamEngine(model, {"d": LAYERS["decoder_last"]}, ["gradcam"])
    with pytest.raises(UserError, match=message):
        engine.explain(images, PREDICTION)
    if images.ndim == 4 and len(images) == 1:  # one image: compute_cam says the same
        with pytest.raises(UserError, match=message):
            compute_cam(model, images[0], "decoder_last", "gradcam")


def test_a_model_that_does_not_say_its_input_is_checked_only_for_what_is_known():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))
    result = CamEngine(model, {"first": "0"}, ["gradcam"]).explain(
        torch.randn(2, 1, 10, 10), SegmentationTarget(region="image"))
    assert result.maps["first", "gradcam"].shape == (2, 10, 10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_user_error_as_in_the_cli(model):
    with pytest.raises(UserError, match="no CUDA device is available \\(use auto or cpu\\)"):
        CamEngine(model, {"d": LAYERS["decoder_last"]}, ["gradcam"], device="cuda")


def test_resolved_layer_paths_cost_no_dry_forward(monkeypatch):
    """The build hands the engine resolved paths (`:nhwc` ones too): a fixed-size model
    (Swin) must not be probed at another size."""
    from reportgen.compute.models import build_model
    from reportgen.compute.models import layers as layer_module

    model = build_model("Unet", "tu-mambaout_femto", classes=1)

    def no_forward(*args, **kwargs):
        raise AssertionError("a dry forward")

    monkeypatch.setattr(layer_module, "_dry_forward", no_forward)
    engine = CamEngine(model, {"encoder_early": "encoder.model.stages_0:nhwc",
                               "decoder_last": "decoder.blocks.4"}, ["gradcam"])
    assert engine.nhwc_layers == {"encoder_early"}


def test_an_element_of_the_encoders_list_is_explained_as_the_module_that_made_it():
    from reportgen.compute.models import build_model

    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", classes=1)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    target = SegmentationTarget(region="image")
    result = CamEngine(model, {"module": "encoder_early", "element": "encoder@2"},
                       ["gradcam", "layercam"], input_size=(64, 64)).explain(images, target)
    for method in ("gradcam", "layercam"):  # encoder.layer1's output is the list's element 2
        assert torch.equal(result.maps["element", method], result.maps["module", method])
    with pytest.raises(UserError, match="element of a list output: use a gradient method"):
        CamEngine(model, ["encoder@2"], ["eigencam"], input_size=(64, 64)).explain(
            images, target)


def test_pytorch_grad_cam_methods_that_ignore_the_layout_refuse_a_channels_last_layer():
    from reportgen.compute.models import build_model

    model = build_model("Unet", "tu-mambaout_femto", classes=1)
    images = torch.randn(1, 3, 64, 64)
    stage = model.get_submodule("encoder.model.stages_3")
    for method in ("shapleycam", "ablationcam"):
        with pytest.raises(UserError, match=f"method '{method}'.*channels-last"):
            CamEngine(model, ["encoder_last"], [method], input_size=(64, 64)).explain(
                images, SegmentationTarget(region="image"))
    assert not stage._forward_hooks  # nothing of pytorch-grad-cam's left on the model
    maps = CamEngine(model, ["encoder_last"], ["eigencam"], input_size=(64, 64)).explain(
        images, SegmentationTarget(region="image")).maps
    assert maps["encoder_last", "eigencam"].shape == (1, 64, 64)
