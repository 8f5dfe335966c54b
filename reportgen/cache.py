"""The per-image results cache: maps and metrics keyed by everything that determines them.

A rebuild after a change of title, text or template, or after an interrupted build,
should not recompute one map: the expensive part of a build is the engine, and its
output for an image depends only on the inputs named in the key. The key is the
sha256 of: the cache format, the source of every module that computes (not the
renderers or templates), the torch/smp/numpy versions, the checkpoint's sha256, the
model, target, layers (resolved to module paths), methods, metrics and their options,
the precision, seed and device type, and per image its page id and the sha256 of the
image and of its mask.

An entry is a folder `<key[:2]>/<key>/` holding `arrays.npz` and `result.json`. It is
written under a temporary name and renamed into place, so a killed build leaves whole
entries or none, and the next build resumes from them. Cache files are data, never
code: arrays load with `allow_pickle=False`, everything else is JSON. A damaged entry is
ignored and recomputed.

The cache is bounded (`runtime.cache_max_gb`): after a build, the least recently used
entries (an entry's folder time is set when it is written and when it is read) are
removed until the cache fits. An entry disappears by one rename before it is deleted,
so a build reading the same cache sees it whole or not at all.

What comes from the image itself (the display pixels, the ground truth, the notes, the
file names) is not stored: it is read again, so a cached page is byte-identical to a
computed one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reportgen.compute.data import Sample, SampleRef
from reportgen.compute.metrics import MetricRow
from reportgen.errors import UserError
from reportgen.hashing import package_versions, sha256_file, write_npz
from reportgen.report.results import Cell, ImageResult, ShownValue

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
DEFAULT_FOLDER = ".reportgen-cache"
# Methods that draw random numbers: which images come from the cache would change
# what the others draw, so a spec using one is never cached.
RANDOM_METHODS = ("randomcam",)

# Scratch folders older than this are left by killed builds, not being written.
STALE_SCRATCH_SECONDS = 3600
GB = 10**9

CachedImage = tuple[ImageResult, list[MetricRow], dict[str, np.ndarray], torch.Tensor]


def code_version() -> str:
    """sha256 over the source of `reportgen.compute`, everything that computes maps or
    metrics: a change of presentation (render, report, templates) keeps the cache."""
    package = Path(__file__).resolve().parent / "compute"
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# what computes the maps and metrics: a new version of any of them is a cache miss
COMPUTE_DISTRIBUTIONS = ("torch", "segmentation-models-pytorch", "numpy", "grad-cam")


def _plain(value: object) -> object:
    """JSON for numpy scalars (their exact value as a Python number)."""
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _metric(value: ShownValue | None) -> list | None:
    return None if value is None else [value.value, value.reason]


def _unmetric(value: list | None) -> ShownValue | None:
    return None if value is None else ShownValue(value[0], value[1])


class ResultCache:
    """Per-image results under `folder`, for builds that share `inputs` (see the module)."""

    def __init__(self, folder: Path, inputs: dict[str, object],
                 max_bytes: int | None = None) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._base = json.dumps({"format": CACHE_FORMAT, "code": code_version(),
                                 "versions": package_versions(COMPUTE_DISTRIBUTIONS), **inputs},
                                sort_keys=True, default=_plain)
        self.hits = 0
        self.misses = 0

    def key(self, sample: Sample | SampleRef) -> str:
        """The entry key of an image: its files are hashed each time, when the batch is
        read, so a file changed during a long build is stored under its new content."""
        digest = hashlib.sha256(self._base.encode())
        mask = sha256_file(sample.mask_path) if sample.mask_path else ""
        for part in (sample.id, sha256_file(sample.path), mask):
            digest.update(b"\0" + part.encode())
        return digest.hexdigest()

    def missing(self, refs: Iterable[SampleRef]) -> int:
        """How many of `refs` have no entry: the images a build will compute."""
        return sum(not self._entry(self.key(ref)).is_dir() for ref in refs)

    def prune(self) -> tuple[int, int]:
        """Keep the cache within `max_bytes` (see `prune`); (entries removed, bytes freed)."""
        if self.max_bytes is None:
            return 0, 0
        try:
            return prune(self.folder, self.max_bytes)
        except UserError as exc:  # files of someone else's beside the entries: left alone
            log.warning("cache not pruned: %s", exc)
            return 0, 0

    def _entry(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def load(self, key: str, sample: Sample) -> CachedImage | None:
        """The cached results of `sample`, or None (absent or unreadable: recompute)."""
        entry = self._entry(key)
        if not entry.is_dir():
            self.misses += 1
            return None
        try:
            meta = json.loads((entry / "result.json").read_text(encoding="utf-8"))
            with np.load(entry / "arrays.npz", allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            cached = self._decode(meta, arrays, sample)
        except (OSError, ValueError, KeyError, TypeError, IndexError,
                zipfile.BadZipFile) as exc:
            log.warning("cache entry %s is unreadable (%s); recomputing", entry, exc)
            self.misses += 1
            return None
        self.hits += 1
        _touch(entry)
        return cached

    def store(self, key: str, result: ImageResult, rows: list[MetricRow],
              maps: dict[str, np.ndarray], region: torch.Tensor) -> None:
        """Write one entry atomically; a failure to write only costs a later recomputation."""
        entry = self._entry(key)
        if entry.is_dir():
            return
        meta, arrays = self._encode(result, rows, maps, region)
        scratch: Path | None = None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=entry.parent))
            # stored, not deflated: float maps shrink by a fifth at most, and deflating
            # 640 px maps cost seconds per image on the thread that writes the pages
            write_npz(scratch / "arrays.npz", arrays, compress=False)
            (scratch / "result.json").write_text(json.dumps(meta, default=_plain),
                                                 encoding="utf-8")
            os.replace(scratch, entry)
            _touch(entry)
        except OSError as exc:
            log.warning("cannot write the cache entry %s (%s)", entry, exc)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def around(self, batches: Iterable[list[Sample]],
               compute: Callable[[Iterable[list[Sample]]], Iterator[tuple[list[Sample], list]]],
               output: Callable[[CachedImage], Any],
               clock: Callable[[str], AbstractContextManager] | None = None,
               ) -> Iterator[tuple[list[Sample], list]]:
        """`(batch, outputs)` in order, computing only the images that miss the cache.

        `compute` is the executor: it gets each batch reduced to its misses (possibly
        empty) and yields them back in order with their outputs, which are stored; the
        hits are made into outputs by `output`. The lookup runs wherever the executor
        draws its batches (a thread, or this one), so it is bound to its batch by identity.
        Storing is timed as the stage "cache" of `clock`, when given.
        """
        pending: dict[int, tuple[list[Sample], list[Sample], list[str], list]] = {}

        def misses() -> Iterator[list[Sample]]:
            for batch in batches:
                keys = [self.key(sample) for sample in batch]
                hits = [self.load(key, sample) for key, sample in zip(keys, batch, strict=True)]
                missing = [s for s, hit in zip(batch, hits, strict=True) if hit is None]
                pending[id(missing)] = (batch, missing, keys, hits)
                yield missing

        for missing, computed in compute(misses()):
            batch, _, keys, hits = pending.pop(id(missing))
            fresh = iter(computed)
            outputs = []
            for key, hit in zip(keys, hits, strict=True):
                if hit is None:
                    out = next(fresh)
                    with clock("cache") if clock else nullcontext():
                        self.store(key, out.result, out.rows, out.maps, out.region)
                else:
                    out = output(hit)
                outputs.append(out)
            yield batch, outputs

    @staticmethod
    def _encode(result: ImageResult, rows: list[MetricRow], maps: dict[str, np.ndarray],
                region: torch.Tensor) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        arrays = {"probability": result.probability, "prediction": result.prediction,
                  "region": region.cpu().numpy()}
        cells = []
        for index, cell in enumerate(result.cells.values()):
            if cell.map is not None:
                arrays[f"cell{index}"] = cell.map
            cells.append({"layer": cell.layer, "method": cell.method,
                          "has_map": cell.map is not None, "flags": cell.flags,
                          "metrics": {k: _metric(v) for k, v in cell.metrics.items()},
                          "verdict": cell.verdict, "curves": cell.curves})
        names = sorted(maps)
        arrays.update({f"map{index}": maps[name] for index, name in enumerate(names)})
        meta = {"dice": _metric(result.dice), "iou": _metric(result.iou), "cells": cells,
                "maps": names, "rows": [asdict(row) for row in rows]}
        return meta, arrays

    @staticmethod
    def _decode(meta: dict, arrays: dict[str, np.ndarray], sample: Sample) -> CachedImage:
        cells = {}
        for index, c in enumerate(meta["cells"]):
            cells[(c["layer"], c["method"])] = Cell(
                layer=c["layer"], method=c["method"],
                map=arrays[f"cell{index}"] if c["has_map"] else None, flags=c["flags"],
                metrics={k: _unmetric(v) for k, v in c["metrics"].items()},
                verdict=c["verdict"], curves=c["curves"])
        result = ImageResult(
            id=sample.id, source=sample.path, display=sample.display,
            probability=arrays["probability"], prediction=arrays["prediction"],
            ground_truth=sample.gt_mask, mask_source=sample.mask_path,
            dice=_unmetric(meta["dice"]), iou=_unmetric(meta["iou"]), cells=cells,
            notes=list(sample.notes))
        rows = [MetricRow(**row) for row in meta["rows"]]
        maps = {name: arrays[f"map{index}"] for index, name in enumerate(meta["maps"])}
        return result, rows, maps, torch.from_numpy(arrays["region"])


def _touch(entry: Path) -> None:
    """Mark an entry as just used (its folder's time), for least-recently-used pruning."""
    try:
        os.utime(entry)
    except OSError:  # a read-only cache is still a cache
        pass


def _shards(folder: Path) -> list[Path]:
    """The shard folders of a cache; refuses a folder that does not look like a cache
    (anything but two-hex-digit shards), so a mistyped `runtime.cache` never loses
    someone's files."""
    shards = list(folder.iterdir())
    if any(not (p.is_dir() and len(p.name) == 2 and all(c in "0123456789abcdef"
                                                        for c in p.name)) for p in shards):
        raise UserError(f"{folder} holds files that are not reportgen cache entries; "
                        "remove it by hand if it is really the cache")
    return shards


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def entries(folder: Path) -> list[tuple[Path, int, float]]:
    """(entry folder, bytes, last use as a POSIX time) of every whole entry, oldest use
    first."""
    if not folder.exists():
        return []
    found = []
    for shard in _shards(folder):
        for entry in shard.iterdir():
            if entry.name.startswith("."):  # being written, or left by a killed build
                continue
            try:
                found.append((entry, _size(entry), entry.stat().st_mtime))
            except OSError:  # removed meanwhile by another build
                continue
    return sorted(found, key=lambda item: (item[2], item[0].name))


def _remove(entry: Path) -> bool:
    """Delete an entry: renamed first (one atomic step), then removed at leisure. False
    when it could not be (e.g. another build removed it first)."""
    doomed = entry.with_name(f".{entry.name[:8]}-removed-{os.getpid()}")
    try:
        os.replace(entry, doomed)
    except OSError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def prune(folder: Path, max_bytes: int, now: float | None = None) -> tuple[int, int]:
    """Remove the least recently used entries until the cache holds at most `max_bytes`,
    and scratch folders that killed builds left behind; (entries removed, bytes freed)."""
    if not folder.exists():
        return 0, 0
    now = time.time() if now is None else now
    freed = 0
    for shard in _shards(folder):
        for scratch in shard.glob(".*"):
            try:  # another build may be pruning the same folder
                if now - scratch.stat().st_mtime <= STALE_SCRATCH_SECONDS:
                    continue
                size = _size(scratch)
            except OSError:
                continue
            shutil.rmtree(scratch, ignore_errors=True)
            freed += size
    found = entries(folder)
    total = sum(size for _, size, _ in found)
    removed = 0
    for entry, size, _ in found:
        if total <= max_bytes:
            break
        if _remove(entry):
            freed += size
            removed += 1
        total -= size  # gone, by this build or another
    if removed:
        log.info("cache: removed %d least recently used entries (%.2f GB) to stay within "
                 "%.2f GB", removed, freed / GB, max_bytes / GB)
    return removed, freed


def usage(folder: Path) -> tuple[int, int]:
    """(entries, bytes) of a cache folder."""
    found = entries(folder)
    return len(found), sum(size for _, size, _ in found)


def clear(folder: Path) -> int:
    """Remove a cache folder; returns how many entries it held (refuses a folder that
    does not look like a cache)."""
    if not folder.exists():
        return 0
    count = sum(1 for shard in _shards(folder) for _ in shard.iterdir())
    shutil.rmtree(folder)
    return count
