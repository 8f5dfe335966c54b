"""The five layer aliases resolve on every smp architecture and the listed encoder families."""

from __future__ import annotations

import re

import pytest
import torch

from reportgen.compute.models import ALIASES, build_model, describe_layers, resolve_layers
from reportgen.compute.models.build import ARCHITECTURES
from reportgen.errors import LayerError, UserError

SIZE = (64, 64)
FAMILIES = ["efficientnet-b0", "timm-efficientnet-b0", "resnet18", "mobilenet_v2", "tu-resnet18"]
# Pairs smp itself cannot build (the test proves it below) or where an alias has no meaning.
SMP_CANNOT_BUILD = {("DPT", e) for e in FAMILIES if not e.startswith("tu-")}  # DPT: timm only
NO_STRIDE_16 = {"PSPNet"}  # encoder depth 3: encoder_mid (stride 16) does not exist
NEEDS_128 = {"PAN"}  # its pyramid pooling needs a stride-32 map larger than 2x2


def _build(arch: str, encoder: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, encoder, classes=2)


def _check(model: torch.nn.Module, aliases: list[str], size: tuple[int, int] = SIZE) -> None:
    resolved = resolve_layers(model, aliases, size)
    infos = {i.name: i for i in describe_layers(model, resolved, size)}
    for name in aliases:
        info = infos[name]
        model.get_submodule(info.path)
        assert info.channels and info.channels > 0, (name, info)
    if "encoder_early" in infos:
        assert infos["encoder_early"].stride == 4
    if "encoder_last" in infos:  # the deepest stage, whatever the encoder's depth or dilation
        assert infos["encoder_last"].stride == model.encoder.output_stride
    if "seg_head" in infos:
        assert infos["seg_head"].channels == 2


@pytest.mark.parametrize("encoder", FAMILIES)
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_aliases_resolve_for_architecture_and_encoder_family(arch: str, encoder: str):
    if (arch, encoder) in SMP_CANNOT_BUILD:
        with pytest.raises(UserError, match="smp cannot build"):
            _build(arch, encoder)
        return
    model = _build(arch, encoder)
    if arch == "DPT":  # its CNN encoders list no stride-16 feature: the stage is found
        _check(model, list(ALIASES))
        infos = describe_layers(model, resolve_layers(model, ["encoder_mid"], SIZE), SIZE)
        assert infos[0].stride == 16
        return
    aliases = [a for a in ALIASES if not (arch in NO_STRIDE_16 and a == "encoder_mid")]
    _check(model, aliases, (128, 128) if arch in NEEDS_128 else SIZE)
    if arch in NEEDS_128:
        with pytest.raises(LayerError, match="input size large enough"):
            resolve_layers(model, ["encoder_last"], SIZE)
    if arch in NO_STRIDE_16:
        with pytest.raises(LayerError, match="no sensible meaning"):
            resolve_layers(model, ["encoder_mid"], SIZE)


@pytest.mark.parametrize("encoder", [f"efficientnet-b{i}" for i in range(8)]
                         + [f"timm-efficientnet-b{i}" for i in range(8)]
                         + ["resnet34", "resnet50"])
def test_aliases_resolve_on_unetplusplus_for_every_encoder_size(encoder: str):
    _check(_build("UnetPlusPlus", encoder), list(ALIASES))


def test_efficientnet_aliases_follow_the_design_table():
    model = _build("UnetPlusPlus", "efficientnet-b5")
    resolved = resolve_layers(model, list(ALIASES), SIZE)
    idx = model.encoder._out_indexes
    assert resolved == {
        "encoder_early": f"encoder._blocks.{idx[0]}",
        "encoder_mid": f"encoder._blocks.{idx[2]}",
        "encoder_last": f"encoder._blocks.{len(model.encoder._blocks) - 1}",
        "decoder_last": "decoder.blocks.x_0_4",
        "seg_head": "segmentation_head.0",
    }
    infos = {i.name: i for i in describe_layers(model, resolved, (128, 128))}
    assert infos["encoder_last"].channels == 512 and infos["encoder_last"].stride == 32


def test_dotted_paths_and_index_syntax_are_accepted():
    model = _build("UnetPlusPlus", "efficientnet-b0")
    resolved = resolve_layers(model, ["encoder._blocks[15]", "decoder.blocks.x_0_4"], SIZE)
    assert resolved == {"encoder._blocks[15]": "encoder._blocks.15",
                        "decoder.blocks.x_0_4": "decoder.blocks.x_0_4"}


def test_unknown_path_lists_the_children():
    model = _build("UnetPlusPlus", "efficientnet-b0")
    with pytest.raises(LayerError, match="children of 'decoder.blocks'.*x_0_4") as info:
        resolve_layers(model, ["decoder.blocks.x_9_9"], SIZE)
    assert "Did you mean" not in str(info.value)  # no index is close to x_9_9


def test_misspelt_efficientnet_block_path_names_encoder_and_suggests_blocks():
    # the reviewer's spec: `layers: [encoder_early, encoder.blocks.38]` (the blocks are `_blocks`)
    model = _build("UnetPlusPlus", "efficientnet-b5")
    with pytest.raises(LayerError) as info:
        resolve_layers(model, ["encoder_early", "encoder.blocks.38"], SIZE)
    message = str(info.value)
    assert "'encoder' has no child 'blocks'" in message
    assert "(children of 'encoder': _conv_stem, _bn0, _blocks, _conv_head" in message
    assert "Did you mean 'encoder._blocks.38'?" in message
    assert "segmentation_head" not in message  # the root's children are not encoder's
    model.get_submodule("encoder._blocks.38")  # and the suggestion is a real module


def test_misspelt_block_path_past_the_last_block_gives_the_block_range():
    # B0 has 16 blocks, so encoder._blocks.38 does not exist there either
    model = _build("UnetPlusPlus", "efficientnet-b0")
    with pytest.raises(LayerError) as info:
        resolve_layers(model, ["encoder.blocks.38"], SIZE)
    message = str(info.value)
    assert "'encoder' has no child 'blocks'" in message
    assert "Did you mean 'encoder._blocks' (children 0-15)?" in message
    with pytest.raises(LayerError, match=r"'encoder._blocks' has no child '99' "
                       r"\(children of 'encoder._blocks': 0-15\)"):
        resolve_layers(model, ["encoder._blocks.99"], SIZE)


def test_misspelt_top_level_name_is_corrected_and_leaf_modules_say_so():
    model = _build("UnetPlusPlus", "efficientnet-b0")
    with pytest.raises(LayerError, match=r"the model has no child 'encodr' \(children of the "
                       r"model: encoder, decoder, segmentation_head\)\. Did you mean "
                       r"'encoder._blocks.3'\?"):
        resolve_layers(model, ["encodr._blocks.3"], SIZE)
    with pytest.raises(LayerError, match=r"children of 'segmentation_head.0': none"):
        resolve_layers(model, ["segmentation_head.0.weight"], SIZE)


def test_module_that_never_runs_is_named():
    model = _build("UnetPlusPlus", "efficientnet-b0")
    with pytest.raises(LayerError, match=r"encoder._conv_head.*never runs"):
        resolve_layers(model, ["encoder._conv_head"], SIZE)


@pytest.mark.parametrize(("encoder", "early", "mid"), [
    ("vgg11", "encoder.features.9", "encoder.features.19"),  # ReLU(inplace=True) after conv
    ("densenet121", "encoder.features.transition1.relu", "encoder.features.transition3.relu"),
])
def test_an_alias_names_the_inplace_activation_the_decoder_sees(encoder, early, mid):
    model = _build("Unet", encoder)
    resolved = resolve_layers(model, ["encoder_early", "encoder_mid"], SIZE)
    assert resolved == {"encoder_early": early, "encoder_mid": mid}


def test_mix_transformer_aliases_name_the_norm_its_features_copy():
    model = _build("Segformer", "mit_b0")
    resolved = resolve_layers(model, ["encoder_early", "encoder_mid", "encoder_last"], SIZE)
    assert resolved == {"encoder_early": "encoder.norm1", "encoder_mid": "encoder.norm3",
                        "encoder_last": "encoder.norm4"}


def test_resolving_leaves_a_training_model_as_it_was():
    model = _build("Unet", "resnet18").train()
    model.encoder.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    resolved = resolve_layers(model, list(ALIASES), SIZE)
    describe_layers(model, resolved, SIZE)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not model.encoder.training and model.decoder.training


class FixedSize(torch.nn.Module):
    """A model that, like timm's ViT and Swin, asserts its input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == 160, f"Input width ({x.shape[-1]}) doesn't match model (160)"
        return self.conv(x)


def test_a_model_with_a_fixed_input_size_is_traced_at_that_size():
    assert resolve_layers(FixedSize(), ["conv"], (160, 160)) == {"conv": "conv"}
    with pytest.raises(LayerError, match=r"at 96x96 failed .*doesn't match model \(160\)"):
        resolve_layers(FixedSize(), ["conv"], (96, 96))


def test_channels_last_encoder_stages_resolve_with_their_true_channels_and_strides():
    model = _build("Unet", "tu-mambaout_femto")
    resolved = resolve_layers(model, ["encoder_early", "encoder_mid", "encoder_last",
                                      "encoder.model.stages_1:nhwc"], SIZE)
    assert resolved["encoder_early"] == "encoder.model.stages_0:nhwc"
    infos = {i.name: (i.channels, i.stride) for i in describe_layers(model, resolved, SIZE)}
    assert infos == {"encoder_early": (48, 4), "encoder_mid": (192, 16),
                     "encoder_last": (288, 32), "encoder.model.stages_1:nhwc": (96, 8)}


def test_features_built_outside_any_module_are_elements_of_the_encoders_list():
    model = _build("Unet", "dpn68")  # DPN joins its blocks' two outputs outside any module
    resolved = resolve_layers(model, ["encoder_early", "encoder_mid", "encoder@3"], SIZE)
    assert resolved == {"encoder_early": "encoder@2", "encoder_mid": "encoder@4",
                        "encoder@3": "encoder@3"}
    infos = {i.name: (i.channels, i.stride) for i in describe_layers(model, resolved, SIZE)}
    assert infos == {"encoder_early": (144, 4), "encoder_mid": (704, 16),
                     "encoder@3": (320, 8)}


@pytest.mark.parametrize(("path", "message"), [
    ("encoder@9", "returns a list of 6, with no feature map at element 9"),
    ("encoder.layer1@0", "returns Tensor, with no feature map at element 0"),
    ("encoder@-1", "must be a number 0, 1, 2"),
    ("encoder@²", "must be a number 0, 1, 2"),
    ("encoder@2:nhwc", "takes @i or :nhwc, not both"),
])
def test_element_paths_that_name_no_feature_map_are_refused_when_resolved(path, message):
    with pytest.raises(LayerError, match=re.escape(message)):
        resolve_layers(_build("Unet", "resnet18"), [path], SIZE)
