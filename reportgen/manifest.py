"""The audit manifest (`data/manifest.json`): what went in, what came out, on what.

Everything except the fields in `TIME_FIELDS` is a pure function of the inputs,
the software versions and the device, so two builds of the same spec give the
same manifest apart from those fields.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from reportgen.data import Sample
from reportgen.hashing import sha256_file
from reportgen.spec import Spec

TIME_FIELDS = ("started", "finished", "timings")
MANIFEST = Path("data/manifest.json")


def git_commit() -> str | None:
    """The reportgen source checkout's commit, when it runs from one."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def output_hashes(site: Path) -> dict[str, str]:
    """sha256 of every file under `site` except the manifest itself, by relative path."""
    return {p.relative_to(site).as_posix(): sha256_file(p)
            for p in sorted(site.rglob("*")) if p.is_file() and p.relative_to(site) != MANIFEST}


def write_manifest(site: Path, spec: Spec, spec_path: Path, samples: list[Sample], sha: str,
                   fmt: str, device: str, determinism: list[str], warnings: list[str],
                   timings: dict[str, float], started: datetime,
                   versions: dict[str, str]) -> dict[str, object]:
    """Write `data/manifest.json` (last, so that it can hash every other output)."""
    inputs = {
        "spec": {"path": spec_path.name, "sha256": sha256_file(spec_path)},
        "checkpoint": {"path": spec.model.checkpoint.name if spec.model.checkpoint else None,
                       "sha256": sha or None, "format": fmt},
        "images": [{"id": s.id, "path": s.path.name, "sha256": sha256_file(s.path),
                    "mask": s.mask_path.name if s.mask_path else None,
                    "mask_sha256": sha256_file(s.mask_path) if s.mask_path else None,
                    "notes": s.notes} for s in samples],
    }
    manifest = {
        "reportgen": versions.get("reportgen"),
        "git_commit": git_commit(),
        "versions": versions,
        "device": device,
        "precision": spec.runtime.precision,
        "seed": spec.runtime.seed,
        "determinism": determinism,
        "inputs": inputs,
        "warnings": warnings,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "timings": {k: round(v, 3) for k, v in sorted(timings.items())},
        "outputs": output_hashes(site),
    }
    path = site / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
