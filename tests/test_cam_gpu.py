"""The engine on CUDA: precision, device agreement, automatic chunks and real out-of-memory.

Skipped without CUDA. Every test works on its own copy of the shared trained model, so
nothing here (device, memory format) leaks into the CPU tests.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from reportgen.compute.cam import CamEngine, SegmentationTarget
from reportgen.compute.cam.scorecam import CPU_CHUNK, MAX_CHUNK, auto_chunk
from tests.cam_fixtures import LAYERS, pearson, synthetic_shapes, trained_unetpp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
PREDICTION = SegmentationTarget(class_index=0, region="prediction")


@pytest.fixture()
def gpu_model():
    model = copy.deepcopy(trained_unetpp()).cuda()
    yield model
    del model
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def images():
    return synthetic_shapes(4, seed=11)[0]


def test_score_cam_in_bf16_agrees_with_fp32_on_gpu(gpu_model, images):
    layers = {"encoder_early": LAYERS["encoder_early"], "decoder_last": LAYERS["decoder_last"]}
    fp32 = CamEngine(gpu_model, layers, ["scorecam"], device="cuda", precision="fp32")
    bf16 = CamEngine(gpu_model, layers, ["scorecam"], device="cuda", precision="bf16")
    exact = fp32.explain(images[:2], PREDICTION)
    fast = bf16.explain(images[:2], PREDICTION)
    compared = 0
    for key, maps in exact.maps.items():
        for index in range(2):
            if exact.flags[key][index] or fast.flags[key][index]:
                continue  # a flat or empty map has no correlation to speak of
            assert pearson(maps[index], fast.maps[key][index]) >= 0.99, key
            compared += 1
    assert compared >= 3


def test_gpu_maps_agree_with_cpu_maps(gpu_model, images):
    """Same model and images on both devices, precision fp32 (channels-last on the GPU,
    TF32 off): the normalised maps agree. With PyTorch's default TF32 convolutions they
    did not everywhere (H100: Grad-CAM++ at encoder_early all-zero on the CPU for one
    image and not on the GPU; XGrad-CAM at encoder_last r = 0.993)."""
    methods = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam"]
    cpu = CamEngine(copy.deepcopy(trained_unetpp()), LAYERS, methods, precision="fp32")
    gpu = CamEngine(gpu_model, LAYERS, methods, device="cuda", precision="fp32")
    assert gpu.channels_last and not cpu.channels_last
    on_cpu = cpu.explain(images, PREDICTION)
    on_gpu = gpu.explain(images, PREDICTION)
    lowest = {}
    for key, maps in on_cpu.maps.items():
        lowest[key] = min((pearson(maps[i], on_gpu.maps[key][i]) for i in range(len(images))
                           if not on_cpu.flags[key][i] and not on_gpu.flags[key][i]),
                          default=1.0)
    print("lowest Pearson r, GPU vs CPU:", {"/".join(k): round(r, 5) for k, r in lowest.items()})
    assert min(lowest.values()) >= 0.999, lowest


def test_automatic_chunk_comes_from_free_gpu_memory_and_fits(gpu_model, images):
    """At 64 px the tiny model's masked inputs are small: the chunk is large, capped,
    and runs without an out-of-memory retry."""
    assert auto_chunk(gpu_model, images[0].cuda(), torch.bfloat16) == MAX_CHUNK
    big = F.interpolate(images[:1], size=512, mode="bilinear")
    chunk = auto_chunk(gpu_model, big[0].cuda(), torch.bfloat16)
    assert CPU_CHUNK < chunk <= MAX_CHUNK
    engine = CamEngine(gpu_model, {"encoder_last": LAYERS["encoder_last"]}, ["scorecam"],
                       device="cuda", precision="bf16")
    result = engine.explain(big, PREDICTION)
    assert engine.scorecam_chunk > CPU_CHUNK and result.events == []


def test_a_real_cuda_out_of_memory_halves_batch_and_chunk_and_the_maps_stay(gpu_model):
    """The allocator is capped just above what small batches need: the first batch and
    the first Score-CAM chunk run out of CUDA memory for real, then the work continues."""
    images = F.interpolate(synthetic_shapes(16, seed=5)[0], size=256, mode="bilinear")
    layers = {"decoder_last": LAYERS["decoder_last"]}
    methods = ["gradcam", "scorecam"]
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    expected = CamEngine(gpu_model, layers, methods, device="cuda", precision="fp32",
                         batch_size=2, scorecam_chunk=2).explain(images, PREDICTION)
    small_peak = torch.cuda.max_memory_allocated() - before
    engine = CamEngine(gpu_model, layers, methods, device="cuda", precision="fp32",
                       batch_size=16, scorecam_chunk=256)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    # room for batches of 2 and chunks of 2, not for 16 images or 256 masked inputs
    cap = (torch.cuda.memory_allocated() + 1.5 * small_peak) / total
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        result = engine.explain(images, PREDICTION)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert any(event.startswith("out of memory; batch size halved") for event in result.events)
    assert any(event.startswith("Score-CAM out of memory") for event in result.events)
    assert engine.scorecam_chunk < 256
    for key, maps in expected.maps.items():
        assert torch.allclose(maps, result.maps[key], atol=1e-3), key


def test_maps_left_on_the_device_equal_the_copied_ones(gpu_model, images):
    layers = {"encoder_last": LAYERS["encoder_last"], "decoder_last": LAYERS["decoder_last"]}
    engine = CamEngine(gpu_model, layers, ["gradcam", "layercam"], device="cuda")
    host = engine.explain(images, PREDICTION)
    kept = engine.explain(images, PREDICTION, on_device=True)
    for key, maps in host.maps.items():
        assert maps.device.type == "cpu" and kept.maps[key].device.type == "cuda"
        # two runs: cuDNN may pick other kernels, so equal up to rounding
        assert torch.allclose(kept.maps[key].cpu(), maps, atol=1e-4), key
        assert torch.allclose(kept.raw[key].cpu(), host.raw[key], rtol=1e-3, atol=1e-6), key
    assert kept.logits.device.type == "cuda" and kept.flags == host.flags
