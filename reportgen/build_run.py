"""What a build is asked (`BuildOptions`) and what it knows as it runs (`BuildRun`):
one object carries the state of a build from the spec to the manifest, instead of its
fields travelling as parameters through every stage."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from reportgen.compute.data import SampleRef
from reportgen.compute.pipeline import Plan, Stopwatch
from reportgen.spec import Spec


@dataclass
class BuildOptions:
    device: str | None = None  # overrides runtime.device
    single_file: bool = False
    force: bool = False
    sign: Path | None = None  # PKCS#12 file: sign the PDF (PAdES)
    sign_password: str | None = None
    progress: Callable[[str, int, int], None] | None = None  # (stage, done, total)
    keep_going: bool = False  # build without unreadable inputs, listing them as excluded
    cache: bool = True  # reuse and store per-image results (runtime.cache); False: neither


def device_name(device: torch.device) -> str:
    """The device in words, as the audit page and the manifest name it."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


@dataclass
class BuildRun:
    """One build: its spec and options, the inputs it reads, and what it learns on the way
    (checkpoint, plan, timings, warnings, events), which the pages and the manifest report."""

    spec: Spec
    spec_path: Path
    spec_text: str
    options: BuildOptions
    device: torch.device
    pdf: Path | None  # the PDF's path inside the site; None: no PDF
    inputs: list[SampleRef]  # the images the build reads, in the spec's order
    # the inputs a --keep-going build left out, and why
    excluded: list[tuple[SampleRef, str]] = field(default_factory=list)
    clock: Stopwatch = field(default_factory=Stopwatch)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    warnings: list[str] = field(default_factory=list)
    determinism: list[str] = field(default_factory=list)  # what could not be made deterministic
    checkpoint_sha: str = ""  # "" without a checkpoint
    checkpoint_format: str = "none"
    plan: Plan | None = None
    events: list[str] = field(default_factory=list)  # what the run adapted to (out of memory)
    engine: dict[str, object] = field(default_factory=dict)  # how the maps were computed
    versions: dict[str, str] = field(default_factory=dict)  # reportgen's, Python's, libraries'

    @property
    def spec_folder(self) -> Path:
        """The folder the spec's relative paths, and the manifest's locations, start from."""
        return self.spec_path.resolve().parent

    @property
    def device_label(self) -> str:
        return device_name(self.device)
