"""Rank correlation, SSIM, the randomisation cascade and its reproducibility."""

import pytest
import segmentation_models_pytorch as smp
import torch
from scipy.stats import spearmanr

from reportgen.compute.metrics import (
    SanityLevel,
    SanityResult,
    cascade_order,
    model_stages,
    reinitialise,
    sanity_check,
    spearman,
    ssim,
)
from reportgen.compute.metrics.sanity import standardised_ranks


def small_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return smp.Unet("resnet18", encoder_weights=None, encoder_depth=3,
                    decoder_channels=(16, 8, 8), classes=1).eval()


def test_spearman_matches_scipy_including_ties():
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, 4, (3, 12, 12), generator=generator).float()
    second = torch.rand(3, 12, 12, generator=generator)
    expected = [spearmanr(a.flatten(), b.flatten())[0] for a, b in zip(first, second, strict=True)]
    assert spearman(first, second).tolist() == pytest.approx(expected)


def test_spearman_sees_ranks_only_and_is_undefined_for_constant_maps():
    maps = torch.rand(2, 16, 16)
    assert spearman(maps, maps**3).tolist() == pytest.approx([1.0, 1.0])
    assert spearman(maps, 1 - maps).tolist() == pytest.approx([-1.0, -1.0])
    assert spearman(maps, torch.zeros(2, 16, 16)).isnan().all()


def test_ranks_standardised_once_give_spearman_by_a_dot_product():
    generator = torch.Generator().manual_seed(1)
    first = torch.randint(0, 5, (3, 10, 10), generator=generator).double()
    second = torch.rand(3, 10, 10, generator=generator).double()
    dots = (standardised_ranks(first) * standardised_ranks(second)).sum(dim=1)
    assert dots.tolist() == pytest.approx(spearman(first, second).tolist())
    assert standardised_ranks(torch.zeros(1, 4, 4)).isnan().all()


def test_ssim_is_one_for_equal_maps_and_low_for_unrelated_ones():
    generator = torch.Generator().manual_seed(1)
    maps, other = torch.rand(2, 2, 32, 32, generator=generator)
    assert ssim(maps, maps).tolist() == pytest.approx([1.0, 1.0])
    torch.testing.assert_close(ssim(maps, other), ssim(other, maps))
    assert (ssim(maps, other).abs() < 0.2).all()
    assert (ssim(maps, 1 - maps) < 0).all()


def test_cascade_goes_from_the_head_back_to_the_stem_and_skips_unused_stages():
    model = small_unet()
    assert "encoder.layer4" in model_stages(model)
    order = cascade_order(model, lambda m: {("x", "y"): m(torch.rand(1, 3, 32, 32))[:, 0]})
    assert order == ["segmentation_head.0", "decoder.blocks.2", "decoder.blocks.1",
                     "decoder.blocks.0", "encoder.layer2", "encoder.layer1", "encoder.bn1",
                     "encoder.conv1"]


def test_cascade_is_found_on_other_architectures():
    model = smp.UnetPlusPlus("efficientnet-b0", encoder_weights=None, classes=1)
    order = cascade_order(model)
    assert order[0] == "segmentation_head.0"
    assert order[1].startswith("decoder.blocks.")
    assert order[-1] == "encoder._conv_stem"


def test_reinitialise_is_reproducible_and_leaves_the_global_random_state_alone():
    first, second = small_unet(), small_unet()
    trained = first.decoder.blocks[0].conv1[0].weight.clone()
    state = torch.random.get_rng_state()
    reinitialise(first.decoder, seed=3)
    reinitialise(second.decoder, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first.decoder.blocks[0].conv1[0].weight,
                       second.decoder.blocks[0].conv1[0].weight)
    assert not torch.equal(first.decoder.blocks[0].conv1[0].weight, trained)


def output_map(model: torch.nn.Module) -> dict:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return {("head", "output"): model(images)[:, 0].sigmoid()}


def test_sanity_check_leaves_the_model_alone_and_repeats_exactly():
    model = small_unet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = sanity_check(model, output_map, seed=7, levels=3)
    second = sanity_check(model, output_map, seed=7, levels=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [level.stage for level in first.levels] == [
        "decoder.blocks.1", "encoder.layer1", "encoder.conv1"]
    for a, b in zip(first.levels, second.levels, strict=True):
        torch.testing.assert_close(a.spearman, b.spearman, equal_nan=True)


def test_sanity_levels_can_be_named_and_unknown_names_are_refused():
    model = small_unet()
    result = sanity_check(model, output_map, levels=["encoder.layer1", "segmentation_head.0"])
    assert [level.stage for level in result.levels] == ["segmentation_head.0", "encoder.layer1"]
    with pytest.raises(ValueError, match="unknown stages"):
        sanity_check(model, output_map, levels=["encoder.layer9"])


def test_verdict_uses_the_mean_absolute_correlation_at_full_randomisation():
    key_pass, key_fail, key_none = ("a", "m"), ("b", "m"), ("c", "m")
    final = SanityLevel("encoder.conv1", spearman={
        key_pass: torch.tensor([0.1, -0.3]),
        key_fail: torch.tensor([-0.9, -0.7]),
        key_none: torch.tensor([float("nan"), float("nan")]),
    }, ssim={key: torch.zeros(2) for key in (key_pass, key_fail, key_none)})
    verdicts = SanityResult((final,), threshold=0.5).verdicts()
    assert (verdicts[key_pass].status, verdicts[key_pass].statistic) == ("pass", pytest.approx(0.2))
    assert (verdicts[key_fail].status, verdicts[key_fail].statistic) == ("fail", pytest.approx(0.8))
    assert verdicts[key_none].status == "n/a"
    result = SanityResult((final,), threshold=0.5)
    assert result.curves(key_pass)[0] == [pytest.approx(0.2)]
    assert result.curves(key_none)[0] == [None]
