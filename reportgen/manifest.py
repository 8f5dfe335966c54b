"""The audit manifest (`data/manifest.json`) and the site's checksum list.

What went in, what came out, on what. A build writes, in this order:

1. every page, figure and data file of the site;
2. `data/manifest.json`: the inputs (sha256 of the spec, the checkpoint, every image
   and mask, with where to find them again), the software versions, the device and
   the timings, and the sha256 of every output written so far: every file except the
   manifest itself and the PDF;
3. the PDF, which embeds the manifest, the spec and `data/metrics.csv` (so the
   manifest cannot hash the PDF that carries it);
4. `data/checksums.sha256` (sha256sum format, sorted by path): every file of the
   site, the PDF and the manifest included. `sha256sum -c data/checksums.sha256`
   run in the site folder checks the whole site without reportgen.

Everything except the fields in `TIME_FIELDS` is a pure function of the inputs,
the software versions and the device, so two builds of the same spec give the
same manifest apart from those fields. With `SOURCE_DATE_EPOCH` set (the
reproducible-builds convention) the start and end times are that instant and the
measured durations are left out, so the manifest, and the PDF that embeds it, are
byte-identical between builds.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from reportgen.hashing import sha256_file

if TYPE_CHECKING:
    from reportgen.build_run import BuildRun

TIME_FIELDS = ("started", "finished", "timings")
MANIFEST = Path("data/manifest.json")
CHECKSUMS = Path("data/checksums.sha256")
SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"
PACKAGE = Path(__file__).resolve().parent  # the reportgen package


def git_commit(package: Path = PACKAGE) -> str | None:
    """The commit of the git checkout `package` runs from, "<sha>-dirty" when the
    package's own files differ from it (changed, added or deleted, untracked included);
    None when it is not a checkout (installed from a wheel) or git cannot tell.

    Only a checkout whose root is the package's parent counts, so a wheel installed in a
    virtual environment inside some other repository is not credited with its commit.
    """
    root = package.parent
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        # --no-optional-locks: never take the index lock of a tree others may be using
        return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args],
                              capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = git("status", "--porcelain", "--", package.name).strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    return f"{commit}-dirty" if changed else commit


def source_date() -> datetime | None:
    """The instant named by `SOURCE_DATE_EPOCH` (seconds since 1970, UTC), if set."""
    value = os.environ.get(SOURCE_DATE_EPOCH, "").strip()
    if not value:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def site_files(site: Path) -> list[str]:
    """Every file under `site` as a sorted list of POSIX paths relative to it."""
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())


def output_hashes(site: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `site` except the manifest and `exclude`, by relative path."""
    skip = {MANIFEST.as_posix(), CHECKSUMS.as_posix(), *exclude}
    return {name: sha256_file(site / name) for name in site_files(site) if name not in skip}


def relative_location(path: Path, start: Path) -> str:
    """`path` relative to the folder `start` (POSIX), as the manifest locates files."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def shown_location(path: Path, start: Path) -> str:
    """`path` as the report shows it: relative to the folder `start` and normalised, as
    the manifest locates it (`relative_location`); absolute (normalised) when the two
    share no folder but the filesystem root, where a relative path would only climb
    through it."""
    target, base = path.resolve(), start.resolve()
    try:
        shared = Path(os.path.commonpath([target, base]))
    except ValueError:  # another drive (Windows)
        return target.as_posix()
    if shared == Path(target.anchor):
        return target.as_posix()
    return relative_location(target, base)


def write_manifest(site: Path, run: BuildRun) -> dict[str, object]:
    """Write `data/manifest.json` of the build `run` and return it.

    The PDF (`run.pdf`, relative to the site) is written after the manifest, so it is
    listed by name only; its hash is in `data/checksums.sha256`. Inputs carry a
    `location`: the spec's relative to the site folder, the others relative to the
    spec's folder, so `reportgen verify` can find and re-hash them later. `excluded`
    lists the inputs a keep-going build left out: (location, reason). `events` are what
    the run adapted to (e.g. a batch halved on out-of-memory: results equal up to float rounding);
    `engine` how the maps were computed (e.g. whether Score-CAM ran compiled).
    """
    fixed = source_date()
    finished = fixed or datetime.now(UTC)
    pdf = run.pdf.as_posix() if run.pdf is not None else None
    manifest = {
        "reportgen": run.versions.get("reportgen"),
        "git_commit": git_commit(),
        "versions": run.versions,
        "device": run.device_label,
        "precision": run.spec.runtime.precision,
        "seed": run.spec.runtime.seed,
        "determinism": run.determinism,
        "engine": run.engine,
        "events": list(run.events),
        "inputs": _inputs(site, run),
        "warnings": run.warnings,
        "excluded": [{"location": relative_location(ref.path, run.spec_folder),
                      "reason": reason} for ref, reason in run.excluded],
        "started": (fixed or run.started).isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "timings": {} if fixed else {k: round(v, 3)
                                     for k, v in sorted(run.clock.totals.items())},
        "outputs": output_hashes(site, exclude=(pdf,) if pdf else ()),
        "pdf": pdf,
        "checksums": CHECKSUMS.as_posix(),
    }
    path = site / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _inputs(site: Path, run: BuildRun) -> dict[str, object]:
    """The manifest's record of the spec, the checkpoint and every image and mask."""
    base = run.spec_folder
    checkpoint = run.spec.model.checkpoint
    return {
        "spec": {"path": run.spec_path.name, "sha256": sha256_file(run.spec_path),
                 "location": relative_location(run.spec_path, site)},
        "checkpoint": {"path": checkpoint.name if checkpoint else None,
                       "sha256": run.checkpoint_sha or None,
                       "format": run.checkpoint_format,
                       "location": relative_location(checkpoint, base) if checkpoint else None},
        "images": [{"id": s.id, "path": s.path.name, "sha256": sha256_file(s.path),
                    "location": relative_location(s.path, base),
                    "mask": s.mask_path.name if s.mask_path else None,
                    "mask_sha256": sha256_file(s.mask_path) if s.mask_path else None,
                    "mask_location": relative_location(s.mask_path, base) if s.mask_path else None,
                    "notes": s.notes} for s in run.inputs],
    }


def checksum_lines(hashes: dict[str, str]) -> str:
    """`hashes` (path -> sha256) in sha256sum's text format, sorted by path."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(hashes.items()))


def parse_checksums(text: str) -> dict[str, str]:
    """The path -> sha256 pairs of a sha256sum file (text or binary mode markers)."""
    hashes = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        hashes[name[1:] if name[:1] in (" ", "*") else name] = digest
    return hashes


def write_checksums(site: Path) -> Path:
    """Write `data/checksums.sha256` over every file of the site (written last)."""
    path = site / CHECKSUMS
    hashes = {name: sha256_file(site / name) for name in site_files(site)
              if name != CHECKSUMS.as_posix()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(checksum_lines(hashes), encoding="utf-8")
    return path
