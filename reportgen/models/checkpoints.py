"""Checkpoint loading: every common on-disk shape, never executing untrusted code.

Formats are a registry (`FORMATS`): each entry says whether it recognises a path
and how to read it into a flat ``{key: tensor}`` state dict. Pickled files are
read with ``torch.load(weights_only=True)``; a pickled whole model is accepted
only when the spec says ``model.trust_pickle: true``.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn as nn

from reportgen.errors import CheckpointError

# Keys under which training scripts commonly nest the state dict.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
# Prefixes added by wrappers: Lightning modules, DataParallel, torch.compile.
WRAPPER_PREFIXES = ("model.", "net.", "module.", "_orig_mod.")
# smp's EfficientNet drops its classifier; checkpoints of the plain encoder may carry it.
IGNORED_PREFIXES = ("encoder._fc.",)


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    matches: Callable[[Path], bool]
    read: Callable[[Path, bool], object]


def _refuse_empty(path: Path) -> None:
    """An empty file is a failed save or copy; say so rather than quote a reader's puzzle."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); the save or copy did not finish")


def _looks_like_safetensors(path: Path) -> bool:
    """Recognise safetensors by content (8-byte little-endian header length, then a JSON
    object), so a file renamed to .pth still loads as what it is."""
    if path.suffix == ".safetensors":
        return True
    if not path.is_file():
        return False
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(9)
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 0 < header_length <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path, trust_pickle: bool) -> object:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _refuse_empty(path)
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


class _NumpyPlaceholder:
    """Stands in for a numpy array, scalar or dtype in a checkpoint's metadata (Lightning
    keeps numpy values in `hyper_parameters`): it takes any arguments and state and holds
    nothing. The real numpy callables must not be allowed: `np.ndarray(shape, "O",
    buffer=...)` builds object pointers from the file's bytes, a memory-corruption
    primitive that would crash (or worse) a process that never opted into unpickling."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass

    def __repr__(self) -> str:
        return "<numpy value, not loaded>"


@cache
def _numpy_placeholders() -> list[tuple[type, str]]:
    """The numpy names a metadata value is pickled under, each bound to the placeholder.

    numpy 1 pickles `numpy.core.multiarray.*`, numpy 2 `numpy._core.multiarray.*`; an
    unpickled dtype is an instance of a per-type class (`numpy.dtypes.Float64DType`).
    """
    import numpy as np

    names = ["numpy.ndarray", "numpy.dtype"] + [
        f"numpy.{core}.multiarray.{name}"
        for core in ("core", "_core") for name in ("_reconstruct", "scalar")]
    names += sorted({f"numpy.dtypes.{type(np.dtype(code)).__name__}"
                     for code in np.typecodes["All"]})
    return [(_NumpyPlaceholder, name) for name in names]


def _torch_load(path: Path, weights_only: bool) -> object:
    """torch.load onto the CPU, torch's own warnings silenced; under weights_only, numpy
    metadata loads as inert placeholders (the weights are all that is used).

    torch warns "Detected pickle protocol 4" (with a source line) on raw pickles; the
    caller reports its own message instead.
    """
    # safe_globals with (object, name) pairs arrived in torch 2.6 (TorchVersion compares
    # as a version); before it, numpy metadata stays refused, naming the global
    allow_numpy = (torch.serialization.safe_globals(_numpy_placeholders())
                   if weights_only and torch.__version__ >= "2.6"
                   else contextlib.nullcontext())
    with warnings.catch_warnings(), allow_numpy:
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def _unpickler_error(exc: Exception) -> Exception:
    """The weights-only unpickler's own error: torch re-raises it wrapped in paragraphs of
    advice (`from None`, which keeps the original as the context)."""
    inner = exc.__context__
    if isinstance(exc, pickle.UnpicklingError) and isinstance(inner, pickle.UnpicklingError):
        return inner
    return exc


def _disallowed_global(exc: Exception) -> str | None:
    """The class or function the weights-only unpickler refused, if that is why it failed."""
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", str(exc))
    return found.group(1) if found else None


def _first_sentence(exc: BaseException) -> str:
    """The cause in one sentence: torch's messages run to several sentences and lines,
    and some (EOFError) are empty."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    sentence = re.match(r".*?[.!?](?=\s|$)", lines[0])
    return sentence.group(0) if sentence else lines[0]


def _is_pickle(path: Path) -> bool:
    """A torch zip archive, or a pickle of protocol 2 or later (PROTO opcode first)."""
    with path.open("rb") as file:
        head = file.read(4)
    return head == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _read_torch(path: Path, trust_pickle: bool) -> object:
    _refuse_empty(path)
    try:
        return _torch_load(path, weights_only=True)
    except Exception as exc:  # the safe unpickler fails in many ways on foreign bytes
        if trust_pickle:  # the user's explicit choice: the full unpickler, which may run code
            try:
                return _torch_load(path, weights_only=False)
            except Exception as full:
                raise CheckpointError(f"{path}: not a readable PyTorch checkpoint even "
                                      f"unpickled in full ({_first_sentence(full)})") from full
        cause = _unpickler_error(exc)
        disallowed = _disallowed_global(cause)
        if disallowed is not None:
            raise CheckpointError(
                f"{path}: the file holds pickled Python objects (such as a whole model "
                f"object; here `{disallowed}`), which can run code when loaded, so it was not "
                "loaded. Save a state_dict instead, or set `model.trust_pickle: true` in the "
                "spec only if you trust where the file came from."
            ) from exc
        if isinstance(cause, pickle.UnpicklingError) and _is_pickle(path):
            raise CheckpointError(
                f"{path}: the safe loader cannot read this pickle ({_first_sentence(cause)}; "
                "e.g. a pickle protocol above 2, or a tensor type it does not know). Re-save the "
                "state_dict with torch.save's defaults, or set `model.trust_pickle: true` in "
                "the spec only if you trust where the file came from."
            ) from exc
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated, or another kind of "
            f"file: {_first_sentence(cause)})"
        ) from exc


FORMATS: list[CheckpointFormat] = [
    CheckpointFormat("smp save_pretrained folder", lambda p: p.is_dir(), _read_pretrained_dir),
    CheckpointFormat("safetensors", _looks_like_safetensors, _read_safetensors),
    CheckpointFormat("torch (.pth/.pt/.bin/.ckpt)", lambda p: p.is_file(), _read_torch),
]


def _is_state_dict(obj: object) -> bool:
    """String keys, at least half of them tensors: a training dict's metadata may hold a
    tensor or two (a loss) without being the weights."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and 2 * sum(isinstance(v, torch.Tensor) for v in obj.values()) >= len(obj)
    )


def _find_state_dict(obj: object) -> Mapping[str, object] | None:
    """The weights in `obj`, looking under the nested keys before taking a dict as is."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        return None
    for key in NESTED_KEYS:
        nested = _find_state_dict(obj.get(key))
        if nested is not None:
            return nested
    return obj if _is_state_dict(obj) else None


def extract_state_dict(obj: object, source: Path) -> dict[str, torch.Tensor]:
    """Find the tensors in whatever a checkpoint file held."""
    found = _find_state_dict(obj)
    if found is not None:
        return {k: v for k, v in found.items() if isinstance(v, torch.Tensor)}
    if isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: a dictionary without model weights "
            f"(keys: {', '.join(map(str, obj))[:200]}); "
            f"expected the weights themselves or under one of {', '.join(NESTED_KEYS)}"
        )
    raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not model weights")


def _fits(keys: set[str], expected: set[str]) -> bool:
    """Exactly the model's keys, not counting tensors smp's encoders drop anyway."""
    return {k for k in keys if not k.startswith(IGNORED_PREFIXES)} == expected


def _strip_prefixes(
    state: dict[str, torch.Tensor], expected: set[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes while that increases the overlap with the model's keys.

    A Lightning module also holds its loss and metrics (`loss_fn.pos_weight`, torchmetrics
    buffers) beside `model.`: when the keys under one wrapper prefix fit the model
    exactly, the keys without it belong to those other modules. Returns the state dict
    and the keys dropped for that reason.
    """
    while True:
        if _fits(set(state), expected):
            return state, []
        for prefix in WRAPPER_PREFIXES:
            inner = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            if _fits(set(inner), expected):
                return inner, [k for k in state if not k.startswith(prefix)]
        best = state
        overlap = len(expected & set(state))
        for prefix in WRAPPER_PREFIXES:
            stripped = {k.removeprefix(prefix): v for k, v in state.items()}
            if len(expected & set(stripped)) > overlap:
                best, overlap = stripped, len(expected & set(stripped))
        if best is state:
            return state, []
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
    notes: list[str] | None = None,
) -> str:
    """Load weights from `path` into `model` (strictly); returns the format name.

    `described_as` ("UnetPlusPlus / efficientnet-b5") is quoted in mismatch errors.
    Tensors of other modules beside a wrapped model (a Lightning loss or metric) are
    dropped and named in a note appended to `notes` (the build's warnings).
    """
    state, fmt = read_checkpoint(path, trust_pickle)
    expected = dict(model.state_dict())
    state, dropped = _strip_prefixes(state, set(expected))
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
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
    if dropped and notes is not None:
        more = ", ..." if len(dropped) > 3 else ""
        notes.append(f"checkpoint {path.name}: {len(dropped)} tensor(s) of modules other than "
                     f"the model ignored: {', '.join(dropped[:3])}{more}")
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
    hint = _fix_hint(guess_model(state), guess_model(expected))
    if hint:
        lines.append(f"  {hint}")
    return "\n".join(lines)


def _fix_hint(checkpoint: ModelGuess | None, model: ModelGuess | None) -> str:
    """What to change in the spec, from what the checkpoint's keys look like ("" when they
    say nothing the spec does not: naming the spec's own model helps no one)."""
    if checkpoint is None or checkpoint == model:
        return ""
    if model is not None and checkpoint.same_network(model):
        return (f"the checkpoint is {checkpoint.architecture} with encoder {checkpoint.encoder} "
                f"for {_classes(checkpoint.classes)}, the spec asks for {model.classes}: set "
                f"model.classes: {checkpoint.classes}")
    return f"the keys look like: {checkpoint} (check model.architecture / model.encoder)"


def _classes(count: int) -> str:
    return f"{count} class" if count == 1 else f"{count} classes"


def _signature(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class ModelGuess:
    """The smp model a state dict's tensors fit: the encoder, and the architecture when
    the decoder's keys name one."""

    encoder: str
    architecture: str | None = None
    classes: int = 1

    def same_network(self, other: ModelGuess) -> bool:
        """Same architecture (known) and encoder, whatever the number of classes."""
        return self.architecture is not None and (
            (self.architecture, self.encoder) == (other.architecture, other.encoder))

    def __str__(self) -> str:
        if self.architecture is None:
            return f"encoder {self.encoder}"
        return f"{self.architecture} with encoder {self.encoder} ({_classes(self.classes)})"


def guess_model(state: Mapping[str, torch.Tensor]) -> ModelGuess | None:
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
            return ModelGuess(encoder, arch, classes)
    return ModelGuess(encoder)
