"""The command line: exit codes 0 / 1 / 2, messages without tracebacks, JSON output."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from reportgen import cli
from reportgen.errors import UserError
from tests.helpers import write_images, write_spec


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    write_images(tmp_path, count=2)
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validate_ok_prints_summary(project, capsys):
    code, out, _ = run(capsys, "validate", str(write_spec(project / "s.yaml")))
    assert code == 0 and out.startswith("ok: UnetPlusPlus/efficientnet-b0")
    assert "2 images at 64x64" in out
    assert "note:" not in out  # aliases only: nothing is left for check to find


def test_validate_says_module_paths_wait_for_check_which_names_the_mistake(project, capsys):
    spec = write_spec(project / "s.yaml", layers=["encoder_early", "encoder.blocks.38",
                                                   "encoder@3"])
    code, out, _ = run(capsys, "validate", str(spec))
    assert code == 0 and out.splitlines()[0].startswith("ok: ")
    assert out.splitlines()[1] == (
        f"note: module paths (encoder.blocks.38, encoder@3) are checked when the model is "
        f"built: run `reportgen check {spec}`")
    code, out, _ = run(capsys, "validate", "--json", str(spec))
    assert code == 0 and "encoder.blocks.38" in json.loads(out)["note"]
    code, _, err = run(capsys, "check", str(spec))
    message = " ".join(err.split())  # undo the console's wrapping
    assert code == 2 and "'encoder' has no child 'blocks'" in message
    assert "Did you mean 'encoder._blocks' (children 0-15)?" in message
    assert "Traceback" not in err


def test_user_errors_exit_2_without_traceback(project, capsys):
    spec = write_spec(project / "s.yaml", layers=["encoder_lst"])
    code, _, err = run(capsys, "validate", str(spec))
    assert code == 2 and "did you mean 'encoder_last'" in err and "Traceback" not in err
    code, _, err = run(capsys, "build", "-q", str(project / "missing.yaml"))
    assert code == 2 and "not found" in err
    code, _, err = run(capsys, "layers", "--architecture", "Unet", "--encoder", "resnet81")
    assert code == 2 and "did you mean resnet18" in err


def test_debug_shows_the_traceback(project):
    spec = write_spec(project / "s.yaml", layers=["encoder_lst"])
    with pytest.raises(Exception, match="encoder_lst"):
        cli.main(["validate", "--debug", str(spec)])


def test_internal_errors_exit_1(project, monkeypatch):
    import reportgen.spec

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(reportgen.spec, "load_spec", broken)
    with pytest.raises(RuntimeError):
        cli.main(["validate", str(write_spec(project / "s.yaml"))])
    assert cli.run_main(["validate", str(project / "s.yaml")]) == 1


def test_schema_is_json(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0 and json.loads(out)["title"] == "reportgen spec"


def test_layers_table_lists_aliases_channels_and_strides(capsys):
    code, out, _ = run(capsys, "layers", "--architecture", "UnetPlusPlus", "--encoder",
                       "efficientnet-b0", "--input-size", "64", "--json")
    rows = {r["alias"]: r for r in json.loads(out)}
    assert code == 0
    assert rows["encoder_last"]["path"] == "encoder._blocks.15"
    assert rows["encoder_last"]["channels"] == 320 and rows["encoder_last"]["stride"] == 32


def test_layers_all_says_which_modules_cannot_be_explained_and_rounds_padded_strides(capsys):
    """EfficientNet reuses one Swish module in a block (a hook would see the last call
    only) and pads before its convolutions (outputs a few pixels larger than the stage)."""
    argv = ["layers", "--architecture", "UnetPlusPlus", "--encoder", "efficientnet-b0",
            "--input-size", "64", "--all"]
    code, out, _ = run(capsys, *argv, "--json")
    rows = {r["path"]: r for r in json.loads(out)}
    assert code == 0
    reused = rows["encoder._blocks.0._swish"]
    assert reused["calls"] == 2 and "runs 2 times in one forward" in reused["meaning"]
    assert reused["channels"] is None and reused["stride"] is None  # no one shape to show
    assert rows["encoder._blocks.15"]["calls"] == 1 and rows["encoder._blocks.15"]["meaning"] == ""
    assert not float(rows["encoder._conv_stem.static_padding"]["stride"]).is_integer()
    assert cli._stride(rows["encoder._conv_stem.static_padding"]["stride"]) == "≈1"
    assert cli._stride(32.0) == "32" and cli._stride(None) == "-"
    assert cli._stride(0.5) == "0.5"  # an upsampled output is shown as it is


def test_layers_lists_what_resolves_and_says_why_the_rest_does_not(project, capsys):
    code, out, err = run(capsys, "layers", "--architecture", "PSPNet", "--encoder", "resnet18",
                         "--input-size", "64", "--json")
    rows = {r["alias"]: r for r in json.loads(out)}
    assert code == 0 and rows["encoder_last"]["path"] == "encoder.layer2"
    assert rows["seg_head"]["path"] and rows["encoder_mid"]["path"] is None
    assert "no stride-16 stage" in rows["encoder_mid"]["error"]
    code, out, err = run(capsys, "layers", "--architecture", "PSPNet", "--encoder", "resnet18",
                         "--input-size", "64")
    assert code == 0 and "encoder.layer2" in out and "Traceback" not in err
    assert "note: encoder_mid has no sensible meaning" in " ".join(err.split())
    model = {"architecture": "PSPNet", "encoder": "resnet18"}
    spec = write_spec(project / "s.yaml", model=model, layers=["encoder_mid"])
    code, out, err = run(capsys, "layers", "--spec", str(spec))
    assert code == 2 and "error: encoder_mid has no sensible meaning" in " ".join(err.split())
    spec = write_spec(project / "s.yaml", model=model, layers=["encoder_last"])
    assert run(capsys, "layers", "--spec", str(spec))[0] == 0


def test_layers_from_a_spec_include_its_module_paths(project, capsys):
    spec = write_spec(project / "s.yaml", layers=["encoder_last", "encoder._blocks.10"])
    code, out, _ = run(capsys, "layers", "--spec", str(spec), "--json")
    assert code == 0 and "encoder._blocks.10" in [r["path"] for r in json.loads(out)]


def test_methods_lists_the_registry(capsys):
    code, out, _ = run(capsys, "methods", "--json")
    names = [r["name"] for r in json.loads(out)]
    assert code == 0 and {"gradcam", "gradcam++", "scorecam", "layercam", "eigencam"} <= set(
        names)


def test_check_runs_every_layer_and_method_on_one_image(project, capsys):
    spec = write_spec(project / "s.yaml")
    code, out, _ = run(capsys, "check", "--json", str(spec))
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3 * 2 and all(r["ok"] for r in rows)


def test_check_runs_score_cam_as_the_build_would(project, capsys):
    """max_channels and the Score-CAM layer subset hold in check too: on B5 at 640 px an
    exact Score-CAM cell would take minutes on a CPU."""
    spec = write_spec(project / "s.yaml", layers=["encoder_last", "decoder_last"],
                      methods=["gradcam", "scorecam"],
                      method_options={"scorecam": {"max_channels": 2,
                                                   "layers": ["decoder_last"]}})
    code, out, _ = run(capsys, "check", "--json", str(spec))
    flags = {(r["layer"], r["method"]): r["flags"] for r in json.loads(out)}
    assert code == 0
    assert "skipped" in flags["encoder_last", "scorecam"]
    assert "approximate" in flags["decoder_last", "scorecam"]
    code, out, _ = run(capsys, "check", str(spec))
    assert "skipped" in out


def test_check_says_each_cell_is_timed_alone(project, capsys):
    """Summing the seconds column would overstate a build: say what the seconds are."""
    code, out, _ = run(capsys, "check", str(write_spec(project / "s.yaml")))
    text = " ".join(out.split())  # undo the console's wrapping
    assert code == 0 and "seconds: each cell run alone." in text
    assert ("A build computes every gradient method and layer from one forward and backward "
            "per batch, so the column's sum overstates its time") in text


def test_check_warns_of_random_and_nan_weights_as_build_does(project, capsys):
    spec = write_spec(project / "s.yaml")  # no checkpoint: random weights
    code, out, err = run(capsys, "check", str(spec))
    assert code == 0 and "warning: no checkpoint: the model has RANDOM weights" in err
    code, out, _ = run(capsys, "check", "--json", str(spec))
    rows = json.loads(out)
    assert code == 0 and {r["layer"] for r in rows} == {"encoder_early", "encoder_last",
                                                        "decoder_last"}
    assert all(r["warnings"] == rows[0]["warnings"] for r in rows)
    (warning,) = rows[0]["warnings"]
    assert warning.startswith("no checkpoint: the model has RANDOM weights")
    assert run(capsys, "check", "-q", str(spec)) == (0, "", "")  # warnings are not failures

    from reportgen.compute.models import build_model

    model = build_model("UnetPlusPlus", "efficientnet-b0")
    state = model.state_dict()
    state["segmentation_head.0.bias"][0] = float("nan")  # a diverged training run
    torch.save(state, project / "diverged.pth")
    spec = write_spec(project / "s.yaml", model={"checkpoint": "diverged.pth"})
    code, out, _ = run(capsys, "check", "--json", str(spec))
    assert json.loads(out)[0]["warnings"] == [
        "the checkpoint holds NaN or infinite weights: every map and metric is invalid"]


def test_build_prints_where_the_site_is_and_its_warnings(project, capsys):
    spec = write_spec(project / "s.yaml", metrics=["attention"], output={"pdf": None})
    code, out, err = run(capsys, "build", str(spec))
    assert code == 0 and f"site: {project / 'site' / 'index.html'}" in out
    assert "warning: no checkpoint" in err and "RANDOM weights" in err  # no checkpoint given
    code, out, err = run(capsys, "build", "-q", str(spec))
    assert code == 0 and not out and not err


def test_validate_accepts_a_spec_that_only_moves_the_site(project, capsys):
    spec = write_spec(project / "s.yaml", output={"site": "out/site_b5"})
    code, out, err = run(capsys, "validate", str(spec))
    assert code == 0 and out.startswith("ok: ") and err == ""


def test_validate_refuses_a_pdf_that_would_overwrite_a_site_page(project, capsys):
    spec = write_spec(project / "s.yaml", output={"pdf": "site/index.html"})
    code, _, err = run(capsys, "validate", str(spec))
    assert code == 2 and "must end in .pdf" in err


def parse_error(capsys, *argv: str) -> str:
    """Run a command line that argparse refuses: exit 2 with its usage message."""
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "index.html").write_text("<h1>CAM report</h1>")
    return folder


@contextlib.contextmanager
def serving(site: Path, *options: str) -> Iterator[subprocess.Popen[str]]:
    """`reportgen serve` in a child process, stopped with Ctrl+C (SIGINT) at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "reportgen.cli", "serve", str(site), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url: str, wait_s: float = 10.0) -> str:
    """The page at url, retrying while the server is still starting."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_serve_json_prints_one_line_with_the_url_then_serves_the_site(site):
    with serving(site, "--port", "0", "--json") as proc:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["folder"] == str(site.resolve())
        assert started["url"].startswith("http://127.0.0.1:")
        assert fetch(started["url"]) == "<h1>CAM report</h1>"
    out, _ = proc.communicate()
    assert proc.returncode == 0 and out == ""  # nothing after the JSON line


def test_serve_prints_where_it_serves_and_quiet_prints_nothing(site):
    port = free_port()
    with serving(site, "--port", str(port)) as proc:
        assert fetch(f"http://127.0.0.1:{port}/") == "<h1>CAM report</h1>"
    out, err = proc.communicate()
    assert out.strip() == (f"serving {site.resolve()} at http://127.0.0.1:{port}/ "
                           "(Ctrl+C stops)")
    assert '"GET / HTTP/1.1" 200' in err  # the request log
    port = free_port()
    with serving(site, "--port", str(port), "--quiet") as proc:
        assert fetch(f"http://127.0.0.1:{port}/") == "<h1>CAM report</h1>"
    out, err = proc.communicate()
    assert proc.returncode == 0 and out == "" and err == ""


def test_serve_on_a_busy_port_names_it_and_suggests_another(site, capsys):
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]
        code, out, err = run(capsys, "serve", str(site), "--port", str(port))
    assert code == 2 and out == ""
    assert err.strip() == (f"error: port {port} is already in use on 127.0.0.1: stop the "
                           "other server or pick another port with --port")
    err = parse_error(capsys, "serve", str(site), "--port", "70000")
    assert "argument --port: '70000' is not a TCP port (0-65535; 0 picks a free one)" in err


def test_serve_explains_a_folder_that_is_not_a_site(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    for folder, problem in [("missing", "no such folder"), ("notes.txt", "not a folder"),
                            ("empty", "no index.html here (build a report first)")]:
        code, _, err = run(capsys, "serve", str(tmp_path / folder))
        assert code == 2 and err.startswith(f"error: {tmp_path / folder}: {problem}")
        assert "Traceback" not in err


def test_serve_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: site)" in text and "(default: 8000)" in text


@pytest.mark.parametrize("command", ["build", "check"])
def test_device_option_is_checked_like_runtime_device(project, capsys, command):
    spec = str(write_spec(project / "s.yaml"))
    for device in ("gpu", "cuda:x", "CPU"):
        err = parse_error(capsys, command, spec, "--device", device)
        assert (f"argument --device: device {device!r} must be auto, cpu, cuda or cuda:N"
                in err)
        assert "Traceback" not in err and "internal error" not in err
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert cli._parser().parse_args([command, spec, "--device", device]).device == device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_says_so(project, capsys):
    spec = str(write_spec(project / "s.yaml"))
    for command in ("build", "check"):
        code, _, err = run(capsys, command, "-q", spec, "--device", "cuda")
        assert code == 2 and "no CUDA device is available (use auto or cpu)" in err
        assert "Traceback" not in err


def test_layers_refuses_sizes_below_one(capsys):
    for option in ("--input-size", "--classes", "--in-channels"):
        err = parse_error(capsys, "layers", "--architecture", "Unet", "--encoder", "resnet18",
                          option, "0")
        assert f"argument {option}: '0' is not a positive integer" in err


def test_mistaken_paths_are_user_errors_without_traceback(project, capsys):
    (project / "notes.txt").write_text("just notes")
    folder = str(project / "images")
    image = str(project / "images" / "img00.png")
    cases = [
        (["validate", folder], "cannot read the spec"),
        (["build", "-q", folder], "cannot read the spec"),
        (["check", folder], "cannot read the spec"),
        (["layers", "--spec", folder], "cannot read the spec"),
        (["layers", "--spec", str(project / "missing.yaml")], "spec file not found"),
        (["layers", "--spec", str(project / "notes.txt")], "the spec must be a mapping"),
        (["cache", "clear", image], "cannot read the spec"),
        (["cache", "info", str(project / "missing.yaml")], "spec file not found"),
        (["verify", folder], "not a reportgen site (no data/manifest.json)"),
        (["verify", str(project / "notes.txt")], "not a report site folder or a PDF"),
    ]
    for argv, problem in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and problem in " ".join(err.split()), (argv, err)
        assert "Traceback" not in err and "internal error" not in err


def test_a_library_logging_a_traceback_shows_only_its_message(project, capsys, monkeypatch):
    # pyHanko logs the traceback of an unreadable PKCS#12 file before reportgen turns the
    # failure into a user error (`build --sign notes.txt`)
    import reportgen.spec

    def unreadable_key(*args, **kwargs):
        try:
            raise ValueError("Could not deserialize PKCS12 data")
        except ValueError:
            logging.getLogger("pyhanko").exception("Could not load key material")
        raise UserError("--sign notes.txt: cannot read the key and certificate")

    monkeypatch.setattr(reportgen.spec, "load_spec", unreadable_key)
    code, _, err = run(capsys, "validate", str(write_spec(project / "s.yaml")))
    assert code == 2 and "Could not load key material" in err
    assert "error: --sign notes.txt: cannot read the key and certificate" in err
    assert "Traceback" not in err and "deserialize" not in err


def test_quiet_validate_and_check_print_nothing_when_all_is_well(project, capsys):
    spec = write_spec(project / "s.yaml")
    assert run(capsys, "validate", "-q", str(spec)) == (0, "", "")
    code, out, err = run(capsys, "check", "-q", str(spec))
    assert (code, out, err) == (0, "", "")
