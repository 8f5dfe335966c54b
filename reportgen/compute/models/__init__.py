"""Model stage: build any smp architecture, load checkpoints, resolve layers."""

from reportgen.compute.models.build import ARCHITECTURES, build_model, encoder_names
from reportgen.compute.models.checkpoints import load_checkpoint
from reportgen.compute.models.layers import ALIASES, LayerInfo, describe_layers, resolve_layers

__all__ = [
    "ALIASES",
    "ARCHITECTURES",
    "LayerInfo",
    "build_model",
    "describe_layers",
    "encoder_names",
    "load_checkpoint",
    "resolve_layers",
]
