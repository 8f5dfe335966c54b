"""Building a report from a spec: the site, the data exports, atomic output folders."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pytest

from reportgen.build import (
    NO_CHECKOUT,
    BuildOptions,
    build,
    versions,
)
from reportgen.compute.data import load_samples
from reportgen.errors import DataError, UserError
from reportgen.manifest import git_commit, shown_location
from reportgen.output import SITE_FOLDERS
from reportgen.spec import load_spec
from tests.helpers import write_images, write_spec
from tests.site_fixtures import parse

FAST = {"metrics": ["attention", "dice", "localisation"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("built")
    write_images(root, count=3)
    spec = write_spec(root / "spec.yaml", report={"title": "Small report", "id": "T-1"},
                      **FAST)
    build(spec, BuildOptions())
    return root


def test_build_writes_pages_metrics_and_maps_for_every_image(built: Path):
    site = built / "site"
    assert (site / "index.html").is_file()
    # output.pdf is refused inside these (pdf_in_site): they must be all the site writes
    assert {p.name for p in site.iterdir() if p.is_dir()} <= set(SITE_FOLDERS)
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
    import html

    from reportgen.compute.metrics import METRICS

    index = html.unescape((built / "site" / "index.html").read_text())  # beside each table
    shown = [m for m in METRICS.values() if m.group in FAST["metrics"]]
    assert {m.group for m in shown} == set(FAST["metrics"])
    for metric in shown:
        assert metric.title in index and metric.formula in index, metric.name


def test_the_spec_bands_decide_the_verdicts(tmp_path: Path):
    from reportgen.compute.metrics.attention import VerdictBands
    from reportgen.compute.metrics.attention import verdict as ratio_verdict

    write_images(tmp_path, count=1)
    bands = {"fair": 20, "good": 50, "excellent": 100}
    spec = load_spec(write_spec(tmp_path / "spec.yaml",
                                metric_options={"attention": {"bands": bands}}))
    chosen = spec.metric_options.attention.bands
    assert chosen == VerdictBands(fair=20.0, good=50.0, excellent=100.0)
    # a ratio of 30: excellent by the default bands, fair by these
    assert ratio_verdict(30.0, VerdictBands()) == "excellent"
    assert ratio_verdict(30.0, chosen) == "fair"


def test_manifest_and_audit_page_name_the_reportgen_version_and_commit(built: Path):
    manifest = json.loads((built / "site" / "data" / "manifest.json").read_text())
    commit = manifest["versions"]["reportgen-commit"]
    assert commit == (git_commit() or NO_CHECKOUT)  # "-dirty" when the source was edited
    assert manifest["git_commit"] == git_commit()  # one source of truth for both fields
    audit = (built / "site" / "audit.html").read_text()
    for text in ("reportgen-commit", commit, manifest["reportgen"]):
        assert f"<td>{text}</td>" in audit or f">{text}</th>" in audit, text


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t",
                           "-c", "commit.gpgsign=false", *args], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_commit_is_marked_dirty_by_changes_to_the_package_only(tmp_path: Path):
    root, package = tmp_path / "checkout", tmp_path / "checkout" / "pkg"
    package.mkdir(parents=True)
    (package / "code.py").write_text("x = 1\n")
    (root / "README").write_text("readme\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "first")
    sha = _git(root, "rev-parse", "HEAD")
    assert git_commit(package) == sha
    (root / "README").write_text("edited elsewhere\n")  # not the package's code
    assert git_commit(package) == sha
    (package / "new.py").write_text("")
    assert git_commit(package) == f"{sha}-dirty"
    (package / "new.py").unlink()
    (package / "code.py").write_text("x = 2\n")
    assert git_commit(package) == f"{sha}-dirty"


def test_source_commit_is_none_without_a_checkout_or_without_git(tmp_path: Path, monkeypatch):
    assert git_commit(tmp_path / "pkg") is None  # installed from a wheel
    (tmp_path / ".git").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git program
    assert git_commit(tmp_path / "pkg") is None
    assert versions()["reportgen-commit"] == NO_CHECKOUT


def test_data_sources_are_shown_relative_to_the_spec(built: Path):
    text = (built / "site" / "index.html").read_text()
    assert "<th scope=\"row\">Image source</th><td>images</td>" in text
    assert "<th scope=\"row\">Mask source</th><td>masks</td>" in text
    assert str(built.resolve()) not in text and str(built) not in text


def test_shown_paths_are_normalised_and_absolute_only_across_the_root(tmp_path: Path):
    specs = tmp_path / "project" / "specs"
    assert shown_location(specs / ".." / "data" / "images", specs) == "../data/images"
    assert shown_location(specs / "images" / "." / "test", specs) == "images/test"
    elsewhere = Path(tmp_path.anchor) / "elsewhere-reportgen" / "images"
    assert shown_location(elsewhere, specs) == elsewhere.as_posix()


def test_audit_page_says_its_timings_end_where_the_page_was_written(built: Path):
    audit = (built / "site" / "audit.html").read_text()
    assert "measured up to the writing of this page" in audit
    manifest = json.loads((built / "site" / "data" / "manifest.json").read_text())
    shown = re.search(r'<th scope="row">render</th><td>([\d.]+) s</td>', audit)
    assert shown is not None and float(shown.group(1)) <= manifest["timings"]["render"] + 0.005


def test_failed_build_keeps_the_previous_site_and_leaves_no_staging(built: Path):
    before = (built / "site" / "index.html").read_bytes()
    bad = built / "images" / "img99.png"
    bad.write_bytes(b"not a png")
    (built / "masks" / "img99.png").write_bytes((built / "masks" / "img00.png").read_bytes())
    try:
        with pytest.raises(DataError, match="img99.png"):
            build(built / "spec.yaml", BuildOptions())
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
            build(built / "spec.yaml", BuildOptions())
    finally:
        sleeper.kill()
        sleeper.wait()
        (built / ".site.lock").unlink(missing_ok=True)


def test_output_in_a_system_folder_needs_force_and_never_the_spec_folder(tmp_path: Path):
    write_images(tmp_path / "p", count=1)
    spec = write_spec(tmp_path / "p" / "spec.yaml", output={"site": "/usr/share/report"},
                      **FAST)
    with pytest.raises(UserError, match="system folder.*--force"):
        build(spec, BuildOptions())
    spec = write_spec(tmp_path / "p" / "spec.yaml", output={"site": "."}, **FAST)
    with pytest.raises(UserError, match="contains the spec's folder"):
        build(spec, BuildOptions(force=True))


def test_folder_that_is_not_a_report_is_not_replaced(tmp_path: Path):
    write_images(tmp_path, count=1)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "thesis.tex").write_text("precious")
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    with pytest.raises(UserError, match="not a reportgen site"):
        build(spec, BuildOptions())
    assert (tmp_path / "site" / "thesis.tex").read_text() == "precious"


def test_stale_lock_of_a_killed_build_is_taken_over(built: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (built / ".site.lock").write_text(str(dead.pid))
    stale = built / f".site.building-{dead.pid}"
    stale.mkdir()
    build(built / "spec.yaml", BuildOptions())
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

    from reportgen.compute.pipeline import _compile_pays
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
        build(spec, BuildOptions(force=True))
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


def test_sanity_rows_show_the_mean_absolute_correlation_the_verdict_compares():
    """Two images at rho +0.7 and -0.65 after full randomisation: the map still follows
    the model's weights (|rho| 0.675, failed); a signed mean would print 0.025."""
    import torch

    from reportgen.build import sanity_rows
    from reportgen.compute.metrics import SanityLevel, SanityResult

    key = ("encoder_last", "gradcam++")
    levels = (SanityLevel("segmentation_head", {key: torch.tensor([0.9, -0.8])},
                          {key: torch.tensor([0.8, 0.6])}),
              SanityLevel("encoder", {key: torch.tensor([0.7, -0.65])},
                          {key: torch.tensor([0.5, 0.3])}))
    (row,) = sanity_rows(SanityResult(levels, threshold=0.5), [key])
    assert row.spearman == pytest.approx([0.85, 0.675])
    assert row.ssim == pytest.approx([0.7, 0.4])
    assert row.passed is False and row.levels == ["segmentation_head", "encoder"]


def test_the_audit_trail_says_what_arithmetic_a_precision_setting_meant():
    import torch

    from reportgen.compute.cam.scorecam import arithmetic

    cuda = torch.device("cuda")  # only named: nothing runs on it
    assert arithmetic("auto", torch.device("cpu")).startswith("float32 (on the CPU")
    assert arithmetic("fp32", cuda) == "float32 throughout, TF32 off"
    assert arithmetic("bf16", cuda).startswith("Score-CAM forwards under bfloat16 autocast")
    assert "TF32 convolutions" in arithmetic("fp16", cuda) and "float16" in arithmetic(
        "fp16", cuda)


def test_manifest_and_audit_page_record_the_arithmetic_of_precision_auto(built: Path):
    manifest = json.loads((built / "site" / "data" / "manifest.json").read_text())
    assert manifest["precision"] == "auto"
    assert manifest["engine"]["arithmetic"].startswith("float32")
    audit = (built / "site" / "audit.html").read_text()
    assert "auto: float32 (on the CPU every precision setting computes in float32)" in audit


def test_a_cuda_index_the_machine_lacks_is_a_user_error(monkeypatch):
    import torch

    from reportgen.compute.cam.engine import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UserError, match=r"'cuda:2' .* has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_the_ratio_definition_prints_the_spec_bands(built: Path):
    from reportgen.compute.metrics.attention import VerdictBands

    methods = (built / "site" / "methods.html").read_text()
    assert "P = predicted mask; verdict: above 5 excellent, 2–5 good, 1–2 fair, below 1 " \
           "concerning" in methods
    assert VerdictBands(excellent=100, good=50, fair=20).text == (
        "above 100 excellent, 50–100 good, 20–50 fair, below 20 concerning")


def test_a_multi_class_model_reads_label_map_masks_for_its_target_class(tmp_path: Path):
    write_images(tmp_path, count=2)
    expected = {}
    for path in sorted((tmp_path / "masks").glob("*.png")):
        disc = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0
        labels = disc.astype(np.uint8)  # 1: the disc's left half, 2: its right half
        labels[:, 32:][disc[:, 32:]] = 2
        cv2.imwrite(str(path), labels)
        expected[path.stem] = labels == 2
    classes = {"model": {"classes": 3, "class_names": ["background", "left", "right"]},
               "target": {"class": "right", "region": "ground_truth"}}
    spec = write_spec(tmp_path / "spec.yaml", **classes, **FAST, output={"pdf": None})
    build(spec, BuildOptions())
    manifest = json.loads((tmp_path / "site" / "data" / "manifest.json").read_text())
    for image in manifest["inputs"]["images"]:
        assert f"mask {image['id']}.png: label map, ground truth where the label is 2" in (
            image["notes"])
    loaded = load_spec(spec)
    for sample in load_samples(loaded.data, loaded.model.size, 3, loaded.model.norm,
                               **loaded.mask_reading):
        assert np.array_equal(sample.gt_mask, expected[sample.id])
    write_images(tmp_path, count=2)  # 0/255 masks: not class indices of a 3-class model
    with pytest.raises(DataError, match="value 255 but the model has 3 classes .*set "
                                        "data.mask_values: binary"):
        build(spec, BuildOptions())
    binary = write_spec(tmp_path / "spec.yaml", **classes, **FAST, output={"pdf": None},
                        data={"mask_values": "binary"})
    assert load_spec(binary).mask_reading == {"mask_label": None, "mask_classes": None}


def test_a_stretched_image_is_a_warning_of_the_report_not_only_a_note_of_its_page(
        tmp_path: Path):
    write_images(tmp_path, count=2)
    for folder in ("images", "masks"):
        path = tmp_path / folder / "img01.png"
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (80, 64),
                                          interpolation=cv2.INTER_NEAREST))
    spec = write_spec(tmp_path / "spec.yaml", **FAST, output={"pdf": None})
    build(spec, BuildOptions())
    site = tmp_path / "site"
    manifest = json.loads((site / "data" / "manifest.json").read_text())
    [warning] = [w for w in manifest["warnings"] if "aspect ratio" in w]
    assert warning.startswith("1 of 2 image(s) were resized to the model's input with a "
                              "change of aspect ratio (up to 25%)")
    import html

    assert warning in html.unescape((site / "audit.html").read_text())
