"""Checkpoints of every common shape load into the same model; untrusted files stay data."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from reportgen.compute.models import build_model, load_checkpoint
from reportgen.errors import CheckpointError
from tests.helpers import fresh_unet


def save_plain(model, path):
    torch.save(model.state_dict(), path)


def save_nested(key):
    def save(model, path):
        torch.save({key: model.state_dict(), "epoch": 7, "optimizer": {"lr": 1e-3}}, path)
    return save


def save_lightning(prefix):
    def save(model, path):
        state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "epoch": 3, "global_step": 10,
                    "pytorch-lightning_version": "2.4.0"}, path)
    return save


def save_safetensors(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def save_pretrained(model, path):
    model.save_pretrained(str(path))


def save_dataparallel(model, path):
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)


FORMATS = [
    ("state_dict.pth", save_plain),
    ("state_dict.pt", save_plain),
    ("pytorch_model.bin", save_plain),
    ("nested_state_dict.pth", save_nested("state_dict")),
    ("nested_model_state_dict.pth", save_nested("model_state_dict")),
    ("nested_model.pth", save_nested("model")),
    ("lightning_model.ckpt", save_lightning("model.")),
    ("lightning_net.ckpt", save_lightning("net.")),
    ("dataparallel.pth", save_dataparallel),
    ("weights.safetensors", save_safetensors),
    ("pretrained_dir", save_pretrained),
]


def assert_loads_the_trained_model(path, trained, probe, **options) -> str:
    """Load `path` into a fresh model, check it computes what `trained` computes; the
    format name."""
    model = fresh_unet()
    fmt = load_checkpoint(model, path, **options)
    with torch.no_grad():
        assert torch.equal(model(probe), trained(probe))
    return fmt


@pytest.mark.parametrize("name,save", FORMATS, ids=[f[0] for f in FORMATS])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, trained, probe, name, save):
    path = tmp_path / name
    save(trained, path)
    assert_loads_the_trained_model(path, trained, probe)


def test_fp16_safetensors_load_into_an_fp32_model(tmp_path, trained, probe):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in trained.state_dict().items()}, str(path))
    model = fresh_unet()
    load_checkpoint(model, path)
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(model(probe), trained(probe), atol=1e-2)


def test_whole_model_pickle_needs_explicit_trust(tmp_path, trained, probe):
    path = tmp_path / "whole.pth"
    torch.save(trained, path)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        load_checkpoint(fresh_unet(), path)
    assert_loads_the_trained_model(path, trained, probe, trust_pickle=True)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(fresh_unet(), path)
    plain = tmp_path / "evil.pkl.pth"
    plain.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint(fresh_unet(), plain)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_clear_errors(tmp_path, trained):
    good = tmp_path / "good.pth"
    save_plain(trained, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(fresh_unet(), truncated)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_checkpoint(fresh_unet(), text)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(fresh_unet(), broken)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(fresh_unet(), tmp_path / "absent.pth")


def mismatch_message(tmp_path, encoder: str, classes: int) -> str:
    """The error of loading a 1-class U-Net++ / efficientnet-b0 checkpoint into a U-Net++
    with `encoder` and `classes`."""
    path = tmp_path / "b0.pth"
    torch.save(smp.UnetPlusPlus("efficientnet-b0", encoder_weights=None, classes=1)
               .state_dict(), path)
    model = build_model("UnetPlusPlus", encoder, classes=classes)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path, described_as=f"UnetPlusPlus / {encoder}")
    return str(info.value)


def test_mismatch_names_counts_keys_and_guesses_the_encoder(tmp_path):
    message = mismatch_message(tmp_path, "efficientnet-b1", classes=1)
    assert "UnetPlusPlus / efficientnet-b1" in message
    assert "missing (first 5): encoder._blocks." in message
    assert ("the keys look like: UnetPlusPlus with encoder efficientnet-b0 (1 class) "
            "(check model.architecture / model.encoder)") in message


def test_a_checkpoint_of_fewer_classes_says_to_set_model_classes(tmp_path):
    message = mismatch_message(tmp_path, "efficientnet-b0", classes=2)
    assert "other shape (first 3): segmentation_head.0.weight: checkpoint (1," in message
    assert message.endswith("the checkpoint is UnetPlusPlus with encoder efficientnet-b0 for "
                            "1 class, the spec asks for 2: set model.classes: 1")
    assert "look like" not in message


def test_pytorch_tutorial_general_checkpoint_loads(tmp_path, trained, probe):
    path = tmp_path / "general.pth"
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": 3, "model_state_dict": trained.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(), "loss": torch.tensor(0.25)}, path)
    assert_loads_the_trained_model(path, trained, probe)


def test_lightning_checkpoint_with_loss_and_metric_state_loads_the_model(tmp_path, trained, probe):
    path = tmp_path / "lightning_with_loss.ckpt"
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    state |= {"loss_fn.pos_weight": torch.tensor([2.0]), "val_dice.tp": torch.zeros(2),
              "val_dice.fp": torch.zeros(2)}
    torch.save({"state_dict": state, "epoch": 3, "pytorch-lightning_version": "2.4.0"}, path)
    notes: list[str] = []
    assert_loads_the_trained_model(path, trained, probe, notes=notes)
    assert notes == ["checkpoint lightning_with_loss.ckpt: 3 tensor(s) of modules other than "
                     "the model ignored: loss_fn.pos_weight, val_dice.tp, val_dice.fp"]


def test_mismatch_does_not_suggest_the_model_the_spec_already_names(tmp_path, trained):
    path = tmp_path / "extra.pth"
    torch.save(trained.state_dict() | {"loss_fn.pos_weight": torch.tensor([2.0])}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(fresh_unet(), path, described_as="Unet / resnet18")
    message = str(info.value)
    assert "unexpected (first 5): loss_fn.pos_weight" in message
    assert "look like" not in message


def test_lightning_checkpoint_with_numpy_hyperparameters_loads(tmp_path, trained, probe):
    path = tmp_path / "numpy_hparams.ckpt"
    hyper_parameters = {"lr": np.float64(1e-3), "steps": np.int64(100),
                        "betas": np.array([0.9, 0.999]), "dtype": np.dtype("float32"),
                        "names": np.array(["background", "lesion"], dtype=object)}
    save_lightning("model.")(trained, path)
    torch.save(torch.load(path, weights_only=True) | {"hyper_parameters": hyper_parameters}, path)
    assert_loads_the_trained_model(path, trained, probe)


class _Config:
    """A training script's own class, as Lightning may store it among the hyperparameters."""


def test_refused_pickle_names_the_object_it_would_build(tmp_path, trained):
    path = tmp_path / "config_object.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": {"cfg": _Config()}}, path)
    with pytest.raises(CheckpointError, match=r"here `\S*_Config`.*trust_pickle"):
        load_checkpoint(fresh_unet(), path)


def test_empty_checkpoint_is_reported_as_empty(tmp_path):
    for name in ("empty.pth", "empty.safetensors"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(CheckpointError, match=rf"{name}: empty file \(0 bytes\)"):
            load_checkpoint(fresh_unet(), tmp_path / name)


def test_files_that_are_not_checkpoints_do_not_suggest_trust_pickle(tmp_path):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as info:
        load_checkpoint(fresh_unet(), noise)
    assert "trust_pickle" not in str(info.value)


def test_safetensors_renamed_to_pth_loads(tmp_path, trained, probe):
    path = tmp_path / "weights.pth"
    save_safetensors(trained, path)
    assert assert_loads_the_trained_model(path, trained, probe) == "safetensors"


def test_truncated_checkpoint_message_ends_with_a_whole_sentence(tmp_path, trained):
    good = tmp_path / "good.pth"
    save_plain(trained, good)
    truncated = tmp_path / "half.pth"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="half.pth: not a readable") as info:
        load_checkpoint(fresh_unet(), truncated)
    assert str(info.value).endswith(".)")


def test_raw_pickle_is_refused_without_torch_warnings(tmp_path, recwarn):
    path = tmp_path / "raw.pth"
    path.write_bytes(pickle.dumps({"w": torch.zeros(1)}, protocol=4))
    with pytest.raises(CheckpointError, match="raw.pth"):
        load_checkpoint(fresh_unet(), path)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_numpy_callables_in_a_checkpoint_cannot_build_objects_from_its_bytes(tmp_path):
    """np.ndarray(shape, "O", buffer=...) makes object pointers of the file's bytes: a
    checkpoint loaded without trust_pickle must not reach it (it crashed the process)."""
    script = tmp_path / "evil.py"
    script.write_text(
        "import sys\n"
        "import numpy as np, torch\n"
        "from pathlib import Path\n"
        "from reportgen.errors import CheckpointError\n"
        "from reportgen.compute.models.checkpoints import _read_torch\n"
        "class Objects:\n"
        "    def __reduce__(self):\n"
        "        return (np.ndarray, ((1,), np.dtype('O'), b'A' * 8))\n"
        "class Touch:\n"
        "    def __reduce__(self):\n"
        "        return (set, (Objects(),))\n"
        "path = Path(sys.argv[1])\n"
        "torch.save({'state_dict': {'w': torch.zeros(2)}, 'x': Touch()}, path)\n"
        "try:\n"
        "    _read_torch(path, False)\n"
        "except CheckpointError as exc:\n"
        "    print('refused:', exc)\n")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "evil.pth")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: " in done.stdout


def test_a_state_dict_pickled_with_protocol_4_loads_with_trust_or_says_how(tmp_path, trained,
                                                                          probe):
    path = tmp_path / "protocol4.pth"
    torch.save(trained.state_dict(), path, pickle_protocol=4)
    with pytest.raises(CheckpointError, match="safe loader cannot read this pickle.*"
                                              "trust_pickle: true"):
        load_checkpoint(fresh_unet(), path)
    assert_loads_the_trained_model(path, trained, probe, trust_pickle=True)
