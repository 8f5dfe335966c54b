"""The command line: exit codes 0 / 1 / 2, messages without tracebacks, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reportgen import cli
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
    spec = write_spec(project / "s.yaml", layers=["encoder_early", "encoder.blocks.38"])
    code, out, _ = run(capsys, "validate", str(spec))
    assert code == 0 and out.splitlines()[0].startswith("ok: ")
    assert out.splitlines()[1] == (
        f"note: module paths (encoder.blocks.38) are checked when the model is built: run "
        f"`reportgen check {spec}`")
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


def test_build_prints_where_the_site_is(project, capsys):
    spec = write_spec(project / "s.yaml", metrics=["attention"], output={"pdf": None})
    code, out, _ = run(capsys, "build", str(spec))
    assert code == 0 and f"site: {project / 'site' / 'index.html'}" in out
