"""Score-CAM, batched on the device (Wang et al., CVPR-W 2020, arXiv:1910.01279).

For image x, layer activations A [K, h, w] and target score S:

    M_k = (U_k - min U_k) / (max U_k - min U_k + 1e-8),  U_k = upsample_bilinear(A_k)
    s_k = S(model(x * M_k))                              same target region as x
    w   = softmax_k(s)
    map = ReLU(sum_k w_k A_k)

as pytorch-grad-cam's `ScoreCAM` (align-corners upsampling, the absolute epsilon, which
keeps a flat channel a flat mask instead of amplifying its noise, and the softmax over
channels included). The masked inputs of all (image, channel) pairs of a batch
are forwarded in chunks; the scores never leave the device. With `max_channels`
only the channels of highest spatial variance of A_k are scored and the softmax
runs over those ("Faster Score-CAM"): an approximation, reported as such.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reportgen.compute.cam.target import SegmentationTarget, logits_of
from reportgen.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
CPU_CHUNK = 2
MAX_CHUNK = 256
_PROBE = 2


def channel_masks(channels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks [P, 1, H, W] in [0, 1] from activation channels [P, h, w]."""
    masks = F.interpolate(channels[:, None], size=size, mode="bilinear", align_corners=True)
    low = masks.amin(dim=(-2, -1), keepdim=True)
    high = masks.amax(dim=(-2, -1), keepdim=True)
    return (masks - low) / (high - low + 1e-8)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the masked forwards; None means float32.

    Autocast is used on CUDA only; "auto" is bf16 where the GPU supports it, else fp32.
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def arithmetic(precision: str, device: torch.device) -> str:
    """In words, the arithmetic `precision` ("auto" included) means on `device`: what the
    audit trail records, since "auto" alone does not say."""
    if device.type != "cuda":
        return "float32 (on the CPU every precision setting computes in float32)"
    if precision == "fp32":
        return "float32 throughout, TF32 off"
    dtype = resolve_precision(precision, device)
    convolutions = "float32 with PyTorch's default TF32 convolutions"
    if dtype is None:
        return f"{convolutions} (this GPU has no bfloat16)"
    name = "bfloat16" if dtype == torch.bfloat16 else "float16"
    return f"Score-CAM forwards under {name} autocast; the rest {convolutions}"


def _fp32_switches() -> list[tuple[object, str, object]]:
    """(owner, attribute, value meaning float32 without TF32) for CUDA convolutions and
    matrix products: the `fp32_precision` settings where torch has them (reading the
    old `allow_tf32` flags raises once they are used), else the old flags."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(
            matmul, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


@contextmanager
def strict_fp32(enabled: bool = True) -> Iterator[None]:
    """Float32 arithmetic without TF32 in CUDA convolutions and matrix products while
    inside (PyTorch runs cuDNN convolutions in TF32 by default: 10-bit mantissas, enough
    to flip numerically fragile maps, e.g. Grad-CAM++ at an early layer); the previous
    settings come back on exit. No effect on the CPU."""
    if not enabled:
        yield
        return
    switches = _fp32_switches()
    saved = [getattr(owner, name) for owner, name, _ in switches]
    for owner, name, value in switches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(switches, saved, strict=True):
            setattr(owner, name, value)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def auto_chunk(model: nn.Module, image: torch.Tensor, dtype: torch.dtype | None) -> int:
    """Masked inputs per forward: half the available CUDA memory over the memory one more
    inference sample costs. Available is the device's free memory plus what PyTorch's
    allocator holds unused (earlier work leaves it cached); the cost per sample is the
    difference of two probe forwards (_PROBE and 2 x _PROBE samples), so fixed costs
    such as convolution workspaces are not counted per sample (an untimed first probe
    makes the lasting ones, e.g. library handles, before measuring). On the CPU a small
    fixed chunk: larger ones gain no parallelism and lose cache locality (2 was fastest
    on U-Net++ at 256 px). Side effect on CUDA: the device's peak-memory statistics
    are reset (`torch.cuda.reset_peak_memory_stats`)."""
    if image.device.type != "cuda":
        return CPU_CHUNK
    device = image.device

    def probe(count: int) -> int:
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad(), _autocast(device, dtype):
            model(image[None].expand(count, *image.shape).contiguous())
        return torch.cuda.max_memory_allocated(device) - baseline

    probe(_PROBE)
    torch.cuda.synchronize(device)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    peaks = [probe(_PROBE), probe(2 * _PROBE)]
    per_sample = max(1, (peaks[1] - peaks[0]) // _PROBE, peaks[1] // (8 * _PROBE))
    fixed = max(0, peaks[0] - _PROBE * per_sample)
    return int(min(MAX_CHUNK, max(1, (0.5 * free - fixed) // per_sample)))


@dataclass(frozen=True)
class ScoreCamSettings:
    """How Score-CAM scores a layer: only its `max_channels` channels of highest activation
    variance (None: all; the map is then approximate), the masked forwards under autocast
    to `autocast_dtype` (None: float32), in the channels-last memory format, and with
    `static_shapes` every forward of exactly the chunk size (a compiled model)."""

    max_channels: int | None = None
    autocast_dtype: torch.dtype | None = None
    static_shapes: bool = False
    channels_last: bool = False


def score_cam(
    model: nn.Module,
    images: torch.Tensor,
    activations: torch.Tensor,
    target: SegmentationTarget,
    regions: torch.Tensor,
    chunk: int,
    settings: ScoreCamSettings = ScoreCamSettings(),
    events: list[str] | None = None,
) -> tuple[torch.Tensor, int]:
    """Raw Score-CAM maps [N, h, w] (before the ReLU) and the chunk size that fitted.

    Images with an empty target region get zero maps (the caller flags them). On a
    CUDA out-of-memory error the chunk halves and the work continues. With
    `settings.static_shapes` every forward gets exactly `chunk` inputs (a short last
    chunk is padded with repeats of its last pair and the extra scores dropped), so a
    compiled model is not recompiled for a new batch size.
    """
    if chunk < 1:
        raise ValueError(f"Score-CAM chunk must be >= 1, got {chunk}")
    activations = activations.detach().float()
    valid = regions.flatten(1).any(dim=1).nonzero().flatten()
    channels = _scored_channels(activations[valid], settings.max_channels)
    kept = channels.shape[1]
    pair_image = valid.repeat_interleave(kept)
    pair_channel = channels.flatten()
    scores = torch.empty(len(pair_image), device=activations.device)

    start = 0
    with torch.no_grad():
        while start < len(pair_image):
            pairs = slice(start, start + chunk)
            index, channel = pair_image[pairs], pair_channel[pairs]
            used = len(index)
            if settings.static_shapes and used < chunk:
                index = torch.cat([index, index[-1:].expand(chunk - used)])
                channel = torch.cat([channel, channel[-1:].expand(chunk - used)])
            try:
                logits = _masked_logits(model, images, activations[index, channel], index,
                                        settings)
                scores[pairs] = target.scores(logits, regions[index])[:used]
            except torch.OutOfMemoryError:
                if chunk == 1:
                    raise
                logits = None
            if logits is None:
                # Outside the except block, so the failed chunk's tensors are released.
                chunk //= 2
                message = f"Score-CAM out of memory; chunk halved to {chunk}"
                log.warning(message)
                if events is not None:
                    events.append(message)
                torch.cuda.empty_cache()
                continue
            start = pairs.stop

        raw = _weighted_sum(activations, scores.view(len(valid), kept), valid, channels)
    return raw, chunk


def _weighted_sum(activations: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor,
                  channels: torch.Tensor) -> torch.Tensor:
    """Σₖ softmax(scores)ₖ · Aₖ per image of `valid` over its scored `channels`; zero maps
    for the other images (their target region is empty)."""
    weights = torch.zeros(activations.shape[:2], device=activations.device)
    if len(valid):
        weights[valid[:, None], channels] = torch.softmax(scores, dim=1)
    return (weights[:, :, None, None] * activations).sum(dim=1)


def _scored_channels(activations: torch.Tensor, max_channels: int | None) -> torch.Tensor:
    """The channels [N, kept] of activations [N, K, h, w] that Score-CAM scores: those of
    highest activation variance when `max_channels` leaves some out, else all."""
    count, k = activations.shape[:2]
    if max_channels is not None and max_channels < k:
        return activations.flatten(2).var(dim=-1).topk(max_channels, dim=1).indices
    return torch.arange(k, device=activations.device).expand(count, k)


def _masked_logits(model: nn.Module, images: torch.Tensor, channel_maps: torch.Tensor,
                   index: torch.Tensor, settings: ScoreCamSettings) -> torch.Tensor:
    """The model's logits for images[index], each masked by its channel's map."""
    masked = images[index] * channel_masks(channel_maps, tuple(images.shape[-2:]))
    if settings.channels_last:
        masked = masked.contiguous(memory_format=torch.channels_last)
    with _autocast(images.device, settings.autocast_dtype):
        return logits_of(model(masked))
