"""Build segmentation_models_pytorch models from a spec, never downloading weights."""

from __future__ import annotations

import difflib
import logging
from typing import Any

import segmentation_models_pytorch as smp
import torch.nn as nn

from reportgen.errors import UserError

log = logging.getLogger(__name__)

# smp's own registry (lower-case name -> class), keyed by the class names a spec writes
ARCHITECTURES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()
}


def encoder_names() -> list[str]:
    """smp's own encoder names; any `tu-<timm model>` name is accepted as well."""
    return list(smp.encoders.get_encoder_names())


def check_encoder_name(encoder: str) -> str | None:
    """Return None when smp (or timm, for `tu-` names) knows `encoder`, otherwise a message
    with a hint. Names that point at a model source rather than an architecture
    (`hf-hub:...`, `local-dir:...`) are refused: timm would fetch their config from the
    network even without weights."""
    if ":" in encoder:
        source = encoder.removeprefix("tu-").split(":", 1)[0]
        return (f"encoder {encoder!r} names where to fetch a model ({source}:), not an "
                "architecture; timm would read its config from there (over the network for "
                "hf-hub:), and reportgen never downloads. Name the architecture instead "
                "(e.g. 'tu-resnet18' for 'hf-hub:timm/resnet18.a1_in1k') and give its "
                "weights in model.checkpoint")
    if encoder.startswith("tu-"):
        return _check_timm_name(encoder)
    names = encoder_names()
    if encoder in names:
        return None
    close = difflib.get_close_matches(encoder, names, n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(close)}?" if close else
            f"no name close to it among smp's {len(names)} encoders, e.g. resnet34, "
            "efficientnet-b0")
    return f"unknown encoder {encoder!r} ({hint}; timm encoders are written 'tu-<name>')"


def _check_timm_name(encoder: str) -> str | None:
    import timm

    name = encoder.removeprefix("tu-")
    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name.split(".", 1)[0], timm.list_models(), n=3,
                                      cutoff=0.6)
    hint = f"did you mean {', '.join('tu-' + c for c in close)}?" if close else \
        "no timm model has a name close to it"
    return f"unknown timm encoder {encoder!r} ({hint})"


def build_model(
    architecture: str,
    encoder: str,
    classes: int = 1,
    in_channels: int = 3,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Create an smp model with random weights (`encoder_weights=None`).

    Weights come from the checkpoint afterwards; a download is never attempted.
    """
    if architecture not in ARCHITECTURES:
        close = difflib.get_close_matches(architecture, list(ARCHITECTURES), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(
            f"unknown architecture {architecture!r}: {hint}valid: {', '.join(ARCHITECTURES)}"
        )
    message = check_encoder_name(encoder)
    if message:
        raise UserError(message)
    kwargs = dict(options or {})
    kwargs.update(encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                  classes=classes)
    try:
        model = ARCHITECTURES[architecture](**kwargs)
    except (ValueError, KeyError, TypeError, AssertionError, RuntimeError) as exc:
        raise UserError(
            f"smp cannot build {architecture} with encoder {encoder!r}: {exc}"
        ) from exc
    model.eval()
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
