"""Checkpoints are read for what they hold: tensors without values, quantised or complex
weights and wrappers stacked on wrappers are named, never cast or loaded in silence; and a
dry forward that runs out of memory says the input is too large, not too small."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from reportgen import cli
from reportgen.compute.models import build_model, load_checkpoint, resolve_layers
from reportgen.errors import CheckpointError, LayerError
from tests.helpers import fresh_unet, write_images, write_spec


def refusal(model: torch.nn.Module, path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path, described_as="Unet / resnet18")
    return str(info.value)


def assert_computes_like(model: torch.nn.Module, trained: torch.nn.Module,
                         probe: torch.Tensor) -> None:
    with torch.no_grad():
        assert torch.equal(model(probe), trained(probe))


# ---------------------------------------------------------------- tensors that hold no weights


def test_a_state_dict_of_a_model_on_the_meta_device_is_refused_as_holding_no_values(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save(fresh_unet().to("meta").state_dict(), path)
    message = refusal(fresh_unet(), path)
    assert message.startswith(f"{path}: holds meta tensors: no values were saved")
    assert "'encoder.conv1.weight'" in message  # the first offending key


def test_a_meta_checkpoint_stops_a_build_with_exit_2_and_no_traceback(tmp_path, capsys):
    write_images(tmp_path, count=1)
    torch.save(build_model("UnetPlusPlus", "efficientnet-b0", 1, 3).to("meta").state_dict(),
               tmp_path / "meta.pth")
    spec = write_spec(tmp_path / "spec.yaml", model={"checkpoint": "meta.pth"},
                      metrics=["attention"], layers=["encoder_last"], methods=["gradcam"],
                      output={"pdf": None})
    code = cli.main(["build", str(spec)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert "meta.pth: holds meta tensors: no values were saved" in err
    assert not (tmp_path / "site").exists()


def test_one_meta_tensor_among_real_ones_is_named(tmp_path, trained):
    state = dict(trained.state_dict())
    state["decoder.blocks.0.conv1.0.weight"] = torch.empty(
        state["decoder.blocks.0.conv1.0.weight"].shape, device="meta")
    path = tmp_path / "half_saved.pth"
    torch.save(state, path)
    message = refusal(fresh_unet(), path)
    assert "holds meta tensors" in message
    assert "1 of 182 tensors" in message and "'decoder.blocks.0.conv1.0.weight'" in message


def test_sparse_tensors_load_as_the_dense_weights_they_hold(tmp_path, trained, probe):
    # densifying is exact, and costs no more than the model's own tensor of that shape
    path = tmp_path / "sparse.pth"
    torch.save({k: v.to_sparse() if v.dim() == 4 else v
                for k, v in trained.state_dict().items()}, path)
    model = fresh_unet()
    load_checkpoint(model, path)
    assert_computes_like(model, trained, probe)


def _quantised(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.quantize_per_tensor(v, 0.01, 0, torch.qint8) if v.is_floating_point()
            else v for k, v in state.items()}


def _nested(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**state, "encoder.conv1.weight": torch.nested.nested_tensor(
        [torch.zeros(2, 3), torch.zeros(4, 3)])}


def _complex(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.complex64) if v.is_floating_point() else v for k, v in state.items()}


def _int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.int8) if v.dim() == 4 else v for k, v in state.items()}


UNUSABLE = [
    # (case, state dict -> what is saved, fragments the message holds)
    ("quantised torch tensors", _quantised,
     ["holds quantised tensors", "'encoder.conv1.weight'",
      "save the state_dict of the float model"]),
    ("a nested tensor", _nested,
     ["holds nested tensors", "'encoder.conv1.weight'", "1 of 182 tensors"]),
    ("complex weights", _complex,
     ["tensors are complex64 where the model has float32", "drop the imaginary part"]),
    ("int8 weights", _int8,
     ["31 of 182 tensors are int8 where the model has float32", "'encoder.conv1.weight'",
      "quantised weights are not supported"]),
]


@pytest.mark.parametrize("case,convert,fragments", UNUSABLE, ids=[u[0] for u in UNUSABLE])
def test_tensors_that_are_not_float_weights_are_refused_naming_the_file_and_key(
        tmp_path, trained, case, convert, fragments):
    path = tmp_path / "weights.pth"
    torch.save(convert(dict(trained.state_dict())), path)
    message = refusal(fresh_unet(), path)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, (case, message)


def test_int8_safetensors_are_refused_not_cast_into_meaningless_weights(tmp_path, trained):
    path = tmp_path / "int8.safetensors"
    save_file({k: v.contiguous() for k, v in _int8(dict(trained.state_dict())).items()},
              str(path))
    model = fresh_unet()
    before = model.encoder.conv1.weight.clone()
    message = refusal(model, path)
    assert message.startswith(f"{path}: 31 of 182 tensors are int8 where the model has "
                              "float32 (first 'encoder.conv1.weight')")
    assert "quantised weights are not supported" in message
    assert torch.equal(model.encoder.conv1.weight, before)  # nothing was cast into the model


# ---------------------------------------------------------------- wrappers stacked on wrappers

STACKS = ["module.module.", "model.module.", "_orig_mod.module.", "model._orig_mod.module.",
          "net._orig_mod."]


@pytest.mark.parametrize("prefix", STACKS)
def test_a_lightning_checkpoint_of_a_doubly_wrapped_model_loads(tmp_path, trained, probe, prefix):
    state = {f"{prefix}{k}": v for k, v in trained.state_dict().items()}
    state["loss_fn.pos_weight"] = torch.tensor([2.0])
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model, notes = fresh_unet(), []
    load_checkpoint(model, path, notes=notes)
    assert_computes_like(model, trained, probe)
    assert notes == ["checkpoint wrapped.ckpt: 1 tensor(s) of modules other than the model "
                     "ignored: loss_fn.pos_weight"]


def test_a_wrapped_checkpoint_of_other_classes_is_compared_without_its_prefix(tmp_path):
    path = tmp_path / "one_class.ckpt"
    state = build_model("Unet", "resnet18", classes=1).state_dict()
    torch.save({"state_dict": {f"model.module.{k}": v for k, v in state.items()}}, path)
    message = refusal(fresh_unet(), path)
    assert "0 missing, 0 unexpected, 2 of another shape" in message
    assert "keys compared without the prefix 'model.module.' (every key starts with it)" in message
    assert message.endswith("set model.classes: 1")


def test_a_prefix_that_is_no_wrapper_is_named_with_how_many_keys_fit_without_it(
        tmp_path, trained):
    path = tmp_path / "distilled.pth"
    torch.save({f"student.{k}": v for k, v in trained.state_dict().items()}, path)
    message = refusal(fresh_unet(), path)
    assert ("every key starts with 'student.'; without it, 182 of 182 keys are the model's: "
            "save the state_dict of the model inside") in message


def test_two_wrapped_models_in_one_file_are_refused_not_chosen_between(tmp_path, trained):
    path = tmp_path / "two_models.ckpt"
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    state.update({f"net.module.{k}": v for k, v in fresh_unet().state_dict().items()})
    torch.save({"state_dict": state}, path)
    message = refusal(fresh_unet(), path)
    assert "two or more copies of the model" in message
    assert "'model.'" in message and "'net.module.'" in message


# ---------------------------------------------------------------- the dry forward's size hints


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, MemoryError])
def test_running_out_of_memory_in_the_dry_forward_says_the_input_is_too_large(
        monkeypatch, error):
    model = build_model("Unet", "resnet18", classes=2)

    def forward(*args, **kwargs):  # a real out-of-memory is not reproducible in CI
        raise error("CUDA out of memory. Tried to allocate 12.00 GiB")

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(LayerError) as info:
        resolve_layers(model, ["encoder_last"], (64, 64))
    message = str(info.value)
    assert message.startswith("a dry forward of Unet at 64x64 (a batch of 1 image) ran out "
                              "of memory on cpu: the input is too large for this device")
    assert "Lower model.input_size; a lower runtime.batch_size cannot help" in message
    assert "Tried to allocate 12.00 GiB" in message
    assert "large enough" not in message


def test_out_of_memory_off_the_cpu_also_suggests_the_cpu(monkeypatch):
    model = build_model("Unet", "resnet18", classes=2).to("meta")  # meta stands in for a GPU

    def forward(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(LayerError, match="Lower model.input_size, or set runtime.device: cpu;"):
        resolve_layers(model, ["encoder_last"], (64, 64))


def test_an_input_too_small_for_the_architecture_keeps_its_hint():
    model = build_model("PAN", "resnet18", classes=2)  # its pyramid pooling needs >= 128 px
    with pytest.raises(LayerError) as info:
        resolve_layers(model, ["encoder_last"], (64, 64))
    assert "is the input size large enough for this architecture?" in str(info.value)
    assert "out of memory" not in str(info.value)
