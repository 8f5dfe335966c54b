"""Layer aliases: the same five names on every smp architecture and encoder.

Aliases are resolved by watching one small dry forward pass rather than by
per-encoder tables: smp encoders all return a list of feature maps (index i at
nominal stride 2**i), so the module that *produced* each returned tensor is the
stage to explain. Each alias is one entry in `ALIASES` with its own resolver.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from reportgen.errors import LayerError

# Modules that hand their input through unchanged; never the answer for an alias.
PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d)
PROBE_SIZE = 128
NHWC = ":nhwc"  # path suffix of a module whose output is channels-last (see split_layout)
ELEMENT = "@"  # `encoder@2`: element 2 of the list a module returns (see split_element)


@dataclass
class Trace:
    """What a dry forward saw: every module's output (kept alive) in execution order."""

    outputs: dict[str, object]
    order: list[str]
    encoder_features: list[torch.Tensor]
    decoder_output: object


@dataclass(frozen=True)
class LayerInfo:
    name: str  # alias or the dotted path the user gave
    path: str  # dotted module path
    channels: int | None
    stride: float | None
    shape: tuple[int, ...] | None
    calls: int = 1  # times the module runs in one forward: more than once cannot be hooked


def _trace(model: nn.Module, size: tuple[int, int], in_channels: int) -> Trace:
    outputs: dict[str, object] = {}
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        name = names[module]
        outputs[name] = output
        order.append(name)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        _dry_forward(model, size, in_channels)
    finally:
        for h in handles:
            h.remove()
    features = outputs.get("encoder")
    # DPT-style encoders return (features, prefix tokens)
    if isinstance(features, tuple) and features and isinstance(features[0], list | tuple):
        features = features[0]
    if not isinstance(features, list | tuple):
        features = []
    features = [f for f in features if isinstance(f, torch.Tensor) and f.dim() == 4]
    if features and tuple(features[0].shape[-2:]) != tuple(size):
        # smp lists start with the input itself (index i = stride 2**i); other encoders
        # list only their stages, so put the input in front to keep that meaning.
        features = [torch.zeros(1, 1, *size)] + features
    return Trace(outputs, order, features, outputs.get("decoder"))


def _dry_forward(model: nn.Module, size: tuple[int, int], in_channels: int) -> None:
    """One forward of a fixed noise image in eval mode (a training model's BatchNorm
    statistics must not take it in); the modules' train/eval modes are restored afterwards.
    Noise, not zeros: on random weights a zero image makes many outputs equal (all zero),
    and `_copied_from` tells features apart by their values."""
    device = next(model.parameters()).device
    noise = torch.randn(1, in_channels, *size, generator=torch.Generator().manual_seed(0))
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(noise.to(device))
    # model code says "wrong size" as it likes: timm's fixed-size encoders assert
    except (RuntimeError, AssertionError, ValueError, IndexError, MemoryError) as exc:
        raise _dry_forward_error(model, size, device, exc) from exc
    finally:
        for module, training in modes:
            module.training = training


def _dry_forward_error(model: nn.Module, size: tuple[int, int], device: torch.device,
                       exc: BaseException) -> LayerError:
    """Say which way the input size is wrong: out of memory, one image was too large;
    anything else, most often, too small for the architecture's downsampling."""
    first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
    where = f"a dry forward of {type(model).__name__} at {size[0]}x{size[1]}"
    if not _out_of_memory(exc):
        return LayerError(f"{where} failed (is the input size large enough for this "
                          f"architecture?): {first_line}")
    device_hint = "" if device.type == "cpu" else ", or set runtime.device: cpu"
    return LayerError(
        f"{where} (a batch of 1 image) ran out of memory on {device}: the input is too large "
        f"for this device. Lower model.input_size{device_hint}; a lower runtime.batch_size "
        f"cannot help, this forward holds one image already ({first_line})")


def _out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory type (CUDA, XPU) or Python's; the CPU and MPS allocators raise
    a plain RuntimeError that says it could not allocate."""
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or (
        isinstance(exc, RuntimeError) and re.search(
            r"out of memory|can't allocate memory|could not allocate|failed to allocate",
            str(exc), re.IGNORECASE) is not None)


def _outermost_last(names: list[str]) -> str | None:
    """Of modules that return the same feature, the outermost; of those, the last to run:
    a `ReLU(inplace=True)` after a convolution returns the convolution's output tensor,
    modified, and the modified tensor is the feature the rest of the model sees."""
    if not names:
        return None
    depth = min(n.count(".") for n in names)
    return [n for n in names if n.count(".") == depth][-1]


def _meaningful_producer(model: nn.Module, trace: Trace, tensor: object, within: str) -> str | None:
    """The module under `within` (not `within` itself) whose output is `tensor`, looking
    through Identity/Dropout (in eval mode they return their input tensor itself)."""
    return _outermost_last([
        n for n in trace.order
        if n.startswith(within + ".") and trace.outputs[n] is tensor
        and not isinstance(model.get_submodule(n), PASSTHROUGH)
    ])


def _copied_from(model: nn.Module, trace: Trace, tensor: torch.Tensor, within: str) -> str | None:
    """The module under `within` whose output `tensor` is a copy of (same values), as is
    or from channels-last [N, H, W, C] (then the path ends in `NHWC`). MiT encoders
    return `norm(x).contiguous()`; timm's channels-last encoders (Swin, MambaOut) have
    their stages' [N, H, W, C] outputs permuted to [N, C, H, W] by smp. The module's
    output is what the network computes on (the next stage reads it too), so it is the
    layer to explain; the copy in the encoder's list reaches only the decoder."""

    def copies(output: object, nhwc: bool) -> bool:
        if not isinstance(output, torch.Tensor) or output.dtype != tensor.dtype:
            return False
        if nhwc:
            output = output.permute(0, 3, 1, 2) if output.dim() == 4 else output
        return output.shape == tensor.shape and torch.equal(output, tensor)

    for nhwc in (False, True):
        found = _outermost_last([
            n for n in trace.order
            if n.startswith(within + ".") and not isinstance(model.get_submodule(n), PASSTHROUGH)
            and copies(trace.outputs[n], nhwc)
        ])
        if found is not None:
            return found + NHWC if nhwc else found
    return None


def split_layout(path: str) -> tuple[str, bool]:
    """A layer path without its `NHWC` suffix, and whether it had one: the module's
    output is channels-last [N, H, W, C] and is explained as [N, C, H, W]."""
    if path.endswith(NHWC):
        return path[: -len(NHWC)], True
    return path, False


def split_element(path: str) -> tuple[str, int | None]:
    """A layer path without its `@i` suffix, and i: the layer is element i of the list
    the module returns (smp encoders return their features as a list; DPN builds some
    of them outside any module, so only the list holds them)."""
    module, sep, index = path.rpartition(ELEMENT)
    if not sep:
        return path, None
    if not (index.isascii() and index.isdecimal()):
        raise LayerError(f"layer {path!r}: the element after {ELEMENT!r} must be a number "
                         f"0, 1, 2... (the position in the module's output list)")
    return module, int(index)


def module_of(path: str) -> str:
    """The dotted module path of a layer path (its `:nhwc` and `@i` suffixes dropped)."""
    return split_element(split_layout(path)[0])[0]


def element_of(output: object, index: int | slice) -> object:
    """Element `index` of a module's list output (None if it has none); DPT-style
    encoders return (features, prefix tokens), whose features are meant."""
    if isinstance(output, tuple) and output and isinstance(output[0], list | tuple):
        output = output[0]
    if not isinstance(output, list | tuple):
        return None
    if isinstance(index, slice):
        return list(output[index])
    return output[index] if 0 <= index < len(output) else None


def _last_executed(trace: Trace, within: str, count: int = 5) -> list[str]:
    names = [n for n in trace.order if n.startswith(within + ".")]
    return names[-count:]


def _by_stride(feats: list[torch.Tensor], index: int) -> int | None:
    """Feature `index` when its measured stride is the nominal 2**index, else the first
    feature at that stride; `index` when the encoder is dilated (DeepLabV3's stay at stride
    8: the stage counts); None when the encoder skips that stride (DPT's CNN encoders)."""
    height = feats[0].shape[-2]
    strides = [height / f.shape[-2] for f in feats]
    if strides[index] <= 2 ** index:
        return index
    return next((i for i, s in enumerate(strides) if s == 2 ** index), None)


def _stage_at_stride(model: nn.Module, trace: Trace, stride: int) -> str | None:
    """The outermost encoder module run last whose 4-D output has `stride`."""
    height = trace.encoder_features[0].shape[-2]
    return _outermost_last([
        n for n in dict.fromkeys(trace.order)
        if n.startswith("encoder.") and not isinstance(model.get_submodule(n), PASSTHROUGH)
        and isinstance(output := trace.outputs[n], torch.Tensor) and output.dim() == 4
        and height / output.shape[-2] == stride
    ])


def _encoder_feature(index: int | None, label: str):
    """Resolver for encoder feature `index` (nominal stride 2**index); None = the deepest."""

    def resolve(model: nn.Module, trace: Trace) -> str:
        feats = trace.encoder_features
        if len(feats) < 2:
            raise LayerError(
                f"{label}: the encoder returned no feature list; give a module path instead "
                f"(last encoder modules run: {', '.join(_last_executed(trace, 'encoder'))})"
            )
        if index is not None and index >= len(feats):
            raise LayerError(
                f"{label} has no sensible meaning for {type(model).__name__}: its encoder stops "
                f"at feature {len(feats) - 1} (depth {len(feats) - 1}), so there is no stride-"
                f"{2 ** index} stage. Use encoder_last or a module path, e.g. one of: "
                + ", ".join(_last_executed(trace, "encoder"))
            )
        wanted = len(feats) - 1 if index is None else _by_stride(feats, index)
        if wanted is None:  # the encoder returns no feature at this stride
            name = _stage_at_stride(model, trace, 2 ** index)
            if name is None:
                raise LayerError(
                    f"{label} has no sensible meaning for {type(model).__name__}: its encoder "
                    f"has no stride-{2 ** index} stage; give a module path instead"
                )
            return name
        name = (_meaningful_producer(model, trace, feats[wanted], "encoder")
                or _copied_from(model, trace, feats[wanted], "encoder"))
        if name is None:
            # built outside any module (DPN joins a block's two outputs): the encoder's
            # own list holds it
            listed = element_of(trace.outputs.get("encoder"), slice(None)) or []
            position = next((i for i, t in enumerate(listed) if t is feats[wanted]), None)
            if position is None:
                raise LayerError(f"{label}: no module of the encoder gives feature {wanted}; "
                                 "give a module path instead")
            name = f"encoder{ELEMENT}{position}"
        return name

    return resolve


def _decoder_last(model: nn.Module, trace: Trace) -> str:
    out = trace.decoder_output
    name = None
    if isinstance(out, torch.Tensor):
        name = _meaningful_producer(model, trace, out, "decoder")
    if name is None:
        raise LayerError(
            f"decoder_last has no sensible meaning for {type(model).__name__}: its decoder's "
            "output is not produced by one module. Give a module path instead, e.g. one of: "
            + ", ".join(_last_executed(trace, "decoder"))
        )
    return name


def _seg_head(model: nn.Module, trace: Trace) -> str:
    head = getattr(model, "segmentation_head", None)
    if head is not None:
        convs = [n for n, m in head.named_modules() if isinstance(m, nn.Conv2d)]
        if convs:  # the last convolution is the one that outputs the class logits
            return f"segmentation_head.{convs[-1]}" if convs[-1] else "segmentation_head"
    raise LayerError(
        f"seg_head: {type(model).__name__} has no convolution in `segmentation_head`; give a "
        "module path instead, e.g. one of: " + ", ".join(_last_executed(trace, "", 5))
    )


@dataclass(frozen=True)
class Alias:
    name: str
    meaning: str
    resolve: Callable[[nn.Module, Trace], str]


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias("encoder_early", "early encoder stage, stride 4 (edges, basic shapes)",
              _encoder_feature(2, "encoder_early")),
        Alias("encoder_mid", "middle encoder stage, stride 16 (parts, textures)",
              _encoder_feature(4, "encoder_mid")),
        Alias("encoder_last", "deepest encoder features, stride 32 (semantics, coarse)",
              _encoder_feature(None, "encoder_last")),
        Alias("decoder_last", "final decoder block (fine, near full resolution)", _decoder_last),
        Alias("seg_head", "segmentation head convolution (the logits)", _seg_head),
    )
}


def _probe_size(input_size: tuple[int, int]) -> tuple[int, int]:
    return (min(input_size[0], PROBE_SIZE), min(input_size[1], PROBE_SIZE))


def _probe(model: nn.Module, input_size: tuple[int, int], in_channels: int) -> Trace:
    """Trace at a small size (cheap); models with a fixed input size get theirs."""
    try:
        return _trace(model, _probe_size(input_size), in_channels)
    except LayerError:
        if _probe_size(input_size) == tuple(input_size):
            raise
        return _trace(model, input_size, in_channels)


def _children(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_children()]


def _list_children(names: list[str]) -> str:
    """Children for a message; a numbered container's as a range (EfficientNet has 39 blocks)."""
    if not names:
        return "none (a leaf module)"
    if all(n.isdigit() for n in names):
        numbers = sorted(int(n) for n in names)
        return f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0])
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")


def _walk(model: nn.Module, parts: list[str], fuzzy: bool) -> tuple[list[str], nn.Module]:
    """Follow `parts` from the model as far as they exist (with `fuzzy`, via close names)."""
    walked: list[str] = []
    module = model
    for part in parts:
        children = dict(module.named_children())
        if part not in children and fuzzy:
            # 0.7, not difflib's 0.6: at 0.6 'x_9_9' would "mean" the unrelated 'x_0_0'
            close = difflib.get_close_matches(part, list(children), n=1, cutoff=0.7)
            part = close[0] if close else part
        if part not in children:
            break
        walked.append(part)
        module = children[part]
    return walked, module


def _check_path(model: nn.Module, path: str) -> None:
    """Raise naming the deepest prefix of `path` that exists, its children and a close path."""
    parts = path.split(".")
    found, parent = _walk(model, parts, fuzzy=False)
    if len(found) == len(parts):
        return
    prefix = ".".join(found)
    where = repr(prefix) if prefix else "the model"
    missing = parts[len(found)]
    corrected, closest = _walk(model, parts, fuzzy=True)
    if len(corrected) == len(parts):
        hint = f" Did you mean {'.'.join(corrected)!r}?"
    elif len(corrected) > len(found):  # the name was close but an index is out of range
        hint = (f" Did you mean {'.'.join(corrected)!r} (children "
                f"{_list_children(_children(closest))})?")
    else:
        hint = ""
    raise LayerError(
        f"layer {path!r}: no such module in {type(model).__name__}: {where} has no child "
        f"{missing!r} (children of {where}: {_list_children(_children(parent))}).{hint} "
        f"Aliases: {', '.join(ALIASES)}; `reportgen layers --spec SPEC --all` lists every path."
    )


def resolve_layers(
    model: nn.Module,
    layers: list[str],
    input_size: tuple[int, int],
    in_channels: int = 3,
) -> dict[str, str]:
    """Map each requested alias or dotted path to a dotted module path.

    Paths may use `[i]` or `.i` for indices (`encoder._blocks[38]`), and end in `:nhwc`
    for a module whose output is channels-last (aliases add it themselves). A module
    that does not run in the forward pass is an error naming it.
    """
    trace: Trace | None = None
    resolved: dict[str, str] = {}
    for layer in layers:
        if layer in ALIASES:
            if trace is None:
                trace = _probe(model, input_size, in_channels)
            resolved[layer] = ALIASES[layer].resolve(model, trace)
        else:
            path, nhwc = split_layout(layer)
            path, element = split_element(path)
            if nhwc and element is not None:
                raise LayerError(f"layer {layer!r}: a path takes {ELEMENT}i or {NHWC}, not "
                                 "both (smp's lists hold [N, C, H, W] features)")
            path = path.replace("[", ".").replace("]", "").replace('"', "").replace("'", "")
            _check_path(model, path)
            resolved[layer] = (path + (f"{ELEMENT}{element}" if element is not None else "")
                               + (NHWC if nhwc else ""))
    if trace is None:
        trace = _probe(model, input_size, in_channels)
    unused = [(n, p) for n, p in resolved.items() if module_of(p) not in trace.outputs]
    if unused:
        name, path = unused[0]
        raise LayerError(
            f"layer {name!r} ({path}) never runs in {type(model).__name__}'s forward pass, so "
            "it has no activations to explain (smp's EfficientNet keeps an unused `_conv_head`, "
            "for example); choose another layer"
        )
    for name, path in resolved.items():
        _check_output(name, path, trace.outputs[module_of(path)])
    return resolved


def _check_output(name: str, path: str, output: object) -> None:
    """A `@i` layer must name a 4-D tensor of its module's list, a `:nhwc` one a module
    with a 4-D output (anything else would be explained in the wrong layout)."""
    element = split_element(split_layout(path)[0])[1]
    if element is not None:
        found = element_of(output, element)
        if not (isinstance(found, torch.Tensor) and found.dim() == 4):
            listed = element_of(output, slice(None))
            size = f"a list of {len(listed)}" if listed is not None else type(output).__name__
            raise LayerError(f"layer {name!r} ({path}): its module returns {size}, with no "
                             f"feature map at element {element}")
    elif split_layout(path)[1] and not (isinstance(output, torch.Tensor) and output.dim() == 4):
        raise LayerError(f"layer {name!r} ({path}): {NHWC} needs a module with a 4-D output")


def describe_layers(
    model: nn.Module,
    resolved: dict[str, str],
    input_size: tuple[int, int],
    in_channels: int = 3,
) -> list[LayerInfo]:
    """Channels and output stride of each layer, measured by a dry forward at `input_size`."""
    shapes: dict[str, tuple[int, ...]] = {}
    wanted = set(resolved.values())

    def hook_for(path: str):
        element = split_element(split_layout(path)[0])[1]

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if element is not None:
                output = element_of(output, element)
            if isinstance(output, torch.Tensor):
                shapes[path] = tuple(output.shape)

        return hook

    handles = [model.get_submodule(module_of(p)).register_forward_hook(hook_for(p))
               for p in wanted]
    try:
        _dry_forward(model, input_size, in_channels)
    finally:
        for h in handles:
            h.remove()
    infos = []
    for name, path in resolved.items():
        shape = shapes.get(path)
        if shape and len(shape) == 4 and split_layout(path)[1]:  # [N, H, W, C] as explained
            shape = (shape[0], shape[3], shape[1], shape[2])
        channels = shape[1] if shape and len(shape) == 4 else None
        stride = input_size[0] / shape[2] if shape and len(shape) == 4 else None
        infos.append(LayerInfo(name, path, channels, stride, shape))
    return infos


def all_module_shapes(
    model: nn.Module, input_size: tuple[int, int], in_channels: int = 3
) -> list[LayerInfo]:
    """Every module that outputs a 4-D tensor, in execution order (for `layers --all`)."""
    trace = _trace(model, input_size, in_channels)
    calls = Counter(trace.order)
    infos = []
    for name in calls:  # in the order of their first call
        out = trace.outputs[name]  # the last call's
        if name and isinstance(out, torch.Tensor) and out.dim() == 4:
            infos.append(LayerInfo(name, name, out.shape[1], input_size[0] / out.shape[2],
                                   tuple(out.shape), calls[name]))
    return infos
