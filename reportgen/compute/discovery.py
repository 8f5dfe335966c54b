"""Which files a spec's `data` section names: its images (a glob, a folder or a list)
and their masks, leaving out whatever builds write, so a build never reads its own
output as input.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".bmp")


class ImageSelection(Protocol):
    """What discovery reads of a spec's `data` section (`reportgen.spec.DataSection`)."""

    images: str | list[str]
    limit: int | None
    masks: str | None


log = logging.getLogger(__name__)
# Characters that make a path component a glob pattern (`]` alone is literal).
GLOB_SYNTAX = re.compile(r"[*?[]")
BUILD_FOLDERS = ("building", "old")  # a site's staging and replaced copies: .SITE.KIND-PID


def find_images(data: ImageSelection, outputs: Sequence[Path | None] = ()) -> list[Path]:
    """The images named by `data.images` (glob, folder or list), sorted, limited.

    `outputs` are the folders builds write (output.site, runtime.cache; None for none):
    no file a glob or folder finds under them, or under a site's staging or replaced copy
    beside it, is an input, so a build never takes its own figures back. What the search
    left out or did not follow is logged, one line each.
    """
    found, notes = search_images(data.images, data.limit, outputs)
    for note in notes:
        log.info("%s", note)
    return found


def search_images(images: str | list[str], limit: int | None,
                  outputs: Sequence[Path | None]) -> tuple[list[Path], list[str]]:
    """`find_images`' images of the pattern, folder or list `images`, and its notes
    instead of logging them."""
    notes: list[str] = []
    if isinstance(images, list):
        found = [Path(p) for p in images]
    else:
        pattern = Path(images)
        if pattern.is_dir():
            found = [p for p in pattern.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        else:  # a pattern also takes files without a suffix (DICOM files often have none)
            found = [p for p in _glob(pattern, notes)
                     if p.suffix.lower() in IMAGE_SUFFIXES or not p.suffix]
        # files only: a sub-folder named x.png is not an image, nor is notes.txt
        found = _outside_outputs([p for p in found if p.is_file()], outputs, notes)
    found = sorted(found, key=lambda p: str(p))
    return (found[:limit] if limit else found), notes


def _glob(pattern: Path, notes: list[str]) -> list[Path]:
    """The paths `glob.glob(pattern, recursive=True)` gives, in bounded time.

    `**` searches each real folder once: a symbolic link to a folder already searched (a
    loop, or a second way into it) is not followed, and named in `notes`. A component with
    glob characters that exists as written (a folder `study [2024]`) is taken as written.
    """
    parts = pattern.parts[1:] if pattern.anchor else pattern.parts
    current = [Path(pattern.anchor)]
    for i, part in enumerate(parts):
        if part == "**":
            folders = [f for c in current for f in _folders_below(c, notes)]
            # a last `**` matches files too, as in glob
            current = folders + ([e for f in folders for e in _matches(f, "*", notes)]
                                 if i == len(parts) - 1 else [])
        elif GLOB_SYNTAX.search(part):
            current = [m for c in current for m in _matches(c, part, notes)]
        else:
            current = [c / part for c in current if os.path.lexists(c / part)]
    return list(dict.fromkeys(current))  # two `**` can reach a path twice


def _matches(folder: Path, part: str, notes: list[str]) -> list[Path]:
    """The entries of `folder` whose names match the pattern `part` (hidden ones only for a
    pattern starting with a dot, as in glob); the entry named `part` itself when it exists."""
    if os.path.lexists(folder / part):
        # a name on disk means itself: `study [2024]` is not the set of characters 2, 0 and 4
        note = (f"data.images: {folder / part} exists, so {part!r} in the pattern is that "
                "name, not glob syntax ([[] stands for a literal [ in a pattern)")
        if note not in notes:
            notes.append(note)
        return [folder / part]
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError:  # not a folder, or one we may not read: nothing in it matches
        return []
    return [folder / name for name in names if fnmatch.fnmatch(name, part)
            and (part.startswith(".") or not name.startswith("."))]


def _folders_below(top: Path, notes: list[str]) -> list[Path]:
    """`top` and the folders below it but hidden ones (as glob's `**`), each real folder once,
    breadth first and real folders before links, so a link is what is left unfollowed."""
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    queue = deque([top])
    while queue:
        folder = queue.popleft()
        try:
            status = folder.stat()
            key = (status.st_dev, status.st_ino)
            if key in visited:
                note = _revisit_note(folder)
                if note not in notes:
                    notes.append(note)
                continue
            visited.add(key)
            with os.scandir(folder) as entries:
                below = sorted((entry.is_symlink(), entry.name) for entry in entries
                               if not entry.name.startswith(".") and entry.is_dir())
        except OSError:  # gone, unreadable or a dangling link: nothing below it to search
            continue
        found.append(folder)
        queue.extend(folder / name for _, name in below)
    return found


def _revisit_note(link: Path) -> str:
    """One line on a link to a folder `_folders_below` has searched already."""
    target = Path(os.path.realpath(link))
    holder = Path(os.path.realpath(link.parent))
    what = ("a loop: it leads back to a folder holding it" if target == holder
            or target in holder.parents else "a second way into a folder already searched")
    return f"data.images: symbolic link {link} -> {target} is {what}; not followed"


def _outside_outputs(found: list[Path], outputs: Sequence[Path | None],
                     notes: list[str]) -> list[Path]:
    """`found` without the files under the output folders (see `find_images`), noted."""
    folders = [Path(os.path.realpath(p)) for p in outputs if p is not None]
    kept, left = [], dict.fromkeys(folders, 0)
    for path in found:
        real = Path(os.path.realpath(path))
        folder = next((f for f in folders if _written_by_builds(real, f)), None)
        if folder is None:
            kept.append(path)
        else:
            left[folder] += 1
    for folder, count in left.items():
        if count:
            notes.append(f"data.images: {count} file(s) under the output folder {folder} (or "
                         "its staging copies beside it) left out: a build never reads its own "
                         "output as input")
    return kept


def _written_by_builds(real: Path, folder: Path) -> bool:
    """Whether the resolved `real` lies in the output `folder` or in the copies a build
    writes or retires beside it (.NAME.building-PID, .NAME.old-PID)."""
    if folder in real.parents:
        return True
    if folder.parent not in real.parents:
        return False
    first = real.relative_to(folder.parent).parts[0]
    return any(fnmatch.fnmatchcase(first, f".{folder.name}.{kind}-*") for kind in BUILD_FOLDERS)


def mask_for(data: ImageSelection, image: Path) -> Path | None:
    """The ground-truth mask `data.masks` names for `image` (None without masks)."""
    if not data.masks:
        return None
    return Path(data.masks.replace("{stem}", image.stem))
