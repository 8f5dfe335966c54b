"""Bad specs, images and masks: refused with the file named, or converted by a rule
that the manifest records. Nothing is computed or written before every input is read."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from reportgen import cli
from reportgen.build import BuildOptions, build
from reportgen.compute.data import check_inputs, sample_refs
from reportgen.errors import DataError
from reportgen.spec import IMAGENET, load_spec
from tests.helpers import write_images, write_spec

FAST = {"metrics": ["attention", "dice", "localisation"], "layers": ["encoder_last"],
        "methods": ["gradcam"], "output": {"pdf": None}}

# ---------------------------------------------------------------- 1. bad specs

BAD_SPECS = [
    # (case, spec sections or raw YAML text, fragments the message must hold)
    ("yaml syntax error", "model: {architecture: Unet\ndata: [\n", ["YAML syntax error"]),
    ("unknown key", {"report": {"titel": "x"}}, ["report.titel", "did you mean 'title'"]),
    ("wrong type", {"runtime": {"batch_size": "eight"}}, ["runtime.batch_size", "integer"]),
    ("missing checkpoint", {"model": {"checkpoint": "nope.pth"}},
     ["model.checkpoint", "not found"]),
    ("glob matching nothing", {"data": {"images": "none/*.png", "masks": None}},
     ["data.images", "no image matches"]),
    ("unknown layer alias", {"layers": ["encoder_lst"]},
     ["layers.0", "did you mean 'encoder_last'"]),
    ("unknown method", {"methods": ["gradcamm"]}, ["methods.0", "valid:"]),
    ("masks missing", {"data": {"masks": "masks/{stem}_gt.png"}},
     ["data.masks", "no mask for 2 of 2"]),
    ("masks unmatched", {"data": {"masks": "masks/nostem.png"}}, ["data.masks", "{stem}"]),
    ("duplicate image names", {"data": {"images": ["images/img00.png", "copy/img00.png"],
                                        "masks": None}},
     ["data.images", "two images share the name 'img00'"]),
    ("limit zero", {"data": {"limit": 0}}, ["data.limit", "positive"]),
    ("limit negative", {"data": {"limit": -3}}, ["data.limit", "positive"]),
    ("unknown class name", {"target": {"class": "tumour"}, "model": {"class_names": ["lesion"]}},
     ["target.class", "'tumour'", "valid: lesion"]),
]


@pytest.mark.parametrize("case,sections,fragments", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_exits_2_naming_file_line_and_field_without_traceback(
        tmp_path: Path, capsys, case, sections, fragments):
    write_images(tmp_path, count=2)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "img00.png").write_bytes((tmp_path / "images" / "img00.png")
                                                  .read_bytes())
    path = tmp_path / "spec.yaml"
    if isinstance(sections, str):
        path.write_text(sections)
    else:
        write_spec(path, **sections)
    code = cli.main(["build", str(path)])
    err = capsys.readouterr().err
    assert code == 2, f"{case}: exit {code}"
    assert "Traceback" not in err
    lines = [line.strip() for line in err.splitlines() if all(f in line for f in fragments)]
    assert lines, f"{case}: no message line holds {fragments}:\n{err}"
    assert lines[0].startswith(f"{path}:") and lines[0].split(":")[1].isdigit(), lines[0]
    assert not (tmp_path / "site").exists()


# ---------------------------------------------------------------- 2. bad images and masks

SIZE = 64


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def _disc(size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 4) ** 2)


def _gray(size: int = SIZE) -> np.ndarray:
    return (np.random.default_rng(0).random((size, size)) * 80 + _disc(size) * 150).astype(
        np.uint8)


def _write_palette(path: Path) -> None:
    Image.fromarray(_gray()).convert("P").save(path)


REFUSED = [
    # (case, image writer, mask writer, fragment of the reason)
    ("zero-byte image", lambda p: p.write_bytes(b""), None, "empty file (0 bytes)"),
    ("truncated png", lambda p: p.write_bytes(_png(_gray())[:300]), None, "not a readable image"),
    ("truncated jpeg", lambda p: p.with_suffix(".png").write_bytes(
        cv2.imencode(".jpg", _gray())[1].tobytes()[:-40]), None, "not a readable image"),
    ("not an image", lambda p: p.write_text("patient,value\n1,2\n"), None,
     "not a readable image"),
    ("not a tiff", lambda p: p.with_suffix(".tif").write_text("hello"), None,
     "not a readable TIFF"),
    ("mask of another aspect ratio", None,
     lambda p: p.write_bytes(_png(np.zeros((SIZE, SIZE * 2), np.uint8))), "aspect ratio"),
    ("zero-byte mask", None, lambda p: p.write_bytes(b""), "mask bad.png: empty file"),
]


@pytest.mark.parametrize("case,image,mask,reason", REFUSED, ids=[r[0] for r in REFUSED])
def test_unreadable_input_is_refused_with_the_file_named(tmp_path: Path, case, image, mask,
                                                         reason):
    write_images(tmp_path, count=1, size=SIZE)
    bad = tmp_path / "images" / "bad.png"
    if image is not None:
        image(bad)
    else:
        bad.write_bytes(_png(_gray()))
    mask_path = tmp_path / "masks" / "bad.png"
    if mask is not None:
        mask(mask_path)
    else:
        mask_path.write_bytes(_png(_disc().astype(np.uint8) * 255))
    spec = load_spec(write_spec(tmp_path / "spec.yaml", data={"images": "images/*"}))
    refs = sample_refs(spec.data)
    with pytest.raises(DataError, match="bad") as info:
        check_inputs(refs, (SIZE, SIZE), 3, IMAGENET)
    assert reason.split(": ")[-1] in str(info.value) and "--keep-going" in str(info.value)
    usable, excluded = check_inputs(refs, (SIZE, SIZE), 3, IMAGENET, keep_going=True)
    assert [r.path.name for r in usable] == ["img00.png"]
    assert [(r.path.stem, reason in why) for r, why in excluded] == [("bad", True)]


def _gray16(path: Path) -> None:
    cv2.imwrite(str(path), _gray().astype(np.uint16) * 257)


def _tiff16(path: Path) -> None:
    tifffile.imwrite(path.with_suffix(".tif"), _gray().astype(np.uint16) * 257)


HANDLED = [
    # (case, image writer, mask writer, note that records the rule)
    ("grayscale", lambda p: p.write_bytes(_png(_gray())), None, "grayscale: replicated"),
    ("rgba", lambda p: p.write_bytes(_png(np.dstack([_gray()] * 3 + [np.full_like(
        _gray(), 128)]))), None, "alpha channel dropped"),
    ("palette", _write_palette, None, "palette (indexed colour): expanded to RGB"),
    ("16-bit png", _gray16, None, "16-bit: scaled by 1/65535"),
    ("16-bit tiff", _tiff16, None, "16-bit: scaled by 1/65535"),
    ("very large (8000x8000)", lambda p: p.write_bytes(_png(np.kron(
        _gray(80), np.ones((100, 100), np.uint8)))), None, None),
    ("mask of another size", None, lambda p: p.write_bytes(_png(
        _disc(SIZE * 2).astype(np.uint8) * 255)), "mask bad.png: 128x128, its image 64x64"),
    ("mask values {0, 7}", None, lambda p: p.write_bytes(_png(_disc().astype(np.uint8) * 7)),
     "binarised at half maximum"),
    ("mask with grey levels", None, lambda p: p.write_bytes(_png(
        (_disc() * 200 + 30).astype(np.uint8))), "2 grey levels, binarised"),
    ("colour mask", None, lambda p: p.write_bytes(_png(np.dstack(
        [_disc().astype(np.uint8) * 255] * 3))), "colour mask"),
]


@pytest.mark.parametrize("case,image,mask,note", HANDLED, ids=[h[0] for h in HANDLED])
def test_convertible_input_is_read_and_its_rule_recorded(tmp_path: Path, case, image, mask,
                                                         note):
    write_images(tmp_path, count=0, size=SIZE)
    bad = tmp_path / "images" / "bad.png"
    (image or (lambda p: p.write_bytes(_png(_gray()))))(bad)
    (mask or (lambda p: p.write_bytes(_png(_disc().astype(np.uint8) * 255))))(
        tmp_path / "masks" / "bad.png")
    spec = load_spec(write_spec(tmp_path / "spec.yaml", data={"images": "images/*"}))
    usable, excluded = check_inputs(sample_refs(spec.data), (SIZE, SIZE), 3, IMAGENET)
    assert excluded == [] and len(usable) == 1
    if note is not None:
        assert any(note in n for n in usable[0].notes), usable[0].notes
    from reportgen.compute.data import load_sample

    sample = load_sample(usable[0], (SIZE, SIZE), 3, IMAGENET)
    assert sample.tensor.shape == (3, SIZE, SIZE) and sample.display.shape == (SIZE, SIZE, 3)
    assert sample.gt_mask is not None and 0.1 < sample.gt_mask.mean() < 0.3  # the disc


def test_a_bad_file_stops_the_build_before_anything_is_written(tmp_path: Path, monkeypatch,
                                                                capsys):
    import reportgen.build

    write_images(tmp_path, count=3, size=SIZE)
    (tmp_path / "images" / "img01.png").write_bytes(b"")
    (tmp_path / "masks" / "img02.png").write_bytes(b"GIF89a")
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    before = sorted(p.name for p in tmp_path.iterdir())

    def never(*args, **kwargs):
        raise AssertionError("the model was built although an input is bad")

    monkeypatch.setattr(reportgen.build, "build_model", never)
    code = cli.main(["build", str(spec)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "2 of 3 input(s) cannot be used" in err
    assert "img01.png: empty file" in err and "masks/img02.png" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no site, staging or lock


def test_keep_going_builds_without_bad_inputs_and_lists_them(tmp_path: Path, capsys):
    write_images(tmp_path, count=2, size=SIZE)
    (tmp_path / "images" / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    code = cli.main(["build", "--keep-going", "--json", "-q", str(spec)])
    assert code == 0, capsys.readouterr().err
    site = tmp_path / "site"
    assert sorted(p.name for p in (site / "images").glob("*.html")) == ["img00.html"]
    manifest = json.loads((site / "data" / "manifest.json").read_text())
    assert manifest["excluded"] == [{"location": "images/img01.png", "reason": (
        "not a readable image (truncated, or not the format its extension says)")}]
    assert [i["path"] for i in manifest["inputs"]["images"]] == ["img00.png"]
    assert any("excluded" in w for w in manifest["warnings"])
    audit = (site / "audit.html").read_text()
    assert "Excluded inputs" in audit and "<code>images/img01.png</code>" in audit
    assert "Excluded inputs" in (site / "index.html").read_text()


def test_keep_going_with_no_usable_image_is_refused(tmp_path: Path):
    write_images(tmp_path, count=1, size=SIZE)
    (tmp_path / "images" / "img00.png").write_bytes(b"")
    spec = write_spec(tmp_path / "spec.yaml", **FAST)
    with pytest.raises(DataError, match="none of the 1 input image"):
        build(spec, BuildOptions(keep_going=True))
    assert not (tmp_path / "site").exists()
