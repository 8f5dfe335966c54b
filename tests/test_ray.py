"""Scale-out: a build sharded over Ray workers gives the same report as one process."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from reportgen.build import BuildOptions, build
from tests.helpers import write_images, write_spec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="Ray is not installed (pip install 'reportgen[ray]')"),
]

SECTIONS = {
    # efficientnet-b0 U-Net++: its depthwise convolutions' CPU results depend on the
    # thread count, so equal reports need equal runtime.threads
    "model": {"architecture": "UnetPlusPlus", "encoder": "efficientnet-b0", "input_size": 64},
    "layers": ["encoder_mid", "decoder_last"],
    "methods": ["gradcam", "scorecam"],
    "method_options": {"scorecam": {"max_channels": 4}},
    "metrics": ["attention", "dice", "localisation", "faithfulness"],
    "metric_options": {"faithfulness": {"steps": 4}},
    "output": {"pdf": None},
}


def _build(root: Path, name: str, **runtime: object) -> Path:
    spec = write_spec(root / f"{name}.yaml", output={"site": name, "pdf": None},
                      runtime={"batch_size": 2, "device": "cpu", "threads": 1, **runtime},
                      **{k: v for k, v in SECTIONS.items() if k != "output"})
    build(spec, BuildOptions())
    return root / name


def test_report_built_on_local_ray_workers_equals_the_single_process_report(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    write_images(tmp_path, count=5)  # 3 batches over 2 workers: one worker computes two
    single = _build(tmp_path, "single")
    with caplog.at_level(logging.INFO, logger="reportgen.compute.executors"):
        sharded = _build(tmp_path, "sharded", executor="ray", workers=2)
    assert "computing on 2 Ray worker(s)" in caplog.text

    def read(site: Path, relative: str) -> bytes:
        return (site / relative).read_bytes()

    assert read(sharded, "data/metrics.csv") == read(single, "data/metrics.csv")
    assert read(sharded, "data/metrics_summary.csv") == read(single, "data/metrics_summary.csv")
    maps = sorted(p.name for p in (single / "data" / "maps").glob("*.npz"))
    assert len(maps) == 5
    assert sorted(p.name for p in (sharded / "data" / "maps").glob("*.npz")) == maps
    for name in maps:
        assert read(sharded, f"data/maps/{name}") == read(single, f"data/maps/{name}"), name
    pages = sorted(p.relative_to(single).as_posix() for p in single.rglob("*.html"))
    assert "images/img04.html" in pages
    for page in pages:
        if page != "audit.html":  # the timings differ
            assert read(sharded, page) == read(single, page), page
