"""What an installed reportgen carries: every package, and the templates and assets that
live at the top of the repository, in the editable install and in a built wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import venv
from importlib import resources
from pathlib import Path

import pytest

from tests.helpers import write_images, write_spec

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_installation():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "reportgen").rglob("__init__.py")}
    assert listed == on_disk | {"reportgen.templates"}


def test_the_editable_install_reads_the_top_level_templates():
    assert Path(str(resources.files("reportgen.templates"))).resolve() == ROOT / "templates"
    assert resources.files("reportgen.templates").joinpath("assets", "site.css").is_file()


@pytest.mark.slow
def test_a_built_wheel_carries_the_templates_and_builds_a_report(tmp_path: Path):
    """The wheel's reportgen (not this checkout's) builds a site and a PDF from a folder
    outside the checkout. The environment borrows this Python's other packages (torch)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("reportgen-*.whl")
    venv.create(tmp_path / "env", system_site_packages=True, with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    project = tmp_path / "project"
    write_images(project, count=1)
    spec = write_spec(project / "spec.yaml", layers=["encoder_last"], methods=["gradcam"],
                      metrics=["attention"])
    where = subprocess.run([python, "-c", "import reportgen; print(reportgen.__file__)"],
                           cwd=project, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "env")
    built = subprocess.run([tmp_path / "env" / "bin" / "reportgen", "build", "-q", str(spec)],
                           cwd=project, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    site = project / "site"
    assert "<link" in (site / "index.html").read_text() and (site / "assets" / "site.css").stat()
    assert (site / "report.pdf").read_bytes().startswith(b"%PDF")
