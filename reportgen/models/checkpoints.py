"""Checkpoint loading: every common on-disk shape, never executing untrusted code.

Formats are a registry (`FORMATS`): each entry says whether it recognises a path
and how to read it into a flat ``{key: tensor}`` state dict. Pickled files are
read with ``torch.load(weights_only=True)``; a pickled whole model is accepted
only when the spec says ``model.trust_pickle: true``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from reportgen.errors import CheckpointError

# Keys under which training scripts commonly nest the state dict.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
# Prefixes added by wrappers: Lightning modules, DataParallel, torch.compile.
WRAPPER_PREFIXES = ("model.", "net.", "module.", "_orig_mod.")


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    matches: Callable[[Path], bool]
    read: Callable[[Path, bool], object]


def _read_safetensors(path: Path, trust_pickle: bool) -> object:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def _read_pretrained_dir(path: Path, trust_pickle: bool) -> object:
    weights = path / "model.safetensors"
    if weights.exists():
        return _read_safetensors(weights, trust_pickle)
    for name in ("pytorch_model.bin", "model.pth", "model.pt"):
        if (path / name).exists():
            return _read_torch(path / name, trust_pickle)
    raise CheckpointError(
        f"{path}: folder holds no model.safetensors or pytorch_model.bin "
        "(expected an smp save_pretrained folder)"
    )


def _read_torch(path: Path, trust_pickle: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: the file holds pickled Python objects (for example a whole model "
                "object), which can run code when loaded, so it was not loaded. Save a "
                "state_dict instead, or set `model.trust_pickle: true` in the spec only if "
                "you trust where the file came from."
            ) from exc
    except Exception as exc:  # the safe unpickler fails in many ways on foreign bytes
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another kind of file: "
            f"{str(exc).splitlines()[0][:200]})"
        ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # arbitrary code ran by the user's explicit choice
        raise CheckpointError(f"{path}: could not unpickle the checkpoint: {exc}") from exc


FORMATS: list[CheckpointFormat] = [
    CheckpointFormat("smp save_pretrained folder", lambda p: p.is_dir(), _read_pretrained_dir),
    CheckpointFormat("safetensors", lambda p: p.suffix == ".safetensors", _read_safetensors),
    CheckpointFormat("torch (.pth/.pt/.bin/.ckpt)", lambda p: p.is_file(), _read_torch),
]


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def extract_state_dict(obj: object, source: Path) -> dict[str, torch.Tensor]:
    """Find the tensors in whatever a checkpoint file held."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if _is_state_dict(obj):
        assert isinstance(obj, Mapping)
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if key in obj:
                return extract_state_dict(obj[key], source)
        raise CheckpointError(
            f"{source}: a dictionary without model weights "
            f"(keys: {', '.join(map(str, obj))[:200]}); "
            f"expected the weights themselves or under one of {', '.join(NESTED_KEYS)}"
        )
    raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not model weights")


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes while that increases the overlap with the model's keys."""
    while True:
        best = state
        overlap = len(expected & set(state))
        for prefix in WRAPPER_PREFIXES:
            stripped = {k.removeprefix(prefix): v for k, v in state.items()}
            if len(expected & set(stripped)) > overlap:
                best, overlap = stripped, len(expected & set(stripped))
        if best is state:
            return state
        state = best


def read_checkpoint(path: Path, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Read `path` into a flat state dict; returns (state dict, format name)."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    for fmt in FORMATS:
        if fmt.matches(path):
            obj = fmt.read(path, trust_pickle)
            return extract_state_dict(obj, path), fmt.name
    raise CheckpointError(f"{path}: not a file or folder")


def load_checkpoint(
    model: nn.Module,
    path: Path,
    trust_pickle: bool = False,
    described_as: str = "",
) -> str:
    """Load weights from `path` into `model` (strictly); returns the format name.

    `described_as` ("UnetPlusPlus / efficientnet-b5") is quoted in mismatch errors.
    """
    state, fmt = read_checkpoint(path, trust_pickle)
    expected = dict(model.state_dict())
    state = _strip_prefixes(state, set(expected))
    # smp's EfficientNet drops its classifier; checkpoints of the plain encoder may carry it.
    state = {k: v for k, v in state.items() if not k.startswith("encoder._fc.")}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(_mismatch_message(path, described_as, expected, state, missing,
                                                unexpected, wrong_shape))
    model.load_state_dict(state, strict=True)
    return fmt


def _mismatch_message(
    path: Path,
    described_as: str,
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    wrong_shape: list[str],
) -> str:
    lines = [
        f"{path}: the checkpoint does not fit the model {described_as or ''}".rstrip(),
        f"  model has {len(expected)} tensors, checkpoint {len(state)}; "
        f"{len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(wrong_shape)} of another shape",
    ]
    if missing:
        lines.append("  missing (first 5): " + ", ".join(missing[:5]))
    if unexpected:
        lines.append("  unexpected (first 5): " + ", ".join(unexpected[:5]))
    if wrong_shape:
        lines.append("  other shape (first 3): " + "; ".join(wrong_shape[:3]))
    guess = guess_model(state)
    if guess:
        lines.append(f"  the keys look like: {guess} (check model.architecture / model.encoder)")
    return "\n".join(lines)


def _signature(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}


def guess_model(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name the smp encoder (and architecture) whose tensors match the checkpoint's.

    Only encoders whose first key matches the checkpoint's are built, so the
    guess costs a handful of small model constructions on the error path.
    """
    from segmentation_models_pytorch.encoders import get_encoder

    from reportgen.models.build import ARCHITECTURES, encoder_names

    enc_sig = {k.removeprefix("encoder."): s for k, s in _signature(state, "encoder.").items()}
    if not enc_sig:
        return None
    first_key = next(iter(enc_sig))
    in_channels = 3
    encoder = None
    for name in encoder_names():
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                candidate = get_encoder(name, in_channels=in_channels, depth=5, weights=None)
        except Exception:  # smp cannot build every encoder on every platform
            continue
        cand = {k: tuple(v.shape) for k, v in candidate.state_dict().items()}
        if first_key not in cand:
            continue
        if cand == enc_sig:
            encoder = name
            break
    if encoder is None:
        return None
    head = [s for k, s in _signature(state, "segmentation_head.").items() if k.endswith("weight")]
    classes = head[0][0] if head else 1
    decoder_keys = {k for k in state if k.startswith("decoder.")}
    for arch, cls in ARCHITECTURES.items():
        try:
            with torch.device("meta"):
                m = cls(encoder_name=encoder, encoder_weights=None, classes=classes)
        except Exception:  # not every architecture accepts every encoder
            continue
        if {k for k in m.state_dict() if k.startswith("decoder.")} == decoder_keys:
            return f"{arch} with encoder {encoder} ({classes} classes)"
    return f"encoder {encoder}"
