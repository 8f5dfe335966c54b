"""Whole builds under faults: bad weights, numerical trouble, killed and concurrent
builds, hostile names, no network. Each fault is reported, never a crash, a NaN shown
as a number, a half-written site or a request leaving the machine."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pypdf import PdfReader

from reportgen import build as build_module
from reportgen import cli
from reportgen.build import BuildOptions, build
from reportgen.compute.data import safe_id
from reportgen.compute.models import build_model
from reportgen.errors import UserError
from reportgen.output import inside, pdf_in_site
from tests.helpers import write_images, write_spec

ROOT = Path(__file__).resolve().parents[1]
FAST = {"metrics": ["attention", "dice", "localisation"], "layers": ["encoder_last"],
        "methods": ["gradcam"], "output": {"pdf": None}}
# A NaN or infinity printed where a number belongs (words such as "NaN or infinite" in a
# reason are fine: they explain the n/a).
NUMBER_NAN = re.compile(r"(?<![\w./-])-?(nan|inf|infinity)(?![\w./-])(?! or infinite)", re.I)


def numbers_shown_as_nan(site: Path) -> list[str]:
    """Every NaN/inf the site's pages or metric exports show as a number."""
    found = []
    for page in [*site.rglob("*.html"), site / "data" / "metrics.json",
                 site / "data" / "metrics.csv"]:
        text = re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8"))
        found += [f"{page.name}: {m.group(0)}" for m in NUMBER_NAN.finditer(text)]
    return found


def save_checkpoint(path: Path, change) -> Path:
    """A UnetPlusPlus/efficientnet-b0 state_dict with `change(state)` applied."""
    torch.manual_seed(0)
    state = build_model("UnetPlusPlus", "efficientnet-b0", 1, 3).state_dict()
    change(state)
    torch.save(state, path)
    return path


# ---------------------------------------------------------------- 3 + 7. weights and numbers


def test_nan_weights_give_invalid_verdicts_never_a_nan_number(tmp_path: Path):
    write_images(tmp_path, count=2)

    def poison(state):
        state["segmentation_head.0.weight"].fill_(float("nan"))

    save_checkpoint(tmp_path / "poisoned.pth", poison)
    faithful = {"metrics": [*FAST["metrics"], "faithfulness"],
                "metric_options": {"faithfulness": {"steps": 2, "layers": ["encoder_last"]}}}
    spec = write_spec(tmp_path / "spec.yaml", model={"checkpoint": "poisoned.pth"},
                      **{**FAST, **faithful})
    result = build(spec, BuildOptions())
    site = tmp_path / "site"
    assert any("NaN or infinite weights" in w for w in result.warnings)
    page = (site / "images" / "img00.html").read_text()
    assert "invalid" in page and "NaN or infinite values" in page
    rows = json.loads((site / "data" / "metrics.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert rows and all(r["value"] is None for r in rows)
    assert {r["status"] for r in rows if r["metric"] == "dice"} == {"invalid"}
    # the faithfulness the spec asked of these maps is n/a with the map's reason, not
    # missing (which the pages would call "outside the limits set by the spec")
    deletion = [r for r in rows if r["metric"] == "deletion_auc"]
    assert deletion and {r["layer"] for r in deletion} == {"encoder_last"}
    assert all(r["status"] != "ok" and r["reason"] for r in deletion)
    assert numbers_shown_as_nan(site) == []


def test_empty_predictions_and_a_constant_image_are_reported_per_image(tmp_path: Path):
    write_images(tmp_path, count=2)
    cv2.imwrite(str(tmp_path / "images" / "flat.png"), np.zeros((64, 64), np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "flat.png"), np.zeros((64, 64), np.uint8))

    def nothing_predicted(state):
        state["segmentation_head.0.bias"].fill_(-1e4)

    save_checkpoint(tmp_path / "empty.pth", nothing_predicted)
    spec = write_spec(tmp_path / "spec.yaml", model={"checkpoint": "empty.pth"}, **FAST)
    result = build(spec, BuildOptions())
    site = tmp_path / "site"
    assert result.images == 3
    rows = json.loads((site / "data" / "metrics.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    for image in ("img00", "img01", "flat"):
        ratio = [r for r in rows if r["image"] == image and r["metric"] == "attention_ratio"]
        assert ratio and ratio[0]["value"] is None and ratio[0]["reason"], ratio
        page = (site / "images" / f"{image}.html").read_text()
        assert "empty" in page and "n/a" in page
    assert numbers_shown_as_nan(site) == []


# ---------------------------------------------------------------- 4. atomic and locked builds


def _python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "reportgen.cli", *argv]


def _site_files(site: Path) -> dict[Path, bytes]:
    return {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}


def _built(root: Path, images: int) -> tuple[Path, Path, dict[Path, bytes]]:
    """A project of `images` images under `root`, built once: (its spec, its site, the
    site's files), the previous site a later build must keep."""
    write_images(root, count=images)
    spec = write_spec(root / "spec.yaml", **FAST)
    build(spec, BuildOptions())
    return spec, root / "site", _site_files(root / "site")


@contextlib.contextmanager
def _slow_build_writing(spec: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A CLI build of `spec` made slow (Score-CAM, batches of 1, a changed title), caught
    once it writes into its scratch folder: (the process, that folder). Killed on exit
    if still running."""
    write_spec(spec, **{**FAST, "methods": ["gradcam", "scorecam"]},
               runtime={"batch_size": 1}, report={"title": "changed"})
    running = subprocess.Popen(_cli("build", "-q", "--no-cache", str(spec)),
                               env=_python_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    staging = spec.parent / f".site.building-{running.pid}"
    try:
        deadline = time.monotonic() + 120
        while not (staging.is_dir() and any(p.is_file() for p in staging.rglob("*"))):
            assert running.poll() is None, running.communicate()[1].decode()
            assert time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.05)
        yield running, staging
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
        running.stdout.close()
        running.stderr.close()


def test_killed_build_leaves_the_site_and_a_concurrent_build_is_refused(tmp_path: Path):
    spec, site, before = _built(tmp_path, 6)
    with _slow_build_writing(spec) as (first, staging):
        second = subprocess.run(_cli("build", "-q", str(spec)), env=_python_env(),
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first build ended before it could be killed"
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"another build (pid {first.pid}) is writing" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert staging.is_dir() and (tmp_path / ".site.lock").is_file()  # killed mid-way
    assert _site_files(site) == before  # the previous site, complete and unchanged
    write_spec(tmp_path / "spec.yaml", **FAST, report={"title": "changed"})
    build(spec, BuildOptions())
    assert not staging.exists() and not (tmp_path / ".site.lock").exists()
    assert "changed" in (site / "index.html").read_text()


# ---------------------------------------------------------------- 6. security

HOSTILE = '<script>alert("t")</script> & "q"'
HOSTILE_STEM = 'x"><img src=x onerror=alert(1)>'


def test_hostile_title_and_file_names_are_escaped_in_site_and_pdf(tmp_path: Path):
    write_images(tmp_path, count=1)
    for folder in ("images", "masks"):
        os.replace(tmp_path / folder / "img00.png", tmp_path / folder / f"{HOSTILE_STEM}.png")
    (tmp_path / "images" / "bad<b>.png").write_bytes(b"")
    (tmp_path / "masks" / "bad<b>.png").write_bytes(b"")
    spec = write_spec(tmp_path / "spec.yaml", **{**FAST, "output": {}},
                      report={"title": HOSTILE, "author": HOSTILE, "description": HOSTILE})
    build(spec, BuildOptions(keep_going=True))
    site = tmp_path / "site"
    pages = list(site.rglob("*.html"))
    assert [p.name for p in (site / "images").glob("*.html")] == [
        f"{safe_id(HOSTILE_STEM, set())}.html"]
    for page in pages:
        text = page.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>" not in text
    assert "&lt;script&gt;alert" in (site / "index.html").read_text()
    assert "bad&lt;b&gt;.png" in (site / "audit.html").read_text()
    text = " ".join(p.extract_text() or "" for p in PdfReader(site / "report.pdf").pages)
    text = re.sub(r"\s+", "", text)
    assert '<script>alert("t")</script>' in text  # printed as text, not interpreted
    assert "bad<b>.png" in text  # the excluded input, named in the PDF too
    outside = sorted(p.name for p in tmp_path.iterdir())
    assert outside == sorted([".reportgen-cache", "images", "masks", "site", "spec.yaml"])


@pytest.mark.parametrize("stem", ["..", "../../etc/passwd", "/abs", "a b\\c", "ü.ber", "", "."])
def test_page_ids_from_file_names_stay_inside_the_output_folder(tmp_path: Path, stem: str):
    page_id = safe_id(stem, set())
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", page_id)
    assert inside(tmp_path, tmp_path / "images" / f"{page_id}.html")
    with pytest.raises(UserError, match="outside the output folder"):
        inside(tmp_path, tmp_path / "images" / f"{stem}.html" if "/" in stem else
               tmp_path / ".." / "x.html")


def test_serve_binds_the_loopback_address_only(tmp_path: Path, monkeypatch):
    import http.server

    (tmp_path / "index.html").write_text("<p>report</p>")
    servers: list[http.server.ThreadingHTTPServer] = []

    class Recorded(http.server.ThreadingHTTPServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            servers.append(self)

    monkeypatch.setattr(http.server, "ThreadingHTTPServer", Recorded)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(
        cli.main(["serve", "-q", str(tmp_path), "--port", "0"])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not servers:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    server = servers[0]
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as reply:
            assert b"report" in reply.read()
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert codes == [0]


def test_build_needs_no_network(tmp_path: Path, monkeypatch):
    write_images(tmp_path, count=1)
    spec = write_spec(tmp_path / "spec.yaml", **{**FAST, "output": {}})

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)  # seen even if the build caught the error and went on
        raise OSError("network access during a build")

    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    result = build(spec, BuildOptions())
    assert (result.site / "index.html").is_file() and result.pdf and result.pdf.is_file()
    assert attempts == []


def _site_bytes(site: Path) -> dict[str, bytes]:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in site.rglob("*")
            if p.is_file()}


def test_render_workers_change_no_byte_and_a_failing_one_leaves_no_site(
        tmp_path: Path, monkeypatch):
    from reportgen.render.site import SiteWriter

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1738281600")  # no timings on the audit page
    write_images(tmp_path, count=5)
    sections = {**FAST, "layers": ["encoder_last", "decoder_last"],
                "methods": ["gradcam", "layercam"], "output": {"pdf": None, "single_file": True}}
    spec = write_spec(tmp_path / "spec.yaml", runtime={"batch_size": 2}, **sections)
    original = SiteWriter.prepare_image
    threads: set[str] = set()

    def recorded(self, result):
        threads.add(threading.current_thread().name)
        return original(self, result)

    monkeypatch.setattr(SiteWriter, "prepare_image", recorded)
    built = {}
    for workers in (1, 4):  # the same spec (the audit page prints it), so set from here
        monkeypatch.setattr(build_module, "render_workers", lambda spec, n=workers: n)
        build(spec, BuildOptions(cache=False, force=True))
        built[workers] = _site_bytes(tmp_path / "site")
    assert len(built[1]) > 40 and "report-single.html" in built[1]
    assert built[4] == built[1]  # pages, figures, maps, agreement sums, single file
    assert threads and all(name.startswith("reportgen-render") for name in threads)

    def failing(self, result):
        if result.id.endswith("03"):
            raise RuntimeError("figure encoder failed")
        return original(self, result)

    monkeypatch.setattr(SiteWriter, "prepare_image", failing)
    before = _site_bytes(tmp_path / "site")
    with pytest.raises(RuntimeError, match="figure encoder failed"):
        build(spec, BuildOptions(cache=False, force=True))
    assert _site_bytes(tmp_path / "site") == before  # the previous site, untouched
    assert not list(tmp_path.glob(".site.*"))


def test_out_of_memory_halves_batches_keeps_the_numbers_and_is_in_the_manifest(
        tmp_path: Path, monkeypatch):
    from reportgen.compute.metrics import registry

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1738281600")
    write_images(tmp_path, count=3)
    spec = write_spec(tmp_path / "spec.yaml", runtime={"batch_size": 4},
                      metrics=["attention", "faithfulness"], layers=["decoder_last"],
                      methods=["gradcam"], metric_options={"faithfulness": {"steps": 4}},
                      output={"pdf": None})
    build(spec, BuildOptions(cache=False))
    site = tmp_path / "site"
    expected = _metric_values(site)
    manifest = json.loads((site / "data" / "manifest.json").read_text())
    assert manifest["events"] == [] and manifest["engine"] == {
        "scorecam_compiled": False,
        "arithmetic": "float32 (on the CPU every precision setting computes in float32)",
        "approximate": []}

    original_score = registry.target_score_fn

    def score_oom(*args, **kwargs):
        score = original_score(*args, **kwargs)

        def limited(images):
            if len(images) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return score(images)

        return limited

    _engine_oom_above_one_image(monkeypatch)
    monkeypatch.setattr(registry, "target_score_fn", score_oom)
    build(spec, BuildOptions(cache=False))
    manifest = json.loads((site / "data" / "manifest.json").read_text())
    assert manifest["events"] == [
        "img00: out of memory; batch size halved to 1",
        "img00: faithfulness out of memory; batch halved to 2",
    ]  # once each: later batches and images start from the size that fitted
    found = _metric_values(site)  # equal up to float rounding (batch size changes the sums)
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def _metric_values(site: Path) -> dict[tuple[str, ...], float | str]:
    with (site / "data" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    return {(r["image"], r["layer"], r["method"], r["metric"]):
            float(r["value"]) if r["value"] else r["status"] for r in rows}


def test_sanity_levels_start_from_the_batch_size_that_fitted(tmp_path: Path, monkeypatch):
    write_images(tmp_path, count=2)
    spec = write_spec(tmp_path / "spec.yaml", runtime={"batch_size": 2},
                      metrics=["attention", "sanity"], layers=["decoder_last"],
                      methods=["gradcam"],
                      metric_options={"sanity": {"images": 2, "levels": 3}},
                      output={"pdf": None})
    _engine_oom_above_one_image(monkeypatch)
    build(spec, BuildOptions(cache=False))
    manifest = json.loads((tmp_path / "site" / "data" / "manifest.json").read_text())
    # the images' batch halves once; the sanity check's engines (one per level plus the
    # trained model) halve once, then start from one image
    assert manifest["events"] == ["img00: out of memory; batch size halved to 1",
                                  "sanity check: out of memory; batch size halved to 1"]


def _engine_oom_above_one_image(monkeypatch) -> None:
    """Every engine batch of more than one image fails as a CUDA out-of-memory would."""
    from reportgen.compute.cam import CamEngine

    original = CamEngine._explain_batch

    def engine_oom(self, images, *args, **kwargs):
        if len(images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(CamEngine, "_explain_batch", engine_oom)


@pytest.mark.parametrize(("pdf", "message"), [
    ("site", "is the site folder itself"),
    ("site/index.html", "must end in .pdf"),
    ("site/data/report.pdf", "in the site's own folder data/"),
    ("site/assets/x.pdf", "in the site's own folder assets/"),
    ("elsewhere/report.pdf", "must lie inside output.site"),
])
def test_a_pdf_path_that_would_overwrite_the_site_is_refused(tmp_path: Path, pdf: str,
                                                           message: str):
    with pytest.raises(UserError, match=re.escape(message)):
        pdf_in_site(tmp_path / "site", tmp_path / pdf)
    assert pdf_in_site(tmp_path / "site", tmp_path / "site/dossier/VAL-1.pdf") == Path(
        "dossier/VAL-1.pdf")


def test_a_terminated_build_cleans_up_and_keeps_the_previous_site(tmp_path: Path):
    spec, site, before = _built(tmp_path, 4)
    with _slow_build_writing(spec) as (running, staging):
        running.send_signal(signal.SIGTERM)
        assert running.wait(timeout=60) == 128 + signal.SIGTERM
        assert running.stderr.read().decode().strip() == "terminated"
    assert not staging.exists() and not (tmp_path / ".site.lock").exists()
    assert _site_files(site) == before


def test_a_stop_asked_during_the_build_keeps_the_previous_site(tmp_path: Path, monkeypatch):
    """Ctrl-C raised inside a library's finalizer is dropped by Python; the flag the
    handler sets first still stops the finished build from replacing the site."""
    from reportgen import output

    spec, site, before = _built(tmp_path, 2)
    write_spec(tmp_path / "spec.yaml", **FAST, report={"title": "changed"})
    monkeypatch.setattr(output, "STOP", threading.Event())
    output.STOP.set()  # as the SIGINT handler does, its KeyboardInterrupt lost
    with pytest.raises(KeyboardInterrupt):
        build(spec, BuildOptions())
    assert _site_files(site) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".reportgen-cache", "images", "masks", "site", "spec.yaml"]
