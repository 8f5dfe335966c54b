"""Building a report from a spec: the site, the data exports, atomic output folders."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from reportgen.build import BuildOptions, build
from reportgen.errors import DataError, UserError
from tests.helpers import write_images, write_spec
from tests.site_fixtures import parse

FAST = {"metrics": ["attention", "dice", "localisation"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("built")
    write_images(root, count=3)
    spec = write_spec(root / "spec.yaml", report={"title": "Small report", "id": "T-1"},
                      **FAST)
    build(spec, BuildOptions(quiet=True))
    return root


def test_build_writes_pages_metrics_and_maps_for_every_image(built: Path):
    site = built / "site"
    assert (site / "index.html").is_file()
    assert sorted(p.name for p in (site / "images").glob("*.html")) == [
        "img00.html", "img01.html", "img02.html"]
    with (site / "data" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    cells = {(r["image"], r["layer"], r["method"]) for r in rows if r["layer"]}
    assert len(cells) == 3 * 3 * 2  # images x layers x methods
    assert {r["metric"] for r in rows} >= {"attention_ratio", "dice", "energy_pointing_game"}
    with zipfile.ZipFile(site / "data" / "maps" / "img00.npz") as npz:
        names = set(npz.namelist())
    assert "encoder_last|gradcam|normalised.npy" in names
    assert "decoder_last|gradcam++|raw.npy" in names
    manifest = json.loads((site / "data" / "manifest.json").read_text())
    assert [i["path"] for i in manifest["inputs"]["images"]] == [
        "img00.png", "img01.png", "img02.png"]
    assert "index.html" in manifest["outputs"]


def test_every_link_and_image_of_a_built_site_resolves_inside_it(built: Path):
    site = (built / "site").resolve()
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 4 + 3
    for page in pages:
        text = page.read_text()
        assert "http://" not in text and "https://" not in text, page
        parsed = parse(page)
        assert all((img.get("alt") or "").strip() for img in parsed.images), page
        for link in parsed.links:
            parts = urlsplit(link)
            if link.startswith("data:") or not parts.path:
                continue
            assert not parts.scheme and not parts.netloc, f"{page.name}: {link}"
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_relative_to(site) and target.is_file(), f"{page.name}: {link}"


def test_metric_definitions_printed_come_from_the_registry(built: Path):
    from reportgen.metrics import METRICS

    index = (built / "site" / "index.html").read_text()
    assert METRICS["attention_ratio"].title in index


def test_failed_build_keeps_the_previous_site_and_leaves_no_staging(built: Path):
    before = (built / "site" / "index.html").read_bytes()
    bad = built / "images" / "img99.png"
    bad.write_bytes(b"not a png")
    (built / "masks" / "img99.png").write_bytes((built / "masks" / "img00.png").read_bytes())
    try:
        with pytest.raises(DataError, match="img99.png"):
            build(built / "spec.yaml", BuildOptions(quiet=True))
    finally:
        bad.unlink()
        (built / "masks" / "img99.png").unlink()
    assert (built / "site" / "index.html").read_bytes() == before
    assert not list(built.glob(".site.*"))


def test_second_build_into_the_same_folder_refuses_while_one_runs(built: Path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (built / ".site.lock").write_text(str(sleeper.pid))
        with pytest.raises(UserError, match=f"another build \\(pid {sleeper.pid}\\)"):
            build(built / "spec.yaml", BuildOptions(quiet=True))
    finally:
        sleeper.kill()
        sleeper.wait()
        (built / ".site.lock").unlink(missing_ok=True)


def test_output_in_a_system_folder_needs_force_and_never_the_spec_folder(tmp_path: Path):
    write_images(tmp_path / "p", count=1)
    spec = write_spec(tmp_path / "p" / "spec.yaml", output={"site": "/usr/share/report"},
                      **FAST)
    with pytest.raises(UserError, match="system folder.*--force"):
        build(spec, BuildOptions(quiet=True))
    spec = write_spec(tmp_path / "p" / "spec.yaml", output={"site": "."}, **FAST)
    with pytest.raises(UserError, match="contains the spec's folder"):
        build(spec, BuildOptions(quiet=True, force=True))


def test_folder_that_is_not_a_report_is_not_replaced(tmp_path: Path):
    write_images(tmp_path, count=1)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "thesis.tex").write_text("precious")
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    with pytest.raises(UserError, match="not a reportgen site"):
        build(spec, BuildOptions(quiet=True))
    assert (tmp_path / "site" / "thesis.tex").read_text() == "precious"


def test_stale_lock_of_a_killed_build_is_taken_over(built: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (built / ".site.lock").write_text(str(dead.pid))
    stale = built / f".site.building-{dead.pid}"
    stale.mkdir()
    build(built / "spec.yaml", BuildOptions(quiet=True))
    assert not (built / ".site.lock").exists() and not stale.exists()
    assert os.path.isfile(built / "site" / "index.html")


@pytest.mark.parametrize(("images", "size", "compile_option", "device", "expected"), [
    (100, 640, "auto", "cuda", True),  # 51,200 masked forwards of 640 px: repays
    (50, 640, "auto", "cuda", False),  # 25,600: the cold compilation would not
    (100, 320, "auto", "cuda", False),  # a quarter of the pixels saves a quarter per forward
    (1000, 640, "auto", "cpu", False),  # auto compiles on CUDA only
    (1, 64, "always", "cpu", True),
    (1000, 640, "never", "cuda", False),
])
def test_score_cam_compiles_when_the_work_repays_it(tmp_path: Path, images, size,
                                                    compile_option, device, expected):
    from types import SimpleNamespace

    import torch

    from reportgen.build import _compile_pays
    from reportgen.spec import load_spec

    write_images(tmp_path, count=1)
    spec = load_spec(write_spec(tmp_path / "spec.yaml", model={"input_size": size},
                                runtime={"compile": compile_option}))
    infos = [SimpleNamespace(name="encoder_last", channels=512),
             SimpleNamespace(name="decoder_last", channels=16)]
    plan = SimpleNamespace(scorecam_layers=["encoder_last"])
    assert _compile_pays(spec, torch.device(device), infos, plan, images) is expected


def test_maps_are_deflated_unless_asked_to_be_stored_and_load_the_same(tmp_path: Path):
    import numpy as np

    write_images(tmp_path, count=1)
    loaded = {}
    for compress in (True, False):
        spec = write_spec(tmp_path / "spec.yaml", layers=["decoder_last"], methods=["gradcam"],
                          output={"pdf": None, "compress_maps": compress}, **FAST)
        build(spec, BuildOptions(quiet=True, force=True))
        path = tmp_path / "site" / "data" / "maps" / "img00.npz"
        with zipfile.ZipFile(path) as npz:
            kinds = {info.compress_type for info in npz.infolist()}
        assert kinds == {zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED}
        with np.load(path, allow_pickle=False) as arrays:
            loaded[compress] = {name: arrays[name] for name in arrays.files}
    assert loaded[True].keys() == loaded[False].keys() == {
        "decoder_last|gradcam|normalised", "decoder_last|gradcam|raw"}
    for name, value in loaded[True].items():
        assert np.array_equal(value, loaded[False][name])
