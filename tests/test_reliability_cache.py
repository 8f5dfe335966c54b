"""The results cache: rebuilds after a presentation change and resumed builds compute no
map twice, cached pages are byte-identical to computed ones, and cache files stay data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from reportgen import cache, cli
from reportgen.build import BuildOptions, build
from reportgen.compute.cam import CamEngine
from reportgen.compute.pipeline import Pipeline
from tests.helpers import write_images, write_spec

FAST = {"metrics": ["attention", "dice", "localisation"],
        "layers": ["encoder_last", "decoder_last"], "methods": ["gradcam", "layercam"],
        "output": {"pdf": None}}
CACHE = ".reportgen-cache"


@pytest.fixture()
def explain_calls(monkeypatch) -> list[int]:
    """Counts CamEngine.explain calls (one per engine per computed batch)."""
    calls: list[int] = []
    original = CamEngine.explain

    def counted(self, images, *args, **kwargs):
        calls.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(CamEngine, "explain", counted)
    return calls


def entries(root: Path) -> list[Path]:
    return [p for p in (root / CACHE).glob("??/*") if not p.name.startswith(".")]


def site_files(site: Path) -> dict[str, bytes]:
    # the audit page prints the measured stage timings (and the manifest and checksums
    # hash it), so only those may differ between two builds
    timed = {"audit.html", "data/manifest.json", "data/checksums.sha256"}
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in site.rglob("*")
            if p.is_file() and p.relative_to(site).as_posix() not in timed}


def test_presentation_change_recomputes_no_map_and_cached_pages_are_identical(
        tmp_path: Path, explain_calls, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1738281600")
    write_images(tmp_path, count=2)
    spec = write_spec(tmp_path / "spec.yaml", report={"title": "First"}, **FAST)
    build(spec, BuildOptions(cache=False))
    assert explain_calls and not (tmp_path / CACHE).exists()
    computed = site_files(tmp_path / "site")
    explain_calls.clear()
    build(spec, BuildOptions())  # fills the cache
    assert sum(explain_calls) == 2 and len(entries(tmp_path)) == 2
    explain_calls.clear()
    build(spec, BuildOptions())  # everything from the cache
    assert explain_calls == []
    assert site_files(tmp_path / "site") == computed  # byte-identical to computed pages
    write_spec(tmp_path / "spec.yaml", report={"title": "Second", "author": "QA"},
               render={"colormap": "magma", "alpha": 0.3}, **FAST)
    build(spec, BuildOptions())
    assert explain_calls == []
    assert "Second" in (tmp_path / "site" / "index.html").read_text()
    write_spec(tmp_path / "spec.yaml", report={"title": "Second"},
               **{**FAST, "methods": ["gradcam", "gradcam++"]})
    build(spec, BuildOptions())  # the methods changed: every map is recomputed
    assert sum(explain_calls) == 2
    explain_calls.clear()
    other = {"threads": torch.get_num_threads() + 1}
    write_spec(tmp_path / "spec.yaml", report={"title": "Second"}, runtime=other,
               **{**FAST, "methods": ["gradcam", "gradcam++"]})
    build(spec, BuildOptions())  # CPU results depend on the thread count: recomputed
    assert sum(explain_calls) == 2


def test_interrupted_build_resumes_from_the_cache(tmp_path: Path, explain_calls, monkeypatch):
    write_images(tmp_path, count=3)
    spec = write_spec(tmp_path / "spec.yaml", runtime={"batch_size": 1}, **FAST)
    original = Pipeline.process

    def dies_on_the_second_batch(self, part, clock):
        if len(explain_calls) >= 1:
            raise KeyboardInterrupt
        return original(self, part, clock)

    monkeypatch.setattr(Pipeline, "process", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        build(spec, BuildOptions())
    assert not (tmp_path / "site").exists() and len(entries(tmp_path)) == 1
    monkeypatch.setattr(Pipeline, "process", original)
    explain_calls.clear()
    build(spec, BuildOptions())
    assert explain_calls == [1, 1]  # only the two images the interrupted build had not done
    assert len(list((tmp_path / "site" / "images").glob("*.html"))) == 3


def test_no_cache_flag_and_null_setting_neither_read_nor_write(tmp_path: Path, explain_calls,
                                                               capsys):
    write_images(tmp_path, count=1)
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    assert cli.main(["build", "-q", "--no-cache", str(spec)]) == 0
    assert not (tmp_path / CACHE).exists() and explain_calls == [1]
    write_spec(tmp_path / "spec.yaml", runtime={"cache": None}, **FAST)
    build(spec, BuildOptions())
    assert not (tmp_path / CACHE).exists() and explain_calls == [1, 1]
    write_spec(tmp_path / "spec.yaml", runtime={"cache": "elsewhere/cache"}, **FAST)
    build(spec, BuildOptions())
    assert len(list((tmp_path / "elsewhere" / "cache").glob("??/*"))) == 1


def test_cache_clear_removes_the_spec_cache_and_only_a_cache(tmp_path: Path, capsys,
                                                             monkeypatch):
    write_images(tmp_path, count=2)
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    build(spec, BuildOptions())
    assert cli.main(["cache", "clear", str(spec)]) == 0
    assert "removed 2 cached image result(s)" in capsys.readouterr().out
    assert not (tmp_path / CACHE).exists()
    (tmp_path / CACHE).mkdir()
    (tmp_path / CACHE / "thesis.tex").write_text("precious")
    monkeypatch.chdir(tmp_path)
    code = cli.main(["cache", "clear"])
    assert code == 2 and "not reportgen cache entries" in capsys.readouterr().err
    assert (tmp_path / CACHE / "thesis.tex").read_text() == "precious"


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_damaged_or_hostile_cache_entries_are_recomputed_never_run(tmp_path: Path,
                                                                   explain_calls):
    write_images(tmp_path, count=2)
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    build(spec, BuildOptions())
    first = sorted(site_files(tmp_path / "site").items())
    marker = tmp_path / "pwned"
    hostile, damaged = entries(tmp_path)
    (hostile / "arrays.npz").unlink()
    np.savez(hostile / "arrays.npz", probability=np.array([_Payload(str(marker))],
                                                          dtype=object))
    (damaged / "result.json").write_text("{")
    shutil.rmtree(tmp_path / "site")
    explain_calls.clear()
    build(spec, BuildOptions())
    assert not marker.exists()
    assert sum(explain_calls) == 2  # both recomputed
    assert sorted(site_files(tmp_path / "site").items()) == first


def test_cache_keeps_within_its_size_limit_dropping_the_least_recently_used(
        tmp_path: Path, explain_calls, capsys):
    write_images(tmp_path, count=3)
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    build(spec, BuildOptions())
    found = cache.entries(tmp_path / CACHE)
    assert cli.main(["cache", "info", str(spec), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 3 and info["bytes"] == sum(size for _, size, _ in found)
    assert info["max_gb"] == 20

    def image_of(entry: Path) -> str:
        return json.loads((entry / "result.json").read_text())["rows"][0]["image"]

    by_image = {image_of(entry): (entry, size) for entry, size, _ in found}
    # img02 was used last, img00 and img01 long before; then a build reads only those two
    for age, image in enumerate(["img00", "img01", "img02"]):
        os.utime(by_image[image][0], (1e9 + age, 1e9 + age))
    (tmp_path / "images" / "img02.png").unlink()
    explain_calls.clear()
    build(spec, BuildOptions())
    assert explain_calls == []
    # a scratch folder a killed build left long ago goes; one being written stays
    shard = found[0][0].parent
    stale, live = shard / ".deadbeef-stale", shard / ".deadbeef-live"
    for scratch in (stale, live):
        scratch.mkdir()
        (scratch / "arrays.npz").write_bytes(b"\0" * 100)
    os.utime(stale, (1e9, 1e9))
    sizes = [size for _, size in by_image.values()]
    removed, _ = cache.prune(tmp_path / CACHE, sum(sizes) - min(sizes) // 2)  # room for two
    assert removed == 1
    kept = {image_of(entry) for entry, _, _ in cache.entries(tmp_path / CACHE)}
    assert kept == {"img00", "img01"}  # reading them made img02 the least recently used
    assert not stale.exists() and live.exists()


def test_a_build_prunes_the_cache_to_runtime_cache_max_gb(tmp_path: Path, explain_calls):
    write_images(tmp_path, count=3)
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    build(spec, BuildOptions())
    sizes = [size for _, size, _ in cache.entries(tmp_path / CACHE)]
    one_and_a_half = (max(sizes) + min(sizes) // 2) / cache.GB
    write_spec(tmp_path / "spec.yaml", runtime={"cache_max_gb": one_and_a_half}, **FAST)
    explain_calls.clear()
    build(spec, BuildOptions())  # all read from the cache, then pruned to one
    assert explain_calls == [] and len(entries(tmp_path)) == 1
    build(spec, BuildOptions())
    assert sum(explain_calls) == 2  # the two pruned images are computed again
    write_spec(tmp_path / "spec.yaml", runtime={"cache_max_gb": None}, **FAST)
    build(spec, BuildOptions())
    assert len(entries(tmp_path)) == 3
    # a cache folder that also holds someone's file is used, but never pruned
    (tmp_path / CACHE / "notes.txt").write_text("mine")
    write_spec(tmp_path / "spec.yaml", runtime={"cache_max_gb": 1e-9}, **FAST)
    build(spec, BuildOptions())
    assert len(entries(tmp_path)) == 3 and (tmp_path / CACHE / "notes.txt").exists()


def test_compilation_is_decided_on_the_images_the_cache_lacks(tmp_path: Path, monkeypatch):
    """Adding a few images to a cached build must not pay a compilation sized for all."""
    from reportgen.compute import pipeline

    decided: list[int] = []
    monkeypatch.setattr(pipeline, "_compile_pays",
                        lambda spec, device, infos, plan, images: decided.append(images) or False)
    write_images(tmp_path, count=2)
    fast = {**FAST, "methods": ["gradcam", "scorecam"],
            "method_options": {"scorecam": {"max_channels": 2}}}
    spec = write_spec(tmp_path / "spec.yaml", **fast)
    build(spec, BuildOptions())
    write_images(tmp_path, count=3)  # the same two images and a new one
    build(spec, BuildOptions())
    build(spec, BuildOptions())  # nothing to compute
    assert decided == [2, 1, 0]
