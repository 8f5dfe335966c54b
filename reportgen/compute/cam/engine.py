"""The CAM engine: every requested layer x method for a stream of image batches.

Per batch: ONE forward pass with every layer hooked, the target regions from its
logits, ONE backward pass (d score / d activations of every layer at once), then
each gradient method is a pure function of (A, G) on the device. Score-CAM reuses
the recorded activations and forwards masked inputs in chunks; adapter methods
call pytorch-grad-cam per layer. Maps are normalised on the device and moved to
the CPU per batch, so memory is bounded by the batch size.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from reportgen.compute.cam.adapter import adapter_maps
from reportgen.compute.cam.hooks import (
    ActivationRecorder,
    LayerSpec,
    channels_last_layers,
    list_elements,
    resolve_layers,
)
from reportgen.compute.cam.methods import MethodEntry, get_method
from reportgen.compute.cam.normalise import FLAG_REASONS, normalise
from reportgen.compute.cam.scorecam import (
    ScoreCamSettings,
    auto_chunk,
    resolve_precision,
    score_cam,
    strict_fp32,
)
from reportgen.compute.cam.target import SegmentationTarget, logits_of
from reportgen.compute.models.layers import ALIASES, PROBE_SIZE, module_of
from reportgen.compute.models.layers import resolve_layers as resolve_layer_names
from reportgen.errors import LayerError, UserError

log = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass
class CamResult:
    """Maps of one `explain` call, keyed by (layer name, method name); on the CPU, or on
    the engine's device after `explain(..., on_device=True)`.

    maps: [N, H, W] float32 in [0, 1] (0 for all_zero/constant maps, NaN where undefined);
    raw: [N, h, w] maps at layer resolution before the ReLU (adapter methods: input size);
    flags: per image, a list of flag names (see `normalise.FLAG_REASONS`);
    logits: [N, C, H, W] from the single forward pass; regions: [N, H, W] target regions;
    approximate: keys whose maps are approximations (Score-CAM with max_channels), with
    scored_channels: per such key, (channels scored, channels of the layer);
    timings: seconds per stage; events: what the engine adapted (e.g. out-of-memory).
    """

    maps: dict[Key, torch.Tensor] = field(default_factory=dict)
    raw: dict[Key, torch.Tensor] = field(default_factory=dict)
    flags: dict[Key, list[list[str]]] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    regions: torch.Tensor | None = None
    approximate: set[Key] = field(default_factory=set)
    scored_channels: dict[Key, tuple[int, int]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


class _Stopwatch:
    """Seconds per stage; synchronises CUDA so that stages are timed, not queued."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[stage] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> CUDA when available, else CPU. CUDA without a GPU, or a cuda:N the
    machine lacks, is a UserError (for the engine, `runtime.device` and `--device`
    alike), not torch's driver error at the first move."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise UserError(f"device {str(device)!r} is not a torch device ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device is {str(device)!r} but no CUDA device is available "
                        "(use auto or cpu)")
    count = torch.cuda.device_count() if resolved.type == "cuda" else 0
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= count:
        raise UserError(f"device is {str(device)!r} but this machine has {count} CUDA "
                        f"device(s), cuda:0 to cuda:{count - 1}")
    return resolved


def _input_contract(model: nn.Module) -> tuple[int | None, int | None]:
    """(input channels, the stride H and W must be multiples of), where the model says:
    smp models carry both on their encoder; None for what a model does not tell."""
    encoder = getattr(model, "encoder", None)
    channels = getattr(encoder, "_in_channels", None)
    stride = getattr(encoder, "output_stride", None)
    if not getattr(model, "requires_divisible_input_shape", True):
        stride = None
    return (channels if isinstance(channels, int) else None,
            stride if isinstance(stride, int) else None)


def _check_images(images: torch.Tensor, channels: int | None, stride: int | None) -> None:
    """UserError for images the model cannot take, before smp's or torch's own errors
    (which name neither the expected layout nor the stride)."""
    expected = f"[N, {channels or 'C'}, H, W]" + (
        f" with H and W multiples of {stride}" if stride else "")
    shape = tuple(images.shape)
    if images.ndim != 4:
        raise UserError(f"images must be {expected}, got shape {shape}")
    if not images.is_floating_point():
        # a silent cast would explain 0-255 inputs that the model never saw in training
        raise UserError(
            f"images are {images.dtype}, not floating point: convert and normalise them as "
            "in training (e.g. image.float() / 255, then the training mean and std)")
    if channels is not None and shape[1] != channels:
        hint = ""
        if shape[-1] == channels:
            hint = "; channels-last (N, H, W, C) images need images.permute(0, 3, 1, 2)"
        raise UserError(f"images must be {expected} (the model takes {channels} input "
                        f"channel(s)), got shape {shape}{hint}")
    height, width = shape[-2:]
    if stride and (height % stride or width % stride):
        padded = tuple(-(-side // stride) * stride for side in (height, width))
        raise UserError(f"images must be {expected} (the model's output stride), got "
                        f"{height}x{width}; pad or resize them, e.g. to {padded[0]}x{padded[1]}")
    if not len(images):
        raise UserError("no images to explain: the batch is empty")


def _module_paths(
    model: nn.Module, layers: LayerSpec | Sequence[str], input_size: tuple[int, int] | None
) -> LayerSpec:
    """Layer names as a spec takes them: aliases (encoder_last) and the index form
    (encoder._blocks[15]) become dotted module paths through the spec's resolver, which
    also names a mistyped path's closest match; modules and existing module paths are
    taken as they are, so they cost no dry forward. A list of names names itself."""
    if isinstance(layers, str):  # one name, not its characters
        layers = [layers]
    if not isinstance(layers, Mapping):
        layers = {name: name for name in layers}
    modules = {name for name, _ in model.named_modules()}
    names = [layer for layer in layers.values() if isinstance(layer, str) and (
        layer in ALIASES or module_of(layer) not in modules)]
    if not names:
        return layers
    channels = _input_contract(model)[0] or 3
    paths = resolve_layer_names(model, list(dict.fromkeys(names)),
                                input_size or (PROBE_SIZE, PROBE_SIZE), channels)
    return {display: paths.get(layer, layer) if isinstance(layer, str) else layer
            for display, layer in layers.items()}


class CamEngine:
    """Class-activation maps of a segmentation model for several layers and methods.

    The model is moved to `device` and put in eval mode, and stays so (call
    `model.train()` afterwards to go on training it). `layers` maps display names to
    modules or to the layer names a spec takes: aliases (encoder_last, decoder_last...),
    dotted module paths and their index form (`encoder._blocks[15]`); a list of names
    names itself. Aliases are resolved by one dry forward at the images' size
    `input_size` (128 px when None; larger sizes are probed at 128 px, as in a build).
    `precision` sets Score-CAM's autocast
    (CUDA only); `scorecam_max_channels` scores only the channels of highest
    activation variance (approximate); `scorecam_chunk` is the number of masked
    inputs per forward (automatic from free CUDA memory when None);
    `scorecam_compile` runs Score-CAM's forwards through `torch.compile` (with a fixed
    chunk shape, so it compiles once). `channels_last` (default: on CUDA) converts the
    model to the channels-last memory format, which the GPU's convolution kernels run
    fastest in (the model is modified in place, as by the move to `device`).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec | Sequence[str],
        methods: Sequence[str],
        device: str | torch.device = "cpu",
        precision: str = "auto",
        batch_size: int = 8,
        scorecam_max_channels: int | None = None,
        scorecam_chunk: int | None = None,
        scorecam_compile: bool = False,
        channels_last: bool | None = None,
        input_size: tuple[int, int] | None = None,
    ):
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        if scorecam_chunk is not None and scorecam_chunk < 1:
            raise UserError(f"Score-CAM chunk size must be >= 1, got {scorecam_chunk}")
        if not methods:
            raise UserError("no CAM methods given")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        if self.channels_last:
            try:
                self.model.to(memory_format=torch.channels_last)
            except RuntimeError:  # parameters of another rank (e.g. Conv3d): as they are
                self.channels_last = False
        paths = _module_paths(self.model, layers, input_size)
        self.layers = resolve_layers(self.model, paths)
        self.nhwc_layers = channels_last_layers(paths)  # outputs [N, H, W, C]
        self.list_elements = list_elements(paths)  # element i of a module's list output
        self.in_channels, self.stride = _input_contract(self.model)
        self.methods: list[MethodEntry] = [get_method(name) for name in dict.fromkeys(methods)]
        self.autocast_dtype = resolve_precision(precision, self.device)
        # "fp32" asks for float32 arithmetic: no TF32 on CUDA either
        self.strict_fp32 = precision == "fp32" and self.device.type == "cuda"
        self.batch_size = batch_size
        self.scorecam_max_channels = scorecam_max_channels
        self.scorecam_chunk = scorecam_chunk
        self.scorecam_compile = scorecam_compile
        self._scorecam_model = torch.compile(self.model) if scorecam_compile else self.model

    def _family(self, family: str) -> list[MethodEntry]:
        return [entry for entry in self.methods if entry.family == family]

    def explain(
        self,
        images: torch.Tensor,
        target: SegmentationTarget,
        gt_masks: torch.Tensor | None = None,
        on_device: bool = False,
    ) -> CamResult:
        """Maps for `images` [N, C, H, W], streamed in batches of `batch_size`.

        Images are floating point and normalised as in training (a UserError otherwise,
        as for a layout, channel count or size, a multiple of the output stride, that an
        smp model cannot take). The result's tensors are on the host, unless `on_device`:
        then they stay on the engine's device (no copy, for callers that go on computing
        there; the device then holds every image's maps). On a CUDA out-of-memory error
        the batch size halves and the work continues (recorded in `events`); later calls
        start from the halved size.
        """
        _check_images(images, self.in_channels, self.stride)
        result = CamResult()
        clock = _Stopwatch(self.device)
        parts: dict[str, list] = defaultdict(list)
        batch_size, start = self.batch_size, 0
        with clock("total"), strict_fp32(self.strict_fp32):
            while start < len(images):
                stop = min(start + batch_size, len(images))
                masks = None if gt_masks is None else gt_masks[start:stop]
                try:
                    part = self._explain_batch(images[start:stop], masks, target, clock, result,
                                               on_device)
                except torch.OutOfMemoryError as error:
                    if stop - start == 1:
                        raise UserError(
                            "out of memory with a batch of one image; lower the input size, "
                            "use scorecam_max_channels or a lower precision"
                        ) from error
                    part = None
                if part is None:
                    # Outside the except block, so the failed batch's tensors are released.
                    batch_size = self.batch_size = max(1, (stop - start) // 2)
                    message = f"out of memory; batch size halved to {batch_size}"
                    log.warning(message)
                    result.events.append(message)
                    torch.cuda.empty_cache()
                    continue
                for name, value in part.items():
                    parts[name].append(value)
                start = stop
        result.logits = torch.cat(parts.pop("logits"))
        result.regions = torch.cat(parts.pop("regions"))
        for key in parts.pop("keys")[0]:
            result.maps[key] = torch.cat([batch[key] for batch in parts["maps"]])
            result.raw[key] = torch.cat([batch[key] for batch in parts["raw"]])
            result.flags[key] = [row for batch in parts["flags"] for row in batch[key]]
        result.timings = dict(clock.totals)
        return result

    def _explain_batch(
        self,
        images: torch.Tensor,
        gt_masks: torch.Tensor | None,
        target: SegmentationTarget,
        clock: _Stopwatch,
        result: CamResult,
        on_device: bool = False,
    ) -> dict[str, object]:
        gradient_methods = self._family("gradient")
        inputs, logits, activations, regions, gradients = self._forward_backward(
            images, gt_masks, target, clock)
        inputs, logits = inputs.detach(), logits.detach()
        activations = {name: value.detach().float() for name, value in activations.items()}
        empty = ~regions.flatten(1).any(dim=1)

        raw: dict[Key, torch.Tensor] = {}
        with clock("gradient_maps"):
            for layer, layer_activations in activations.items():
                for entry in gradient_methods:
                    raw[layer, entry.name] = entry.compute(layer_activations, gradients[layer])
        gradients.clear()
        if self._family("score"):
            with clock("scorecam"):
                self._score_cam(inputs, activations, target, regions, raw, result)
        if self._family("adapter"):
            with clock("adapter"):
                self._adapter_maps(inputs, target, regions, raw)

        maps, flags = {}, {}
        with clock("normalise"):
            for key, value in raw.items():
                maps[key], flags[key] = normalise(value, tuple(inputs.shape[-2:]), empty)
        out = "cpu" if not on_device else self.device
        with clock("to_cpu"):
            return {
                "keys": list(raw),
                "maps": {key: value.to(out) for key, value in maps.items()},
                "raw": {key: value.float().to(out) for key, value in raw.items()},
                "flags": flags,
                "logits": logits.float().to(out),
                "regions": regions.to(out),
            }

    def _forward_backward(
        self,
        images: torch.Tensor,
        gt_masks: torch.Tensor | None,
        target: SegmentationTarget,
        clock: _Stopwatch,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor,
               dict[str, torch.Tensor]]:
        """One forward (and, for the gradient family, one backward) pass: the inputs on the
        device, the logits, every layer's activations, the target regions and the
        gradients."""
        gradient_methods = self._family("gradient")
        # inference_mode(False) + clone: works when the caller is in no_grad/inference mode.
        with torch.inference_mode(False), torch.set_grad_enabled(bool(gradient_methods)):
            inputs = images.to(self.device, torch.float32).clone()
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            inputs.requires_grad_(bool(gradient_methods))
            recorder = ActivationRecorder(self.model, self.layers, self.nhwc_layers,
                                          self.list_elements)
            with clock("forward"), recorder:
                logits = logits_of(self.model(inputs))
            activations = recorder.check()
            regions = target.regions(logits, gt_masks)
            gradients: dict[str, torch.Tensor] = {}
            if gradient_methods:
                with clock("backward"):
                    score = target.scores(logits, regions).sum()
                    values = torch.autograd.grad(
                        score, list(activations.values()), allow_unused=True
                    )
                for name, value in zip(activations, values, strict=True):
                    if value is None:
                        raise LayerError(f"layer '{name}' does not influence the model output")
                    gradients[name] = value.float()
        return inputs, logits, activations, regions, gradients

    def _adapter_maps(self, inputs: torch.Tensor, target: SegmentationTarget,
                      regions: torch.Tensor, raw: dict[Key, torch.Tensor]) -> None:
        """The pytorch-grad-cam methods' maps of every layer, added to `raw`."""
        for entry in self._family("adapter"):
            for layer, module in self.layers.items():
                if layer in self.list_elements:
                    raise UserError(
                        f"method '{entry.name}' (pytorch-grad-cam) explains a module's "
                        f"output; layer '{layer}' is an element of a list output: use a "
                        "gradient method or Score-CAM there")
                raw[layer, entry.name] = adapter_maps(
                    entry, self.model, module, inputs, target, regions,
                    channels_last=layer in self.nhwc_layers)

    def _score_cam(
        self,
        inputs: torch.Tensor,
        activations: dict[str, torch.Tensor],
        target: SegmentationTarget,
        regions: torch.Tensor,
        raw: dict[Key, torch.Tensor],
        result: CamResult,
    ) -> None:
        if self.scorecam_chunk is None:
            # probed eagerly: a compiled probe would compile for the probe's shape
            self.scorecam_chunk = auto_chunk(self.model, inputs[0], self.autocast_dtype)
            if self.scorecam_compile:
                # every forward is padded to the chunk: no larger than a batch's masked
                # inputs at its widest layer
                widest = max(value.shape[1] for value in activations.values())
                if self.scorecam_max_channels is not None:
                    widest = min(widest, self.scorecam_max_channels)
                self.scorecam_chunk = min(self.scorecam_chunk, self.batch_size * widest)
        for layer, layer_activations in activations.items():
            raw[layer, "scorecam"], self.scorecam_chunk = score_cam(
                self._scorecam_model,
                inputs,
                layer_activations,
                target,
                regions,
                chunk=self.scorecam_chunk,
                settings=ScoreCamSettings(max_channels=self.scorecam_max_channels,
                                          autocast_dtype=self.autocast_dtype,
                                          static_shapes=self.scorecam_compile,
                                          channels_last=self.channels_last),
                events=result.events,
            )
            max_channels = self.scorecam_max_channels
            if max_channels is not None and max_channels < layer_activations.shape[1]:
                result.approximate.add((layer, "scorecam"))
                result.scored_channels[layer, "scorecam"] = (max_channels,
                                                             layer_activations.shape[1])


def compute_cam(
    model: nn.Module,
    input_tensor: torch.Tensor,
    layer: str | nn.Module,
    method: str,
    target: SegmentationTarget | None = None,
    device: str | torch.device | None = None,
    gt_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The normalised map [H, W] of one image ([C, H, W] or [1, C, H, W]) for one layer
    and one method.

    `layer` is a module or any layer name a spec takes: an alias (encoder_last), a dotted
    module path or its index form (`encoder._blocks[15]`); aliases are resolved at the
    image's size. The target defaults to class 0 over the predicted region;
    `SegmentationTarget(region="ground_truth")` needs `gt_mask` ([H, W] or [1, H, W]).
    The model runs on `device` (default: where its parameters are; it stays there) in
    eval mode, and gets its train/eval modes back afterwards.
    """
    if input_tensor.ndim == 3:
        input_tensor = input_tensor[None]
    if input_tensor.ndim != 4 or len(input_tensor) != 1:
        raise UserError(f"compute_cam takes one image, got shape {tuple(input_tensor.shape)}")
    # before the alias resolver's dry forward, which would fail less clearly
    _check_images(input_tensor, *_input_contract(model))
    if gt_mask is not None and gt_mask.ndim == 2:
        gt_mask = gt_mask[None]
    if device is None:
        device = next(model.parameters()).device
    modes = [(module, module.training) for module in model.modules()]
    try:
        # channels_last off: a one-call helper should not reformat the caller's model
        engine = CamEngine(model, {"layer": layer}, [method], device=device, batch_size=1,
                           channels_last=False, input_size=tuple(input_tensor.shape[-2:]))
        result = engine.explain(input_tensor, target or SegmentationTarget(), gt_mask)
    finally:
        for module, training in modes:
            module.training = training
    return result.maps["layer", method][0]


# check-row flags beside normalise's: what the build's Score-CAM options do to a cell
APPROXIMATE, SKIPPED = "approximate", "skipped"


@dataclass
class CheckRow:
    """One layer x method of `reportgen check`.

    flags: the map's flags (see `normalise.FLAG_REASONS`), plus "approximate" for a
    Score-CAM map from the highest-variance channels only and "skipped" for a Score-CAM
    cell outside the Score-CAM layers, which is not run (ok, no map).
    scored_channels: of an approximate map, (channels scored, channels of the layer).
    """

    layer: str
    method: str
    ok: bool
    reason: str
    seconds: float
    map_min: float | None
    map_max: float | None
    flags: list[str]
    scored_channels: tuple[int, int] | None = None

    @property
    def approximate(self) -> bool:
        return APPROXIMATE in self.flags

    @property
    def skipped(self) -> bool:
        return SKIPPED in self.flags


@dataclass(frozen=True)
class CheckOptions:
    """The engine options of a build, so that `check_methods` computes each cell's map as
    the build will: `precision` for every method; for Score-CAM `scorecam_max_channels`
    (rows flagged "approximate" where it leaves channels out), `scorecam_chunk` and
    `scorecam_layers`, the display names of the layers Score-CAM runs at (None: all; the
    other cells are rows flagged "skipped")."""

    precision: str = "auto"
    scorecam_max_channels: int | None = None
    scorecam_chunk: int | None = None
    scorecam_layers: Collection[str] | None = None


def check_methods(
    model: nn.Module,
    layers: LayerSpec,
    methods: Sequence[str],
    image: torch.Tensor,
    target: SegmentationTarget,
    device: str | torch.device = "cpu",
    gt_mask: torch.Tensor | None = None,
    options: CheckOptions = CheckOptions(),
) -> list[CheckRow]:
    """Run every layer x method on one image [C, H, W]; one row each, failures included.

    Each cell runs alone, in an engine of its own, so that a failure names its layer and
    method; a row's `seconds` are that cell's alone. A build shares one forward and one
    backward per batch between every gradient method and layer, so the rows' sum
    overstates what the build will take. `options` are the build's engine options.
    """
    rows = []
    masks = None if gt_mask is None else gt_mask[None]
    for layer_name, layer in layers.items():
        for method in methods:
            if method == "scorecam" and options.scorecam_layers is not None and (
                    layer_name not in options.scorecam_layers):
                rows.append(CheckRow(layer_name, method, True,
                                     "skipped (not in method_options.scorecam.layers)", 0.0,
                                     None, None, [SKIPPED]))
                continue
            engine_of_cell = functools.partial(
                CamEngine, model, {layer_name: layer}, [method], device=device,
                precision=options.precision,
                scorecam_max_channels=options.scorecam_max_channels,
                scorecam_chunk=options.scorecam_chunk)
            rows.append(_check_cell(engine_of_cell, layer_name, method, image[None], target,
                                    masks))
    return rows


def _check_cell(engine_of_cell: Callable[[], CamEngine], layer_name: str, method: str,
                images: torch.Tensor, target: SegmentationTarget,
                masks: torch.Tensor | None) -> CheckRow:
    """The row of one layer x method of `check_methods`, computed by a fresh engine."""
    start = time.perf_counter()
    # A check reports as a row what a layer x method cannot do: a user error (layer,
    # target, adapter) or torch refusing the computation; a bug of ours still raises.
    try:
        result = engine_of_cell().explain(images, target, masks)
    except (UserError, RuntimeError) as error:
        seconds = time.perf_counter() - start
        reason = f"{type(error).__name__}: {error}"
        return CheckRow(layer_name, method, False, reason, seconds, None, None, [])
    seconds = time.perf_counter() - start
    values = result.maps[layer_name, method][0]
    flags = list(result.flags[layer_name, method][0])
    finite = values[torch.isfinite(values)]
    low = finite.min().item() if finite.numel() else None
    high = finite.max().item() if finite.numel() else None
    reason = "; ".join(FLAG_REASONS[flag] for flag in flags)
    scored = result.scored_channels.get((layer_name, method))
    if scored is not None:
        flags.append(APPROXIMATE)
    return CheckRow(layer_name, method, True, reason, seconds, low, high, flags, scored)
