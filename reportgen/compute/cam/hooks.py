"""Layer resolution and activation recording that tells the truth.

A forward hook sees a module's output before later modules run. If a later module
modifies that tensor in place (BatchNorm followed by `ReLU(inplace=True)`), a
recorder that keeps a reference records the modified tensor, not the module's
output. The recorder therefore keeps the module's output and hands a clone to the
rest of the network: in-place changes hit the clone, and gradients taken with
respect to the recorded tensor are d score / d (module output). A version-counter
check catches the remaining case, an output aliased elsewhere (e.g. `nn.Identity`)
and modified through the alias.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

from reportgen.compute.models.layers import element_of, module_of, split_element, split_layout
from reportgen.errors import LayerError

LayerSpec = Mapping[str, str | nn.Module]


def resolve_layers(model: nn.Module, layers: LayerSpec) -> dict[str, nn.Module]:
    """Map display names to modules; dotted paths (`decoder.blocks.x_0_4`,
    `encoder._blocks.15`, `encoder.model.layers_0:nhwc`) resolve with
    `model.get_submodule`."""
    if not layers:
        raise LayerError("no layers given")
    resolved: dict[str, nn.Module] = {}
    names = {id(module): name for name, module in model.named_modules()}
    for display_name, layer in layers.items():
        if isinstance(layer, nn.Module):
            if id(layer) not in names:
                raise LayerError(f"layer '{display_name}' is not a module of the model")
            resolved[display_name] = layer
            continue
        try:  # names were checked (with a did-you-mean) by the spec's resolver
            resolved[display_name] = model.get_submodule(module_of(layer))
        except AttributeError:
            raise LayerError(f"layer '{display_name}': the model has no module '{layer}'") from None
    return resolved


def channels_last_layers(layers: LayerSpec) -> set[str]:
    """The display names whose path ends in `:nhwc` (a channels-last output)."""
    return {name for name, layer in layers.items()
            if isinstance(layer, str) and split_layout(layer)[1]}


def list_elements(layers: LayerSpec) -> dict[str, int]:
    """Display name -> i for the paths ending in `@i` (element i of a module's list)."""
    found = {}
    for name, layer in layers.items():
        if isinstance(layer, str):
            element = split_element(split_layout(layer)[0])[1]
            if element is not None:
                found[name] = element
    return found


def module_path(model: nn.Module, module: nn.Module) -> str:
    """The dotted path of `module` inside `model`, for messages."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name or "<model>"
    return type(module).__name__


class ActivationRecorder:
    """Records the output of each layer during one forward pass.

    Use as a context manager around the forward pass, then `check()` that every
    layer ran once and that no recorded output was modified in place.
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, nn.Module],
                 channels_last: Collection[str] = (),
                 elements: Mapping[str, int] | None = None):
        self.model = model
        self.layers = dict(layers)
        # layers whose output is [N, H, W, C]: recorded as [N, C, H, W], the map's layout
        self.channels_last = set(channels_last)
        # layers that are element i of their module's list output (encoder@2)
        self.elements = dict(elements or {})
        self.activations: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        self._calls: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: object, output: object) -> object:
            if name in self.elements:
                return self._record_element(name, module, output)
            if not isinstance(output, torch.Tensor):
                raise LayerError(
                    f"layer '{name}' ({module_path(self.model, module)}) returns "
                    f"{type(output).__name__}, not a tensor; pick a module that outputs a "
                    "feature map"
                )
            self._calls[name] = self._calls.get(name, 0) + 1
            if name in self.channels_last and output.dim() == 4:
                # the network goes on from a copy of this view, so gradients reach it
                recorded = output.permute(0, 3, 1, 2)
                self.activations[name] = recorded
                self._versions[name] = recorded._version
                return recorded.permute(0, 2, 3, 1).clone()
            self.activations[name] = output
            self._versions[name] = output._version
            return output.clone()

        return record

    def _record_element(self, name: str, module: nn.Module, output: object) -> object:
        """Record element i of a list output; the network goes on from a copy of the
        list holding a clone of it (in place of the recorded tensor)."""
        index = self.elements[name]
        element = element_of(output, index)
        if not isinstance(element, torch.Tensor):
            raise LayerError(
                f"layer '{name}' ({module_path(self.model, module)}) has no tensor at "
                f"element {index} of its output ({type(output).__name__})")
        self._calls[name] = self._calls.get(name, 0) + 1
        self.activations[name] = element
        self._versions[name] = element._version
        nested = isinstance(output, tuple) and isinstance(output[0], list | tuple)
        listed = list(output[0] if nested else output)
        listed[index] = element.clone()
        listed = type(output[0] if nested else output)(listed)
        return (listed, *output[1:]) if nested else listed

    def __enter__(self) -> ActivationRecorder:
        self.activations.clear()
        self._versions.clear()
        self._calls.clear()
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def check(self) -> dict[str, torch.Tensor]:
        """The recorded activations; LayerError for a layer that did not run exactly once,
        produced no 4-D map, or whose output was modified in place after recording."""
        for name, module in self.layers.items():
            path = module_path(self.model, module)
            calls = self._calls.get(name, 0)
            if calls == 0:
                raise LayerError(
                    f"layer '{name}' ({path}, {type(module).__name__}) never runs in the "
                    f"forward pass of {type(self.model).__name__}; pick a module that is used"
                )
            if calls > 1:
                raise LayerError(
                    f"layer '{name}' ({path}) runs {calls} times in one forward pass; "
                    "its activation is ambiguous"
                )
            activation = self.activations[name]
            if activation.ndim != 4:
                raise LayerError(
                    f"layer '{name}' ({path}) outputs shape {tuple(activation.shape)}; "
                    "CAM needs a [N, K, h, w] feature map"
                )
            if activation._version != self._versions[name]:
                raise LayerError(
                    f"layer '{name}' ({path}): its output is modified in place later in the "
                    "forward pass through another reference; pick the module that follows"
                )
        return dict(self.activations)
