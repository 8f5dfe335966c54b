"""The output folder under faults of the machine: a build killed between the swap's two
renames, locks and scratch folders whose PID another process now holds, a cache inside
the site, a site that is a symbolic link, a full or read-only disk, and a current folder
deleted under the user. A report is never lost, a build is never refused forever, and
the user reads what went wrong, naming the file."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reportgen import cli, output
from reportgen.build import BuildOptions, build
from reportgen.errors import UserError
from tests.helpers import write_images, write_spec

ROOT = Path(__file__).resolve().parents[1]
FAST = {"metrics": ["attention"], "layers": ["encoder_last"], "methods": ["gradcam"],
        "output": {"pdf": None}}


def _site_files(site: Path) -> dict[Path, bytes]:
    return {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}


def _leftovers(folder: Path, name: str = "site") -> list[str]:
    """Scratch folders, old sites and locks of builds of `name` left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _verify(site: Path, capsys) -> int:
    code = cli.main(["verify", "-q", str(site)])
    capsys.readouterr()
    return code


@pytest.fixture(scope="module")
def built_project(tmp_path_factory) -> Path:
    """A project of two images built once (cached); each test works on a copy of it."""
    root = tmp_path_factory.mktemp("built")
    write_images(root, count=2)
    build(write_spec(root / "spec.yaml", **FAST, report={"title": "first"}), BuildOptions())
    return root


@pytest.fixture()
def project(built_project: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(built_project, copy)
    return copy


# ---------------------------------------------------------------- a crash inside the swap

KILLED_AT_SECOND_RENAME = """
import os, signal, sys
from reportgen import cli

rename = os.replace

def replace(source, target):
    # the power fails once the previous site is moved aside, before the new one moves in
    if os.path.basename(source).startswith(".site.building-"):
        os.kill(os.getpid(), signal.SIGKILL)
    rename(source, target)

os.replace = replace
sys.exit(cli.run_main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def killed_in_the_swap(built_project: Path, tmp_path_factory) -> Path:
    """The built project after a build of a new report ("second") was killed between
    moving the previous site aside and moving its own in: no site, two folders."""
    root = tmp_path_factory.mktemp("killed")
    shutil.copytree(built_project, root, dirs_exist_ok=True)
    spec = write_spec(root / "spec.yaml", **FAST, report={"title": "second"})
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_SECOND_RENAME, "build", "-q",
                             str(spec)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (root / "site").exists()
    assert [name.rsplit("-", 1)[0] for name in _leftovers(root)] == [
        ".site.building", ".site.lock", ".site.old"]
    return root


def _bad_layer(project: Path) -> Path:
    # passes spec validation; found when the model is built, after the lock is taken
    return write_spec(project / "other.yaml", **{**FAST, "layers": ["encoder.no_such_block"]})


def _bad_image(project: Path) -> Path:
    # found when the inputs are read, before the lock is taken
    (project / "images" / "img99.png").write_bytes(b"")
    shutil.copy(project / "masks" / "img00.png", project / "masks" / "img99.png")
    return project / "spec.yaml"


@pytest.mark.parametrize("next_build_fails", [_bad_layer, _bad_image],
                         ids=["on a layer, after the lock", "on an input, before the lock"])
def test_a_build_killed_inside_the_swap_leaves_a_report_the_next_build_puts_back(
        killed_in_the_swap: Path, tmp_path: Path, next_build_fails, caplog, capsys):
    project = tmp_path / "project"
    shutil.copytree(killed_in_the_swap, project)
    spec = next_build_fails(project)
    with caplog.at_level(logging.WARNING, logger="reportgen"), pytest.raises(
            UserError, match="no_such_block|img99.png: empty file"):
        build(spec, BuildOptions())
    site = project / "site"
    # the newest complete report, the one the killed build had finished, is in place
    assert "second" in (site / "index.html").read_text()
    assert _verify(site, capsys) == 0
    assert _leftovers(project) == []
    assert any(".site.building-" in r.getMessage() and "put back" in r.getMessage()
               for r in caplog.records)


def test_a_failed_second_rename_puts_the_previous_site_back(project: Path, monkeypatch):
    before = _site_files(project / "site")
    write_spec(project / "spec.yaml", **FAST, report={"title": "second"})
    rename = os.replace

    def replace(source, target):
        if os.path.basename(source).startswith(".site.building-"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(source))
        rename(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        build(project / "spec.yaml", BuildOptions())
    assert _site_files(project / "site") == before
    assert _leftovers(project) == []


# ---------------------------------------------------------------- locks and reused PIDs


def _start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _before_pid_1_started() -> float:
    """A time before PID 1 started: what a lock or folder left by a build before a
    container restart (or a reboot) holds."""
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + _start_ticks(1) / os.sysconf("SC_CLK_TCK") - 3600


def test_locks_and_scratch_folders_whose_pid_is_reused_do_not_block_builds(project: Path):
    """A build killed in a container left its lock and folders; after the restart, its PID
    is this build's own, or PID 1, which always runs."""
    old = _before_pid_1_started()
    lock = project / ".site.lock"
    lock.write_text(str(os.getpid()))  # the format of earlier versions: a PID alone
    os.utime(lock, (old, old))
    stale = [project / ".site.building-1", project / f".site.old-{os.getpid()}"]
    for folder in stale:
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "metrics.csv").write_text("image,layer\n")
        os.utime(folder, (old, old))
    write_spec(project / "spec.yaml", **FAST, report={"title": "second"})
    build(project / "spec.yaml", BuildOptions())
    assert "second" in (project / "site" / "index.html").read_text()
    assert _leftovers(project) == []


@pytest.mark.parametrize("recorded", [
    {"pid": 1, "start": "another", "boot": "this"},  # PID 1 after a container restart
    {"pid": "sleeper", "start": "its", "boot": "another"},  # written before a reboot
    {"pid": 1},  # an earlier version's lock, its mtime older than PID 1
], ids=["pid 1 restarted", "another boot", "pid alone, older than its process"])
def test_a_lock_whose_process_no_longer_runs_is_taken_over(tmp_path: Path, recorded: dict):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid = sleeper.pid if recorded["pid"] == "sleeper" else recorded["pid"]
        record = {"pid": pid}
        if "start" in recorded:
            record["start"] = _start_ticks(pid) + (0 if recorded["start"] == "its" else 7)
            record["boot"] = _boot_id() if recorded["boot"] == "this" else "0-restarted"
        lock = tmp_path / ".site.lock"
        lock.write_text(json.dumps(record) if len(record) > 1 else str(pid))
        os.utime(lock, (_before_pid_1_started(),) * 2)
        with output.output_lock(tmp_path / "site"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_lock_of_a_running_build_is_respected_in_either_format(tmp_path: Path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = tmp_path / ".site.lock"
    try:
        time.sleep(0.05)  # written by the running process, after it started
        for record in (json.dumps({"pid": sleeper.pid, "start": _start_ticks(sleeper.pid),
                                   "boot": _boot_id()}), str(sleeper.pid)):
            lock.write_text(record)
            with pytest.raises(UserError, match=f"another build \\(pid {sleeper.pid}\\)"):
                with output.output_lock(tmp_path / "site"):
                    pass
            assert lock.read_text() == record
        # a second build of this same process (another thread) into the same folder
        lock.unlink()
        with output.output_lock(tmp_path / "site"):
            with pytest.raises(UserError, match=f"another build \\(pid {os.getpid()}\\)"):
                with output.output_lock(tmp_path / "site"):
                    pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_path_that_is_a_folder_is_named_not_a_traceback(project: Path, capsys):
    (project / ".site.lock").mkdir()
    code = cli.main(["build", "-q", str(project / "spec.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert str(project / ".site.lock") in err and "is a folder" in err
    assert (project / ".site.lock").is_dir()  # not the build's to remove


# ---------------------------------------------------------------- cache and site apart


@pytest.mark.parametrize(("cache", "site"), [("site/cache", "site"), ("out", "out/site"),
                                             ("site", "site")],
                         ids=["cache in the site", "site in the cache", "the same folder"])
def test_a_cache_inside_the_site_or_a_site_inside_the_cache_is_refused(
        tmp_path: Path, cache: str, site: str, capsys):
    write_images(tmp_path, count=1)
    spec = write_spec(tmp_path / "spec.yaml", **{**FAST, "output": {"site": site, "pdf": None}},
                      runtime={"cache": cache})
    for command in ("validate", "build"):
        code = cli.main([command, "-q", str(spec)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert "runtime.cache" in err and "output.site" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks", "spec.yaml"]


# ---------------------------------------------------------------- a site that is a link


def test_a_site_that_is_a_symbolic_link_stays_a_link_to_the_new_report(project: Path,
                                                                        capsys):
    (project / "reports").mkdir()
    os.replace(project / "site", project / "reports" / "v1")
    (project / "current").symlink_to(Path("reports") / "v1")
    write_spec(project / "spec.yaml", **{**FAST, "output": {"site": "current", "pdf": None}},
               report={"title": "second"})
    build(project / "spec.yaml", BuildOptions())
    assert os.readlink(project / "current") == os.path.join("reports", "v1")
    assert "second" in (project / "reports" / "v1" / "index.html").read_text()
    assert _verify(project / "current", capsys) == 0
    assert _leftovers(project, "current") == [] and _leftovers(project / "reports", "v1") == []
    assert sorted(p.name for p in (project / "reports").iterdir()) == ["v1"]


def test_a_dangling_site_link_is_named(tmp_path: Path, capsys):
    write_images(tmp_path, count=1)
    (tmp_path / "current").symlink_to("reports/v2")
    spec = write_spec(tmp_path / "spec.yaml",
                      **{**FAST, "output": {"site": "current", "pdf": None}})
    code = cli.main(["build", "-q", str(spec)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "current" in err and "reports/v2" in err and "does not exist" in err
    assert os.readlink(tmp_path / "current") == "reports/v2"
    assert not (tmp_path / "reports").exists()


# ---------------------------------------------------------------- the machine's errors


def _full_disk_at_checksums(monkeypatch, project: Path) -> list[str]:
    write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "checksums.sha256":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    return [f"the disk is full while writing {project / 'site' / 'data' / 'checksums.sha256'}"]


def _full_disk_without_a_name(monkeypatch, project: Path) -> list[str]:
    write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "manifest.json":  # write() fails, naming no file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    return [f"the disk is full while writing {project / 'site'}\n"]


def _read_only_folder(monkeypatch, project: Path) -> list[str]:
    open_file = os.open

    def read_only(path, *args, **kwargs):
        if os.path.basename(path) == ".site.lock":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return open_file(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    return [f"{project / '.site.lock'} is on a read-only file system"]


def _forbidden_folder(monkeypatch, project: Path) -> list[str]:
    mkdir = Path.mkdir

    def forbidden(self, *args, **kwargs):
        if self.name.startswith(".site.building-"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", forbidden)
    return [f"{project / '.site.building-'}", "permission denied"]


@pytest.mark.parametrize("fault", [_full_disk_at_checksums, _full_disk_without_a_name,
                                   _read_only_folder, _forbidden_folder],
                         ids=["full disk", "full disk, no file named", "read-only",
                              "no write permission"])
def test_a_full_disk_or_a_read_only_folder_is_reported_and_keeps_the_previous_site(
        project: Path, fault, monkeypatch, capsys):
    before = _site_files(project / "site")
    write_spec(project / "spec.yaml", **FAST, report={"title": "second"})
    expected = fault(monkeypatch, project)
    code = cli.main(["build", "-q", str(project / "spec.yaml")])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "bug" not in err, err
    assert all(part in err for part in expected), err
    assert _site_files(project / "site") == before
    assert _leftovers(project) == []


# ---------------------------------------------------------------- the current folder


@pytest.mark.parametrize("command", ["validate", "build"])
def test_a_deleted_current_folder_is_named_before_anything_runs(project: Path, command: str):
    gone = project / "gone"
    gone.mkdir()
    run = subprocess.run(["sh", "-c", 'cd "$1" && rmdir "$1" && exec "$2" -m reportgen.cli '
                          '"$3" "$4"', "sh", str(gone), sys.executable, command,
                          str(project / "spec.yaml")],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == ("error: the current folder no longer exists; cd to an "
                                  "existing folder")


@pytest.mark.parametrize("name", ["r#1 <b>.pdf", "100% ready?.pdf"])
def test_the_site_links_a_pdf_whatever_its_name_holds(project: Path, name: str):
    """'#' would start a fragment, '%' an escape and '?' a query: each is encoded."""
    from html.parser import HTMLParser
    from urllib.parse import unquote, urlsplit

    spec = write_spec(project / "spec.yaml", **{**FAST, "output": {"pdf": f"site/{name}"}},
                      report={"title": "first"})
    build(spec, BuildOptions())
    links: dict[str, str] = {}

    class Links(HTMLParser):
        def handle_starttag(self, tag, attrs):
            self.href = dict(attrs).get("href") if tag == "a" else None

        def handle_data(self, data):
            if getattr(self, "href", None):
                links[data.strip()] = self.href

    Links().feed((project / "site" / "index.html").read_text(encoding="utf-8"))
    url = urlsplit(links["Archival report (PDF)"])
    assert not url.fragment and not url.query and not url.scheme
    assert (project / "site" / unquote(url.path)).read_bytes().startswith(b"%PDF")
