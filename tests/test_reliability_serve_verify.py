"""`serve` and `verify` never hand out or trust anything outside the site: links out of
it, paths climbing out of it, foreign Host headers, manifests of the wrong shape and
declared inputs that are folders, devices or link loops."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pikepdf
import pytest
import torch

from reportgen import cli
from reportgen.build import BuildOptions, build
from reportgen.compute.models import build_model
from reportgen.hashing import sha256_file
from reportgen.manifest import write_checksums
from reportgen.verify import verify
from tests.helpers import write_images, write_spec

SMALL = {"metrics": ["attention"], "layers": ["encoder_last"], "methods": ["gradcam"]}
LISTED_TOO_MANY = 200  # files in a "checkpoint folder" that is no save_pretrained folder

# ---------------------------------------------------------------- what a run reads

_WATCHED: list[tuple[str, list[str]]] = []


def _record_reads(event: str, args: tuple) -> None:
    if event not in ("open", "os.scandir", "os.listdir") or not _WATCHED or not args:
        return
    if not isinstance(args[0], str | bytes | os.PathLike):
        return  # a file descriptor: its path was recorded when it was opened
    real = os.path.realpath(os.fsdecode(args[0]))
    for folder, seen in _WATCHED:
        if real == folder or real.startswith(folder + os.sep):
            seen.append(real)


sys.addaudithook(_record_reads)  # audit hooks stay for the process; it records only on demand


@contextlib.contextmanager
def reads_under(folder: Path) -> Iterator[list[str]]:
    """Every file opened and folder listed under `folder` (links resolved) meanwhile."""
    watch = (os.path.realpath(folder), [])
    _WATCHED.append(watch)
    try:
        yield watch[1]
    finally:
        _WATCHED.remove(watch)


# ---------------------------------------------------------------- one real site

@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A built site, with its PDF, whose checkpoint is an smp save_pretrained folder."""
    root = tmp_path_factory.mktemp("project")
    write_images(root, count=2)
    torch.manual_seed(0)
    build_model("UnetPlusPlus", "efficientnet-b0", 1, 3).save_pretrained(str(root / "weights"))
    spec = write_spec(root / "spec.yaml", model={"checkpoint": "weights"}, **SMALL)
    build(spec, BuildOptions())
    return root


@pytest.fixture
def site(project: Path, tmp_path: Path) -> Path:
    """A copy of the built project, free to damage (inputs keep their relative places)."""
    copy = tmp_path / "project"
    shutil.copytree(project, copy, symlinks=True)
    return copy / "site"


def edit_manifest(site: Path, change: Callable[[dict], object]) -> None:
    """Change the site's manifest (`change` gives the new one) and rewrite its checksums to
    match, as a forger would."""
    path = site / "data" / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    write_checksums(site)


def problems(report) -> set[tuple[str, str]]:
    return {(f.path, f.problem) for f in report.problems}


# ---------------------------------------------------------------- serve

@pytest.fixture(scope="module")
def served(project: Path, tmp_path_factory) -> Iterator[tuple[int, Path]]:
    """`reportgen serve` on a copy of the site holding links out of it and into it, with a
    secret file beside the site; yields the port and the site folder."""
    root = tmp_path_factory.mktemp("served")
    site = root / "site"
    shutil.copytree(project / "site", site, symlinks=True)
    (root / "secret.txt").write_text("SECRET beside the site")
    (site / "rootlink").symlink_to("/")
    (site / "passwd.html").symlink_to("/etc/passwd")
    (site / "secret.html").symlink_to("../secret.txt")
    (site / "again.html").symlink_to("index.html")
    (site / "images-again").symlink_to("images", target_is_directory=True)
    server = subprocess.Popen([sys.executable, "-m", "reportgen.cli", "serve", str(site),
                               "--port", "0", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = server.stdout.readline()
        assert line, server.stderr.read()
        yield int(json.loads(line)["url"].rsplit(":", 1)[1].strip("/")), site
    finally:
        server.terminate()
        server.wait(timeout=10)


def http_get(port: int, target: str, host: str | None = "127.0.0.1:{port}") -> tuple[int, bytes]:
    """Send one GET exactly as written (no client normalises the target or the Host);
    the status (0 when the server closed without answering) and the body."""
    lines = [f"GET {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host.format(port=port)}")
    request = "\r\n".join([*lines, "Connection: close", "", ""]).encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    if not reply:
        return 0, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_serve_hands_out_the_site_and_links_that_stay_inside_it(served):
    port, site = served
    status, body = http_get(port, "/")
    assert status == 200 and body == (site / "index.html").read_bytes()
    status, body = http_get(port, "/again.html")
    assert status == 200 and body == (site / "index.html").read_bytes()
    image = next(p.name for p in (site / "images").iterdir() if p.suffix == ".html")
    assert http_get(port, f"/images-again/{image}")[0] == 200
    assert http_get(port, "/index.html", host="localhost:{port}")[0] == 200


@pytest.mark.parametrize("target", [
    "/rootlink/etc/passwd", "/rootlink/", "/passwd.html", "/secret.html",
    "/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/images/..%2f..%2fsecret.txt",
    "//etc/passwd", "/%2Fetc%2Fpasswd", "http://127.0.0.1/../secret.txt",
    "/index.html%00", "/data/", "/data", "/images/"])
def test_serve_refuses_whatever_leaves_the_site_and_lists_no_folder(served, target: str):
    port, _ = served
    status, body = http_get(port, target)
    assert status in (403, 404), (status, body[:200])
    assert b"SECRET" not in body and b"root:" not in body and b"<li>" not in body


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1",
                                  "127.0.0.1", "localhost", "127.0.0.1:{port}.evil.example",
                                  "", None])
def test_serve_refuses_a_host_header_other_than_its_own_address(served, host: str | None):
    """A page of another site that a DNS rebinding points at 127.0.0.1 sends its own name."""
    port, _ = served
    status, body = http_get(port, "/index.html", host=host)
    assert status in (400, 403, 421), (status, body[:200])


# ---------------------------------------------------------------- verify: links

def _link_to_root(site: Path, outside: Path) -> tuple[str, str]:
    (site / "rootlink").symlink_to("/")
    return "rootlink", "/"


def _link_to_a_file_outside(site: Path, outside: Path) -> tuple[str, str]:
    (outside / "notes.html").write_text("<p>notes</p>")
    (site / "notes.html").symlink_to(outside / "notes.html")
    return "notes.html", str(outside / "notes.html")


def _page_replaced_by_a_link_to_its_copy(site: Path, outside: Path) -> tuple[str, str]:
    """The page's bytes are the recorded ones; only they live outside the site now."""
    shutil.move(site / "index.html", outside / "index.html")
    (site / "index.html").symlink_to(outside / "index.html")
    return "index.html", str(outside / "index.html")


def _data_folder_replaced_by_a_link_to_its_copy(site: Path, outside: Path) -> tuple[str, str]:
    shutil.move(site / "data", outside / "data")
    (site / "data").symlink_to(outside / "data", target_is_directory=True)
    return "data", str(outside / "data")


@pytest.mark.parametrize("make_link", [
    _link_to_root, _link_to_a_file_outside, _page_replaced_by_a_link_to_its_copy,
    _data_folder_replaced_by_a_link_to_its_copy])
def test_verify_names_a_link_out_of_the_site_and_never_reads_through_it(
        site: Path, tmp_path: Path, capsys, make_link):
    outside = tmp_path / "outside"
    outside.mkdir()
    name, target = make_link(site, outside)
    with reads_under(outside) as reads:
        code = cli.run_main(["verify", str(site)])
    output = capsys.readouterr()
    assert code == 1, output
    assert f"link out of the site: {name} (points to {target})" in output.out
    assert "Traceback" not in output.err
    assert reads == []


def test_verify_takes_a_link_inside_the_site_for_what_it_is(site: Path):
    (site / "again.html").symlink_to("index.html")
    assert problems(verify(site)) == {("again.html", "extra")}


# ---------------------------------------------------------------- verify: inputs

def test_verify_rehashes_a_save_pretrained_checkpoint_folder(site: Path):
    report = verify(site)
    assert report.ok, report.problems
    assert not [note for note in report.notes if "checkpoint" in note]
    config = site.parent / "weights" / "config.json"
    config.write_text(config.read_text().replace("efficientnet-b0", "efficientnet-b1"))
    assert problems(verify(site)) == {(str(site.parent / "weights"), "input changed")}


def _declare(site: Path, kind: str, location: str, fmt: str = "torch (.pth/.pt/.bin/.ckpt)"):
    def change(manifest: dict) -> dict:
        inputs = manifest["inputs"]
        if kind == "checkpoint":
            inputs["checkpoint"].update(location=location, format=fmt)
        else:
            inputs["images"][0]["location"] = location
        return manifest
    edit_manifest(site, change)


def _a_folder_of_files(place: Path) -> Path:
    place.mkdir()
    for index in range(3):
        (place / f"part{index}.bin").write_bytes(b"weights")
    return place


def test_a_declared_file_that_is_a_folder_is_reported_without_walking_it(site: Path,
                                                                        tmp_path: Path):
    folder = _a_folder_of_files(tmp_path / "elsewhere")
    _declare(site, "checkpoint", str(folder))
    with reads_under(folder) as reads:
        report = verify(site)
    found = [f for f in report.problems if f.path == str(folder)]
    assert [(f.problem, f.detail) for f in found] == [
        ("input unreadable", "checkpoint: a folder, where the manifest records a file")]
    assert reads == []


def test_a_checkpoint_folder_is_walked_only_as_far_as_a_save_pretrained_folder_goes(
        site: Path, tmp_path: Path):
    """`/usr` given as the checkpoint folder was hashed whole (46 s)."""
    folder = tmp_path / "big"
    for index in range(LISTED_TOO_MANY):
        (folder / f"sub{index // 50}").mkdir(parents=True, exist_ok=True)
        (folder / f"sub{index // 50}" / f"{index}.bin").write_bytes(b"x")
    _declare(site, "checkpoint", str(folder), fmt="smp save_pretrained folder")
    with reads_under(folder) as reads:
        report = verify(site)
    found = [f for f in report.problems if f.path == str(folder)]
    assert len(found) == 1 and found[0].problem == "input unreadable"
    assert "more than" in found[0].detail and "save_pretrained" in found[0].detail
    assert not [path for path in reads if Path(path).is_file()]  # no file was opened


@pytest.mark.parametrize("what,make", [
    ("a named pipe", lambda place: os.mkfifo(place) or place),
    ("a device", lambda place: Path("/dev/zero")),
    ("a link loop", lambda place: place.symlink_to(place) or place),
    ("a folder", _a_folder_of_files),
])
def test_a_declared_image_that_is_no_regular_file_is_reported_not_read(
        site: Path, tmp_path: Path, capsys, what: str, make):
    place = make(tmp_path / "img00.png")
    _declare(site, "image", str(place))
    started = time.monotonic()
    code = cli.run_main(["verify", str(site)])
    output = capsys.readouterr()
    assert time.monotonic() - started < 60
    assert code == 1 and "Traceback" not in output.err, output
    assert f"input unreadable: {place} (image img00:" in output.out


# ---------------------------------------------------------------- verify: wrong shapes

def _replace(path: tuple, value: object) -> Callable[[dict], object]:
    """The change that puts `value` at `path` (the whole manifest for an empty path)."""
    def change(manifest: dict) -> object:
        if not path:
            return value
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return manifest
    return change


WRONG_SHAPES = [
    ("spec location a number", ("inputs", "spec", "location"), 5),
    ("spec location a list", ("inputs", "spec", "location"), ["spec.yaml"]),
    ("inputs.spec a string", ("inputs", "spec"), "spec.yaml"),
    ("inputs a list", ("inputs",), []),
    ("images a dict", ("inputs", "images"), {"id": "img00"}),
    ("an image null", ("inputs", "images", 0), None),
    ("an image location a dict", ("inputs", "images", 0, "location"), {"path": "x"}),
    ("checkpoint sha256 a number", ("inputs", "checkpoint", "sha256"), 12),
    ("outputs null", ("outputs",), None),
    ("an output digest a list", ("outputs", "index.html"), ["0" * 64]),
    ("pdf a number", ("pdf",), 7),
    ("the manifest a list", (), []),
]


@pytest.mark.parametrize("case,path,value", WRONG_SHAPES, ids=[c[0] for c in WRONG_SHAPES])
def test_a_site_manifest_of_the_wrong_shape_fails_naming_the_field(
        site: Path, capsys, case: str, path: tuple, value: object):
    edit_manifest(site, _replace(path, value))
    code = cli.run_main(["verify", str(site)])
    output = capsys.readouterr()
    assert code == 1 and "Traceback" not in output.err, output
    assert "changed: data/manifest.json (not a reportgen manifest" in output.out
    if path:
        assert ".".join(str(key) for key in path) in output.out


@pytest.mark.parametrize("case,path,value", WRONG_SHAPES, ids=[c[0] for c in WRONG_SHAPES])
def test_a_pdf_whose_manifest_has_the_wrong_shape_fails_naming_the_field(
        site: Path, tmp_path: Path, capsys, case: str, path: tuple, value: object):
    manifest = _replace(path, value)(json.loads((site / "data" / "manifest.json").read_text()))
    pdf = tmp_path / "hostile.pdf"
    with pikepdf.open(site / "report.pdf") as document:
        document.attachments["manifest.json"].obj.EF.F.write(json.dumps(manifest).encode())
        document.save(pdf)
    code = cli.run_main(["verify", str(pdf)])
    output = capsys.readouterr()
    assert code == 1 and "Traceback" not in output.err, output
    assert "attachment changed: manifest.json (not a reportgen manifest" in output.out


def test_a_checksums_file_with_a_byte_that_is_no_utf8_is_a_changed_file(site: Path, capsys):
    checksums = site / "data" / "checksums.sha256"
    checksums.write_bytes(checksums.read_bytes().replace(b"index.html", b"index.\xffhtml"))
    for target in (site, site / "report.pdf"):
        code = cli.run_main(["verify", str(target)])
        output = capsys.readouterr()
        assert code == 1 and "Traceback" not in output.err, output
        assert "data/checksums.sha256" in output.out


def test_an_unchanged_site_still_verifies_file_by_file(site: Path):
    report = verify(site)
    recorded = json.loads((site / "data" / "manifest.json").read_text())["outputs"]
    assert report.ok and report.checked >= len(recorded) + 3  # + manifest, PDF, inputs
    assert recorded["index.html"] == sha256_file(site / "index.html")
