"""Images, masks and globs read as the user means them, or refused saying why: a glob
never takes a build's own output, follows a symlink loop or misreads a folder's name; CMYK,
alpha-only masks, animations, padded and very wide files are converted, noted or refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from reportgen import cli
from reportgen.compute.data import load_sample, read_image, sample_refs
from reportgen.compute.discovery import find_images
from reportgen.errors import DataError, SpecError
from reportgen.spec import IMAGENET, DataSection, load_spec
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


# ---------------------------------------------------------------- pixels

def _cmyk_by_pillow(path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).convert("CMYK").save(path)


def _cmyk_with_black_ink(path: Path, rgb: np.ndarray) -> None:
    """CMYK as a print shop makes it: the grey part of each colour in the black ink."""
    value = rgb.astype(np.float64) / 255
    black = 1 - value.max(axis=2, keepdims=True)
    inks = (1 - value - black) / np.maximum(1 - black, 1e-9)
    cmyk = np.concatenate([inks, black], axis=2)
    tifffile.imwrite(path, np.rint(cmyk * 255).astype(np.uint8), photometric="separated")


@pytest.mark.parametrize("writer", [_cmyk_by_pillow, _cmyk_with_black_ink],
                         ids=["pillow", "tifffile with black ink"])
def test_a_cmyk_tiff_is_read_in_its_true_colours(tmp_path: Path, writer):
    rgb = _colours()
    writer(tmp_path / "photo.tif", rgb)
    values, notes = read_image(tmp_path / "photo.tif")
    assert np.abs(values * 255 - rgb).max() <= 2  # rounding of the inks only
    assert any("CMYK" in note for note in notes) and not any("alpha" in n for n in notes), notes


def _mask_case(tmp_path: Path, mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
    write_images(tmp_path, count=0, size=SIZE)
    cv2.imwrite(str(tmp_path / "images" / "scan.png"), _colours()[:, :, 0])
    Image.fromarray(mask).save(tmp_path / "masks" / "scan.png")
    spec = load_spec(write_spec(tmp_path / "spec.yaml"))
    sample = load_sample(sample_refs(spec.data)[0], (SIZE, SIZE), 3, IMAGENET)
    return sample.gt_mask, sample.notes


@pytest.mark.parametrize("colour", [0, 255], ids=["black", "white"])
def test_a_mask_drawn_only_in_its_alpha_channel_is_read_from_alpha(tmp_path: Path, colour):
    mask = np.dstack([np.full((SIZE, SIZE), colour, np.uint8)] * 3
                     + [_disc().astype(np.uint8) * 255])
    gt_mask, notes = _mask_case(tmp_path, mask)
    assert (gt_mask == _disc()).all()
    assert any("alpha channel" in note and "used" in note for note in notes), notes


def test_a_colour_mask_whose_alpha_holds_another_shape_says_alpha_was_ignored(tmp_path: Path):
    square = np.zeros((SIZE, SIZE), np.uint8)
    square[:16, :16] = 255
    mask = np.dstack([_disc().astype(np.uint8) * 255] * 3 + [255 - square])
    gt_mask, notes = _mask_case(tmp_path, mask)
    assert (gt_mask == _disc()).all()
    assert any("alpha channel" in note and "ignored" in note for note in notes), notes


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_an_animation_is_read_from_its_first_frame_and_says_so(tmp_path: Path, suffix):
    first = Image.fromarray(_colours())
    path = tmp_path / f"cine{suffix}"
    later = [Image.fromarray(255 - _colours()), Image.fromarray(_colours() // 2)]
    first.save(path, save_all=True, append_images=later)
    values, notes = read_image(path)
    if suffix == ".png":  # a GIF's palette gives the colours only approximately
        assert np.abs(values * 255 - _colours()).max() == 0
    assert any("3 frames" in note and "first" in note for note in notes), notes


def test_a_png_padded_to_20_gb_is_refused_from_its_header_without_reading_it(tmp_path: Path):
    padded, small_tail = tmp_path / "padded.png", tmp_path / "small_tail.png"
    Image.fromarray(_colours()).save(padded)
    Image.fromarray(_colours()).save(small_tail)
    with padded.open("r+b") as file:
        file.truncate(20 * 2**30)  # sparse: costs no disk
    with small_tail.open("ab") as file:
        file.write(b"\0" * 4096)  # such tails (a few bytes to kilobytes) are common
    # under a memory limit of 1 GiB more than the process holds, so reading it all would fail
    script = textwrap.dedent(f"""
        import resource, sys, time
        from pathlib import Path
        from reportgen.compute.data import read_image
        from reportgen.errors import DataError
        pages = int(open("/proc/self/statm").read().split()[0])
        limit = pages * resource.getpagesize() + 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        started = time.monotonic()
        print(read_image(Path({str(small_tail)!r}))[0].shape)
        try:
            read_image(Path({str(padded)!r}))
        except DataError as exc:
            print("refused:", exc)
        print(f"seconds: {{time.monotonic() - started:.1f}}")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"({SIZE}, {SIZE}, 3)"
    assert lines[1].startswith(f"refused: {padded}: ") and "64x64" in lines[1], lines
    assert "GB" in lines[1]
    assert float(lines[2].split()[1]) < 5


@pytest.mark.parametrize("suffix,width,limit", [(".png", 1_000_001, "1000000"),
                                                (".bmp", 2**20 + 1, "CV_IO_MAX_IMAGE_WIDTH")])
def test_an_image_wider_than_opencv_reads_names_the_limit_not_truncation(tmp_path: Path, capfd,
                                                                         suffix, width, limit):
    path = tmp_path / f"strip{suffix}"
    Image.fromarray(np.zeros((1, width), np.uint8)).save(path)
    with pytest.raises(DataError) as info:
        read_image(path)
    message = str(info.value)
    assert f"{width}x1" in message and limit in message and "truncated" not in message
    assert "libpng" not in capfd.readouterr().err
