"""No network, ever: a model name that points at a hub is refused before anything loads,
and the hub libraries are switched offline in-process, so even a name that slipped past
validation cannot send a request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reportgen import cli
from reportgen.build import BuildOptions, build
from reportgen.errors import SpecError
from reportgen.offline import OFFLINE_SWITCHES
from tests.helpers import write_images, write_spec

HUB_NAMES = ["tu-hf-hub:timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k",
             "tu-HF-HUB:timm/resnet18", "tu-local-dir:/models/resnet18"]
FAST = {"metrics": ["attention"], "layers": ["encoder_last"], "methods": ["gradcam"],
        "output": {"pdf": None}}

# Run in a fresh interpreter: every way out (DNS, connect) raises and is counted.
GUARDED = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args[:2])
    raise RuntimeError("network access")  # not an OSError: no client retries it
socket.getaddrinfo = refuse
socket.socket.connect = refuse
socket.create_connection = refuse
{imports}
from huggingface_hub import hf_hub_download
try:  # what timm does for an hf-hub: model name, even without weights
    hf_hub_download("timm/resnet18.a1_in1k", "config.json")
    print("fetched")
except Exception as exc:
    print(type(exc).__name__)
print("attempts", len(attempts))
"""


# This process imported reportgen, which set the offline switches: a child must start
# without them to show that importing reportgen sets them.
ONLINE = {key: value for key, value in os.environ.items() if key not in OFFLINE_SWITCHES}


def test_without_reportgen_the_hub_library_would_try_the_network():
    """The guard of the two tests below sees a connection when nothing stops one."""
    result = subprocess.run([sys.executable, "-c", GUARDED.format(imports="")],
                            capture_output=True, text=True, timeout=120, env=ONLINE)
    assert int(result.stdout.split()[-1]) > 0, result.stdout + result.stderr


@pytest.fixture
def socket_attempts(monkeypatch) -> list[tuple]:
    """Every DNS lookup or connection tried in this test, each refused."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])  # seen even if the caller catches the error and goes on
        raise OSError("network access during a build")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.mark.parametrize("encoder", HUB_NAMES)
def test_validate_refuses_an_encoder_that_names_a_hub(tmp_path: Path, encoder: str, capsys):
    write_images(tmp_path, count=1)
    spec = write_spec(tmp_path / "spec.yaml", model={"encoder": encoder}, **FAST)
    assert cli.main(["validate", str(spec)]) == 2
    message = capsys.readouterr().err
    assert "model.encoder" in message and "never downloads" in message
    assert "spec.yaml:" in message  # file and line


def test_a_build_with_a_hub_backed_encoder_opens_no_socket(tmp_path: Path, socket_attempts):
    write_images(tmp_path, count=1)
    spec = write_spec(tmp_path / "spec.yaml",
                      model={"encoder": "tu-hf-hub:timm/resnet18.a1_in1k"}, **FAST)
    with pytest.raises(SpecError, match="never downloads"):
        build(spec, BuildOptions())
    assert socket_attempts == []
    assert not (tmp_path / "site").exists()


def test_an_unknown_timm_encoder_is_refused_with_the_names_near_it(tmp_path: Path, capsys):
    write_images(tmp_path, count=1)
    spec = write_spec(tmp_path / "spec.yaml", model={"encoder": "tu-resnt18"}, **FAST)
    assert cli.main(["validate", str(spec)]) == 2
    assert "did you mean tu-resnet18" in capsys.readouterr().err


@pytest.mark.parametrize("imports", ["import reportgen",
                                     "import huggingface_hub\nimport reportgen"],
                         ids=["reportgen first", "hub library imported before reportgen"])
def test_the_hub_libraries_are_offline_once_reportgen_is_imported(imports: str):
    """The second line of defence: a hub name reaching timm fails without a DNS query (the
    download timm asks huggingface_hub for is made here, without importing torch)."""
    result = subprocess.run([sys.executable, "-c", GUARDED.format(imports=imports)],
                            capture_output=True, text=True, timeout=120, env=ONLINE)
    lines = result.stdout.split()
    assert result.returncode == 0, result.stderr
    assert "fetched" not in lines and lines[-1] == "0", result.stdout + result.stderr
