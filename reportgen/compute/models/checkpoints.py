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
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn as nn

from reportgen.errors import CheckpointError

# Keys under which training scripts commonly nest the state dict.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
# Names wrappers put before the model's keys: Lightning modules, DataParallel, torch.compile;
# they stack ("model.module." is DataParallel inside a Lightning module).
WRAPPER_NAMES = ("model", "net", "module", "_orig_mod")
# smp's EfficientNet drops its classifier; checkpoints of the plain encoder may carry it.
IGNORED_PREFIXES = ("encoder._fc.",)
# Tensors that cannot be weights whatever the model: (test, what is wrong). A quantised
# tensor is refused, not dequantised: the float model it would give is not the quantised
# model that was validated, nor the float one it came from.
UNUSABLE_TENSORS: tuple[tuple[Callable[[torch.Tensor], bool], str], ...] = (
    (lambda t: t.is_meta, "holds meta tensors: no values were saved (the model was on the meta "
     "device, its weights never loaded or initialised)"),
    (lambda t: t.is_nested, "holds nested tensors (lists of tensors of different shapes), "
     "which are no model's weights"),
    (lambda t: t.is_quantized, "holds quantised tensors: quantised weights are not supported; "
     "save the state_dict of the float model (before quantisation)"),
)


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


def _refuse_unusable(state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Refuse tensors that hold no weights whatever the model (`UNUSABLE_TENSORS`), before
    anything reads their shape (a nested tensor has none) or copies them."""
    for is_unusable, reason in UNUSABLE_TENSORS:
        found = [k for k, v in state.items() if is_unusable(v)]
        if found:
            raise CheckpointError(f"{source}: {reason} ({len(found)} of {len(state)} tensors, "
                                  f"the first '{found[0]}')")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _refuse_casts(path: Path, state: Mapping[str, torch.Tensor],
                  expected: Mapping[str, torch.Tensor]) -> None:
    """Refuse integer or complex values where the model has floats. Integers there are
    quantised weights without their scale and zero point: cast, they would give maps that
    look valid and mean nothing, which a warning beside the report cannot undo. Complex
    values would lose their imaginary part. Float into float (fp16 into fp32) keeps the values."""
    wrong = [k for k, v in expected.items() if k in state and v.is_floating_point()
             and not state[k].is_floating_point()]
    if not wrong:
        return
    dtypes = "/".join(sorted({_dtype_name(state[k].dtype) for k in wrong}))
    why = ("casting would drop the imaginary part" if state[wrong[0]].is_complex() else
           "quantised weights are not supported: without their scale and zero point these "
           "are not the weights, and cast they would give maps that mean nothing; save the "
           "state_dict of the float model (before quantisation)")
    raise CheckpointError(
        f"{path}: {len(wrong)} of {len(state)} tensors are {dtypes} where the model has "
        f"{_dtype_name(expected[wrong[0]].dtype)} (first '{wrong[0]}'): {why}")


def _fits(keys: set[str], expected: set[str]) -> bool:
    """Exactly the model's keys, not counting tensors smp's encoders drop anyway."""
    return {k for k in keys if not k.startswith(IGNORED_PREFIXES)} == expected


def _is_wrapper_stack(prefix: str) -> bool:
    """`module.`, `model.module.`, `_orig_mod.module.`, ...: wrapper names only."""
    return all(name in WRAPPER_NAMES for name in prefix.removesuffix(".").split("."))


def _under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _prefixes_to_model_keys(keys: list[str], expected: set[str]) -> Counter[str]:
    """For each leading dotted part of the checkpoint's keys, how many keys are the model's
    once it is taken off ("model.module." -> 182)."""
    counts: Counter[str] = Counter()
    for key in keys:
        for at, char in enumerate(key):
            if char == "." and key[at + 1:] in expected:
                counts[key[:at + 1]] += 1
    return counts


@dataclass(frozen=True)
class Unwrapped:
    """A state dict taken out of its wrappers: the tensors, the keys of other modules
    dropped beside the model, and a word on the keys for a mismatch message."""

    state: dict[str, torch.Tensor]
    dropped: tuple[str, ...] = ()
    note: str = ""


def _unwrap(path: Path, state: dict[str, torch.Tensor], expected: set[str]) -> Unwrapped:
    """Take off the stack of wrapper prefixes under which the keys fit the model exactly.

    A Lightning module also holds its loss and metrics (`loss_fn.pos_weight`, torchmetrics
    buffers) beside `model.`: when the keys under one prefix fit the model exactly, the
    keys without it belong to those other modules. Without an exact fit, the keys are
    compared without the prefix that most of them share, so that the mismatch message
    counts like with like, and the message names that prefix.
    """
    if _fits(set(state), expected):
        return Unwrapped(state)
    counts = _prefixes_to_model_keys(list(state), expected)
    fitting = [p for p in counts if _is_wrapper_stack(p) and _fits(set(_under(state, p)), expected)]
    if fitting:
        _refuse_different_copies(path, state, fitting)
        return _without(state, fitting[0], keep_others=False)
    prefix, fit = counts.most_common(1)[0] if counts else ("", 0)
    if fit <= len(expected & set(state)):
        return Unwrapped(state)
    if _is_wrapper_stack(prefix):
        return _without(state, prefix, keep_others=True)
    return Unwrapped(state, note=(
        f"{_starting_with(state, prefix)} '{prefix}'; without it, {fit} of {len(state)} keys "
        f"are the model's: save the state_dict of the model inside (only stacks of "
        f"{', '.join(WRAPPER_NAMES)} are taken off)"))


def _starting_with(state: Mapping[str, torch.Tensor], prefix: str) -> str:
    holding = sum(k.startswith(prefix) for k in state)
    return ("every key starts with" if holding == len(state)
            else f"{holding} of {len(state)} keys start with")


def _without(state: dict[str, torch.Tensor], prefix: str, keep_others: bool) -> Unwrapped:
    """The keys under `prefix` without it; the others kept as they are (to be named as
    unexpected) or dropped (tensors of other modules beside the model)."""
    others = {k: v for k, v in state.items() if not k.startswith(prefix)}
    note = f"keys compared without the prefix '{prefix}' ({_starting_with(state, prefix)} it)"
    if keep_others:
        return Unwrapped({**others, **_under(state, prefix)}, note=note)
    return Unwrapped(_under(state, prefix), tuple(others), note)


def _refuse_different_copies(path: Path, state: Mapping[str, torch.Tensor],
                             prefixes: list[str]) -> None:
    """Two prefixes under which the keys fit (a model and its EMA or teacher): which one a
    dossier explains is the user's choice; one module registered under two names is not."""
    first = _under(state, prefixes[0])
    for prefix in prefixes[1:]:
        if not all(k in first and v.layout == first[k].layout == torch.strided
                   and torch.equal(v, first[k]) for k, v in _under(state, prefix).items()):
            raise CheckpointError(
                f"{path}: two or more copies of the model, under "
                f"{', '.join(repr(p) for p in prefixes)}; save the state_dict of the one to "
                "explain")


def read_checkpoint(path: Path, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Read `path` into a flat state dict; returns (state dict, format name)."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    for fmt in FORMATS:
        if fmt.matches(path):
            state = extract_state_dict(fmt.read(path, trust_pickle), path)
            _refuse_unusable(state, path)
            return state, fmt.name
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
    unwrapped = _unwrap(path, state, set(expected))
    state = {k: v for k, v in unwrapped.state.items() if not k.startswith(IGNORED_PREFIXES)}
    _refuse_casts(path, state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(_mismatch_message(path, described_as, expected, state,
                                                unwrapped.note, (missing, unexpected, wrong_shape)))
    # Sparse tensors hold the same values densely; with the shapes checked to be the
    # model's, densifying costs no more memory than the model's own tensors.
    state = {k: v if v.layout == torch.strided else v.to_dense() for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    dropped = unwrapped.dropped
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
    keys_note: str,
    differences: tuple[list[str], list[str], list[str]],
) -> str:
    missing, unexpected, wrong_shape = differences
    lines = [
        f"{path}: the checkpoint does not fit the model {described_as or ''}".rstrip(),
        f"  model has {len(expected)} tensors, checkpoint {len(state)}; "
        f"{len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(wrong_shape)} of another shape",
    ]
    if keys_note:
        lines.append(f"  {keys_note}")
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

    from reportgen.compute.models.build import ARCHITECTURES, encoder_names

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
