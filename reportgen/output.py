"""Safe output folders: path checks, a lock, and an atomic swap of the finished site.

A build writes into a hidden sibling folder and replaces the site only when
everything succeeded, so a failed or killed build never leaves a half-written
site and never destroys the previous one. A lock file beside the site makes a
second build into the same folder refuse with a clear message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from reportgen.errors import UserError

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


def check_output_folder(site: Path, spec_dir: Path, force: bool) -> None:
    """Refuse outputs that would destroy something that is not a previous report."""
    site = site.resolve()
    spec_dir = spec_dir.resolve()
    if site == spec_dir or site in spec_dir.parents or site in (Path.home().resolve(),
                                                                Path("/")):
        raise UserError(f"output.site {site} contains the spec's folder; a build replaces the "
                        "whole output folder, so choose a folder of its own (e.g. site/)")
    system = any(site == s or s in site.parents for s in SYSTEM_FOLDERS)
    if system and not force:
        raise UserError(f"output.site {site} is in a system folder; pass --force to write there")
    if site.exists() and not site.is_dir():
        raise UserError(f"output.site {site} exists and is not a folder")
    if site.is_dir() and any(site.iterdir()) and not (site / MARKER).is_file() and not force:
        raise UserError(f"output.site {site} holds files that are not a reportgen site (no "
                        f"{MARKER}); a build would replace them. Empty it or pass --force")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


@contextlib.contextmanager
def output_lock(site: Path) -> Iterator[None]:
    """Hold `.<site>.lock` beside the site for the duration of a build."""
    site.parent.mkdir(parents=True, exist_ok=True)
    lock = site.parent / f".{site.name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                raise UserError(f"another build (pid {pid}) is writing {site}; wait for it to "
                                f"finish (lock file {lock})") from None
            lock.unlink(missing_ok=True)  # left by a build that was killed
    else:
        raise UserError(f"cannot take the lock {lock}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        _remove_stale_staging(site)
        yield
    finally:
        lock.unlink(missing_ok=True)


def staging_folder(site: Path) -> Path:
    staging = site.parent / f".{site.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _remove_stale_staging(site: Path) -> None:
    for pattern in (f".{site.name}.building-*", f".{site.name}.old-*"):
        for stale in site.parent.glob(pattern):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


def swap_in(staging: Path, site: Path) -> None:
    """Replace `site` by `staging` with two renames (the old site is removed after);
    KeyboardInterrupt instead when the user asked to stop (`STOP`)."""
    if STOP.is_set():
        raise KeyboardInterrupt
    old = site.parent / f".{site.name}.old-{os.getpid()}"
    if site.exists():
        os.replace(site, old)
    os.replace(staging, site)
    shutil.rmtree(old, ignore_errors=True)


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
