"""Images, masks and globs read as the user means them, or refused saying why: a glob
never takes a build's own output, follows a symlink loop or misreads a folder's name; CMYK,
alpha-only masks, animations, padded and very wide files are converted, noted or refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from reportgen import cli
from reportgen.errors import SpecError
from reportgen.spec import DataSection, find_images, load_spec
from tests.helpers import write_images, write_spec

FAST = {"metrics": ["dice"], "layers": ["encoder_last"], "methods": ["gradcam"],
        "output": {"pdf": None}}
SIZE = 64


def _disc(size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 4) ** 2


def _colours(size: int = SIZE) -> np.ndarray:
    """An RGB photo-like image: every channel different, dark and light pixels."""
    rng = np.random.default_rng(1)
    return (rng.random((size, size, 3)) * 200 + _disc(size)[:, :, None] * 55).astype(np.uint8)


# ---------------------------------------------------------------- globs and folders

def test_a_glob_over_the_output_folder_never_takes_the_builds_own_figures(tmp_path: Path,
                                                                          capsys):
    write_images(tmp_path, count=2, size=SIZE)
    spec = write_spec(tmp_path / "spec.yaml", **{**FAST, "data": {"images": "images/**/*.png"},
                                                 "output": {"site": "images/site", "pdf": None}})
    assert cli.main(["build", "-q", str(spec)]) == 0, capsys.readouterr().err
    assert list((tmp_path / "images" / "site").rglob("*.png"))  # figures a glob could take

    code = cli.main(["build", str(spec)])  # the second build meets the first one's figures
    err = capsys.readouterr().err
    assert code == 0, err
    manifest = json.loads((tmp_path / "images" / "site" / "data" / "manifest.json").read_text())
    assert [i["path"] for i in manifest["inputs"]["images"]] == ["img00.png", "img01.png"]
    assert "under the output folder" in err and "left out" in err


def test_staging_old_and_cache_folders_are_no_inputs_either(tmp_path: Path):
    images = tmp_path / "ds"
    for folder in ("scans", "site/thumbs", ".site.building-77/thumbs", ".site.old-78/thumbs",
                   "cache/entries"):
        (images / folder).mkdir(parents=True)
        cv2.imwrite(str(images / folder / "a.png"), np.zeros((8, 8), np.uint8))
    outputs = (images / "site", images / "cache")
    for pattern in ("ds/**/*.png", "ds/.site.*/thumbs/*.png", "ds/*/entries/*.png"):
        data = DataSection(images=str(tmp_path / pattern))
        found = find_images(data, outputs)
        assert [p.relative_to(images).as_posix() for p in found] == (
            ["scans/a.png"] if pattern.startswith("ds/**") else []), pattern


def test_a_glob_through_symlink_loops_ends_and_names_each_link_once(tmp_path: Path):
    write_images(tmp_path, count=2, size=SIZE)
    (tmp_path / "images" / "again").symlink_to(".")
    (tmp_path / "images" / "up").symlink_to("../images")
    spec = write_spec(tmp_path / "spec.yaml", data={"images": "images/**/*.png"})
    started = time.monotonic()
    # a process of its own: before the fix this search ran for hours
    done = subprocess.run([sys.executable, "-m", "reportgen.cli", "validate", str(spec)],
                          capture_output=True, text=True, timeout=90,
                          env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    assert "2 images" in done.stdout
    loops = [line for line in done.stderr.splitlines() if "not followed" in line]
    assert len(loops) == 2 and all(len(line.rstrip()) < 400 for line in loops), done.stderr
    assert any("again" in line for line in loops) and any("up" in line for line in loops)


def test_a_folder_named_with_brackets_is_found_as_written(tmp_path: Path):
    study = tmp_path / "study [2024]"
    write_images(study, count=2, size=SIZE)
    spec = load_spec(write_spec(tmp_path / "spec.yaml", data={
        "images": "study [2024]/images/*.png", "masks": "study [2024]/masks/{stem}.png"}))
    assert [p.name for p in find_images(spec.data)] == ["img00.png", "img01.png"]


def test_a_bracket_pattern_matching_nothing_says_how_to_escape_brackets(tmp_path: Path):
    write_images(tmp_path / "study [2024]", count=1, size=SIZE)
    spec = write_spec(tmp_path / "spec.yaml", data={"images": "study [2024]*/images/*.png",
                                                   "masks": None})
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    message = str(info.value)
    assert "no image matches" in message and "[[]" in message
    assert "glob syntax" in message and f"{tmp_path / 'study [2024]'}" in message
