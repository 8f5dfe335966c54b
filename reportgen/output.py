"""Safe output folders: path checks, a lock, and an atomic swap of the finished site.

A build writes into a hidden sibling folder and replaces the site only when
everything succeeded, so a failed or killed build never leaves a half-written
site and never destroys the previous one. A lock file beside the site makes a
second build into the same folder refuse with a clear message. A build killed
between the swap's two renames leaves no site but two complete reports beside it:
the next build puts the newer one back before it removes anything.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from reportgen.errors import UserError

log = logging.getLogger(__name__)

SYSTEM_FOLDERS = tuple(Path(p) for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64",
                                          "/proc", "/sbin", "/sys", "/usr", "/var"))
MARKER = "data/manifest.json"
STOP = threading.Event()
"""Set by the CLI's SIGINT/SIGTERM handlers. The exception they raise can be lost: one
raised while a library's finalizer runs (WeasyPrint's, during the PDF layout) is
printed and dropped by Python. A finished build checks this before it replaces the
previous site, so an interrupt always keeps the previous site."""

# The folders a site writes its own files into: a PDF there could overwrite one of them.
SITE_FOLDERS = ("assets", "data", "figures", "images", "plots", "thumbs")


def holds_the_spec(site: Path, spec_dir: Path) -> str | None:
    """Why `site` may not be an output folder when it holds the spec's folder (or the home
    folder, or /), else None."""
    site = site.resolve()
    spec_dir = spec_dir.resolve()
    if site == spec_dir or site in spec_dir.parents or site in (Path.home().resolve(),
                                                                Path("/")):
        return (f"output.site {site} contains the spec's folder; a build replaces the whole "
                "output folder, so choose a folder of its own (e.g. site/)")
    return None


def check_output_folder(site: Path, spec_dir: Path, force: bool) -> None:
    """Refuse outputs that would destroy something that is not a previous report."""
    problem = holds_the_spec(site, spec_dir)
    if problem:
        raise UserError(problem)
    site = site.resolve()
    system = any(site == s or s in site.parents for s in SYSTEM_FOLDERS)
    if system and not force:
        raise UserError(f"output.site {site} is in a system folder; pass --force to write there")
    if site.exists() and not site.is_dir():
        raise UserError(f"output.site {site} exists and is not a folder")
    if site.is_dir() and any(site.iterdir()) and not (site / MARKER).is_file() and not force:
        raise UserError(f"output.site {site} holds files that are not a reportgen site (no "
                        f"{MARKER}); a build would replace them. Empty it or pass --force")


CHECKSUMS = "data/checksums.sha256"
"""Written last by a build (`reportgen.manifest.write_checksums`), listing every other file."""
SCRATCH_KINDS = ("building", "old")  # `.<site>.building-PID`: staging; `.old-PID`: swapped out
CLOCK_SLACK = 2.0
"""Seconds of doubt in a process's start time as a date: /proc/stat gives boot in whole seconds."""
_HELD: set[Path] = set()
"""The locks this process holds: a build in another thread holds its own PID's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (field 22 of /proc/PID/stat);
    None without /proc or without that process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[19])  # after the command name, which may hold spaces: field 3 on
    except (OSError, ValueError, IndexError):
        return None


def _started_at(pid: int) -> float | None:
    """The date process `pid` started (seconds since the epoch), or None without /proc."""
    ticks = _start_ticks(pid)
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(float(line.split()[1]) for line in lines if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return None if ticks is None else boot + ticks / os.sysconf("SC_CLK_TCK")


def _still_runs(pid: int, written: float, start: int | None = None,
                boot: str | None = None) -> bool:
    """Whether the process that wrote a lock or a folder last modified at `written` still
    runs. A PID alone cannot tell: after a reboot or a container restart another process
    may hold it (PID 1 always runs). So it runs only if process `pid` is alive in the same
    boot, has the recorded start time where one was recorded, and otherwise did not start
    after `written` (no process writes before it starts). This process's own PID is never
    another build's: what this process holds, it knows (`_HELD`)."""
    current_boot = _boot_id()
    if pid <= 0 or pid == os.getpid() or (boot and current_boot and boot != current_boot):
        return False
    if not _pid_alive(pid):
        return False
    if start is not None:
        return _start_ticks(pid) in (None, start)
    started = _started_at(pid)
    return started is None or started <= written + CLOCK_SLACK


def _lock_record() -> bytes:
    pid = os.getpid()
    return json.dumps({"pid": pid, "start": _start_ticks(pid), "boot": _boot_id()}).encode()


def _lock_holder(lock: Path, site: Path) -> int | None:
    """The PID of the running build that holds `lock`, or None when the lock is stale:
    its process is gone, or it is empty or garbled (its build was killed while writing it).
    Earlier versions wrote the PID alone."""
    try:
        info = os.lstat(lock)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise UserError(f"the lock file {lock} of output.site {site} is {kind}; no build "
                            "made it: remove it, then build again")
        text = lock.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None  # released meanwhile
    except OSError as exc:
        raise UserError(f"cannot read the lock file {lock} of output.site {site} "
                        f"({exc.strerror})") from None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    record = {"pid": record} if isinstance(record, int) else record
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    pid = record["pid"]
    if pid == os.getpid():
        return pid if lock in _HELD else None  # else written by an earlier life of this PID
    start = record.get("start") if isinstance(record.get("start"), int) else None
    boot = record.get("boot") if isinstance(record.get("boot"), str) else None
    return pid if _still_runs(pid, info.st_mtime, start, boot) else None


@contextlib.contextmanager
def output_lock(site: Path) -> Iterator[None]:
    """Hold `.<site>.lock` beside the site for the duration of a build; taking it puts back
    a report a killed swap left beside a missing site, then removes stale scratch folders."""
    site.parent.mkdir(parents=True, exist_ok=True)
    lock = (site.parent / f".{site.name}.lock").absolute()
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            pid = _lock_holder(lock, site)
            if pid is not None:
                raise UserError(f"another build (pid {pid}) is writing {site}; wait for it to "
                                f"finish (lock file {lock})") from None
            lock.unlink(missing_ok=True)  # left by a build that was killed
    else:
        raise UserError(f"cannot take the lock {lock}")
    _HELD.add(lock)
    try:
        try:
            os.write(fd, _lock_record())
        finally:
            os.close(fd)
        _put_back(site)
        for folder in _stale_scratch(site):
            _remove(folder)
        yield
    finally:
        _HELD.discard(lock)
        lock.unlink(missing_ok=True)


def staging_folder(site: Path) -> Path:
    staging = site.parent / f".{site.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _scratch(site: Path) -> list[Path]:
    """The scratch folders of builds of `site` beside it (`.<site>.building-PID`, `.old-PID`)."""
    prefixes = tuple(f".{site.name}.{kind}-" for kind in SCRATCH_KINDS)
    try:
        return [entry for entry in site.parent.iterdir() if entry.name.startswith(prefixes)
                and entry.name.rsplit("-", 1)[1].isdigit()]
    except FileNotFoundError:
        return []


def _stale_scratch(site: Path) -> list[Path]:
    """The scratch folders whose build no longer runs (see `_still_runs`: their PID may be
    another process's now; a folder is modified after its build starts)."""
    return [folder for folder in _scratch(site)
            if not _still_runs(int(folder.name.rsplit("-", 1)[1]), folder.lstat().st_mtime)]


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def is_complete(folder: Path) -> bool:
    """Whether `folder` holds a whole report: its checksums, which a build writes last, end
    in a newline and list exactly the folder's other files, the manifest among them (a
    checksums file cut short lists fewer)."""
    try:
        text = (folder / CHECKSUMS).read_text(encoding="utf-8")
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    except (OSError, UnicodeDecodeError):
        return False
    names = [line.partition(" ")[2] for line in text.splitlines() if line]
    listed = {name[1:] if name[:1] in (" ", "*") else name for name in names}  # sha256sum's
    return text.endswith("\n") and MARKER in listed and listed == files - {CHECKSUMS}


def _put_back(site: Path) -> None:
    """Where the site is missing, move the newest complete report among the stale scratch
    folders in its place: a build killed between the swap's renames left the previous
    report in `.old-PID` and its own, complete, in `.building-PID`."""
    if os.path.lexists(site):
        return
    complete = [folder for folder in _stale_scratch(site) if is_complete(folder)]
    if not complete:
        return
    newest = max(complete, key=lambda folder: ((folder / CHECKSUMS).stat().st_mtime,
                                               ".building-" in folder.name))
    os.replace(newest, site)
    log.warning("%s was missing (a build was stopped while it replaced it): the complete "
                "report in %s is put back in its place", site, newest)


def recover_site(site: Path) -> None:
    """Put back the report a build killed during the swap left beside a missing `site`.
    A build does this first, so that one failing later on its inputs leaves a report."""
    if not os.path.lexists(site) and _scratch(site):
        with output_lock(site):  # taking the lock puts it back
            pass


def swap_in(staging: Path, site: Path) -> None:
    """Replace `site` by `staging` with two renames (the old site is removed after);
    KeyboardInterrupt instead when the user asked to stop (`STOP`). An error between the
    renames puts the old site back; a kill there leaves it to `_put_back`."""
    if STOP.is_set():
        raise KeyboardInterrupt
    old = site.parent / f".{site.name}.old-{os.getpid()}"
    if os.path.lexists(site):
        os.replace(site, old)
    try:
        os.replace(staging, site)
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(site):
            os.replace(old, site)
        raise
    _remove(old)


def site_folder(site: Path) -> Path:
    """The folder a build of output.site writes: `site`, or the folder it links to, so that
    a symbolic link stays and points to the new report. A report a killed build left
    beside it is put back first (`recover_site`)."""
    if not site.is_symlink():
        recover_site(site)
        return site
    try:
        target = site.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links
        raise UserError(f"output.site {site} is a symbolic link that cannot be followed "
                        f"({exc})") from None
    recover_site(target)
    if not os.path.lexists(target):
        raise UserError(f"output.site {site} is a symbolic link to {target}, which does not "
                        "exist; create that folder or point the link to an existing one")
    return target


def check_cache_folder(cache: Path | None, site: Path) -> None:
    """Refuse a cache inside the site, or a site inside the cache: a build swaps the whole
    site folder, so the cache would be carried into the new report (whose checksums it
    then breaks) or left in the previous one, never reused; and `reportgen cache clear`
    would delete a site inside it."""
    if cache is None:
        return
    cache_path, site_path = cache.resolve(), site.resolve()
    if cache_path == site_path or site_path in cache_path.parents:
        raise UserError(f"runtime.cache {cache} is inside output.site {site}: every build "
                        "replaces the site folder, so the cache would never be reused; put "
                        "the cache beside the site (the default is .reportgen-cache)")
    if cache_path in site_path.parents:
        raise UserError(f"output.site {site} is inside runtime.cache {cache}: clearing the "
                        "cache would delete the report; put the site beside the cache")


ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "the disk is full while writing {file}",
    errno.EDQUOT: "the disk quota is used up while writing {file}",
    errno.EFBIG: "{file} is larger than its file system allows",
    errno.EROFS: "{file} is on a read-only file system",
    errno.EACCES: "{file}: permission denied (check the owner and permissions of it and "
                  "its folder)",
    errno.EPERM: "{file}: operation not permitted (check the owner and permissions of it "
                 "and its folder)",
}
"""OS errors that say something about the user's machine, not about reportgen, by errno:
what the user reads (exit 2)."""


def environment_problem(exc: OSError) -> str | None:
    """What an OS error from the user's machine means, naming its file; None for other OS
    errors, which are bugs."""
    message = ENVIRONMENT_ERRORS.get(exc.errno) if exc.errno is not None else None
    if message is None:
        return None
    if exc.filename is None:  # a socket's, or a write() outside a build: no file to name
        return f"{exc.strerror} ({errno.errorcode[exc.errno]})"
    return message.format(file=exc.filename)


def name_in_site(exc: OSError, staging: Path, site: Path) -> None:
    """Name the file of an OS error met while writing `staging` as the site's file: the
    scratch folder is gone when the user reads the message. The site itself where the
    system named none (a failed write() names no file)."""
    if exc.filename is None:
        exc.filename = str(site)
        return
    with contextlib.suppress(TypeError, ValueError):  # a file outside the staging folder
        exc.filename = str(site / Path(exc.filename).relative_to(staging))


def pdf_in_site(site: Path, pdf: Path) -> Path:
    """The PDF's path relative to the site; a UserError unless it is a .pdf file of its own
    inside the site (not the site, not among the files the site writes)."""
    try:
        relative = pdf.resolve().relative_to(site.resolve())
    except ValueError:
        raise UserError(f"output.pdf {pdf} must lie inside output.site {site}") from None
    if relative == Path("."):
        raise UserError(f"output.pdf {pdf} is the site folder itself; name a file in it, "
                        "e.g. report.pdf")
    if relative.suffix.lower() != ".pdf":
        raise UserError(f"output.pdf {pdf} must end in .pdf")
    if len(relative.parts) > 1 and relative.parts[0] in SITE_FOLDERS:
        raise UserError(f"output.pdf {pdf} is in the site's own folder {relative.parts[0]}/, "
                        f"whose files the build writes; put it at the top of the site or in a "
                        f"folder other than {', '.join(SITE_FOLDERS)}")
    return relative


def inside(root: Path, path: Path) -> Path:
    """`path` if it lies inside `root`, else a UserError (output paths never escape)."""
    resolved = path.resolve()
    if root.resolve() not in resolved.parents:
        raise UserError(f"{path} would be written outside the output folder {root}")
    return path
