"""sha256 of files and folders, installed versions, and deterministic .npz writing."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import numpy as np


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(distributions: Iterable[str]) -> dict[str, str]:
    """The installed version of each distribution, or "not installed"."""
    found = {}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def sha256_path(path: Path) -> str:
    """A file's sha256, or for a folder the sha256 of its files' names and hashes."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{child.relative_to(path).as_posix()}\0{sha256_file(child)}\n".encode())
    return digest.hexdigest()


def write_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool = True,
              level: int | None = None) -> None:
    """Like numpy.savez_compressed (or numpy.savez without `compress`), but
    byte-identical for identical arrays.

    numpy stamps each member with the current time; here every member gets the
    same fixed date so that rebuilding the same report gives the same bytes.
    `level` is the zlib level when compressing (default: zlib's, 6).
    """
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            archive.writestr(info, buffer.getvalue(), compresslevel=level if compress else None)
