"""Build the demo data set (brain MRI slices and brain masks) shipped under ``data/demo/``.

The demo report needs real, redistributable medical images with ground truth. Debian's
``mricron-data`` package ships the Colin27 average T1-weighted brain MRI (``ch2.nii.gz``) and
its skull-stripped version (``ch2bet.nii.gz``), 181x217x181 voxels at 1 mm, under a BSD-style
licence. This script turns them into a small 2-D segmentation data set: the task is
"segment the brain" (mask = ``ch2bet > 0``) on axial slices of the head.

What it writes (all deterministic: a rerun gives the same bytes):

* ``data/demo/train/images/ch2_zNNN.png`` and ``data/demo/train/masks/ch2_zNNN.png``
* ``data/demo/test/images/ch2_zNNN.png`` and ``data/demo/test/masks/ch2_zNNN.png``
* ``data/demo/LICENSE-DATA.md``: source, citation, the licence quoted from Debian's copyright
  file and the SHA-256 of the source volumes.

``NNN`` is the axial slice index ``z`` in the volume. Images are 8-bit grayscale PNGs at the
native in-plane size (217 rows x 181 columns, anterior up, patient left on the image's left),
with the intensity window set to the 0.5-99.5 percentiles of the whole T1 volume. Masks are
PNGs with values 0 (background) and 255 (brain).

Split: ``--test`` slices evenly spaced across the brain; training slices are taken only from
planes more than ``--gap`` slices away from every test slice, so no training slice is adjacent
to a test slice. Slices with less than ``--min-brain`` brain pixels are skipped. The number of
training slices is capped (``--train``) to keep the committed data near 1 MB.

Usage::

    python scripts/make_demo_data.py            # writes data/demo/
    python scripts/make_demo_data.py --help

If the source volumes are missing, the script installs ``mricron-data`` with apt-get when it runs
as root; otherwise it prints the command to run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

PACKAGE = "mricron-data"
TEMPLATES = Path("/usr/share/mricron/templates")
T1_FILE = TEMPLATES / "ch2.nii.gz"
BRAIN_FILE = TEMPLATES / "ch2bet.nii.gz"
COPYRIGHT_FILE = Path("/usr/share/doc/mricron-data/copyright")
REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 9]


def ensure_source_files() -> None:
    """Make sure the Colin27 volumes are present, installing ``mricron-data`` if possible."""
    if T1_FILE.is_file() and BRAIN_FILE.is_file():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            f"{T1_FILE} / {BRAIN_FILE} not found. Install the Debian package first:\n"
            f"    sudo apt-get install -y {PACKAGE}"
        )
    print(f"installing {PACKAGE} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    if not (T1_FILE.is_file() and BRAIN_FILE.is_file()):
        sys.exit(f"{PACKAGE} is installed but {T1_FILE} or {BRAIN_FILE} is missing")


def load_volume(path: Path) -> np.ndarray:
    """Load a NIfTI volume in RAS+ orientation as an array indexed [x, y, z]."""
    image = nib.as_closest_canonical(nib.load(path))
    return np.asanyarray(image.dataobj)


def axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial plane ``z`` as a (rows=y, cols=x) image with anterior at the top."""
    return np.ascontiguousarray(volume[:, :, z].T[::-1])


def choose_slices(
    brain_fraction: np.ndarray, n_test: int, n_train: int, gap: int, min_brain: float
) -> tuple[list[int], list[int]]:
    """Pick test slices evenly across the brain and training slices away from them."""
    usable = np.flatnonzero(brain_fraction >= min_brain)
    first, last = int(usable[0]), int(usable[-1])
    # n_test + 2 evenly spaced planes; drop both ends, which hold very little brain.
    test = [int(round(z)) for z in np.linspace(first, last, n_test + 2)[1:-1]]
    candidates = [int(z) for z in usable if all(abs(int(z) - t) > gap for t in test)]
    if n_train >= len(candidates):
        return test, candidates
    picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, n_train)).astype(int))
    return test, [candidates[i] for i in picks]


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an 8-bit PNG (cv2's encoder stores no timestamp, so the bytes are reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image, PNG_PARAMS):
        raise OSError(f"could not write {path}")


def clear_split(folder: Path) -> None:
    """Remove PNGs from a previous run so that a rerun with fewer slices leaves no strays."""
    for sub in ("images", "masks"):
        for old in sorted((folder / sub).glob("*.png")):
            old.unlink()


def copyright_paragraphs() -> str:
    """Quote the parts of Debian's copyright file that cover the template volumes."""
    paragraphs = [p for p in COPYRIGHT_FILE.read_text().split("\n\n") if p.strip()]
    keep = [
        p
        for p in paragraphs
        if p.startswith("Format:")
        or p.startswith("Files: *\n")
        or p.startswith("License: BSD-3-clause")
    ]
    if len(keep) != 3:
        sys.exit(f"unexpected layout of {COPYRIGHT_FILE}; update copyright_paragraphs()")
    # The header's Files-Excluded list concerns the Debian source tarball, not the data.
    header = "\n".join(
        line
        for line in keep[0].splitlines()
        if line.split(":")[0] in ("Upstream-Name", "Upstream-Contact", "Source")
    )
    return "\n\n".join([header, *keep[1:]])


def package_version() -> str:
    """Installed version of the Debian package, for the record."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wrap(text: str) -> str:
    """A Markdown sub-list item wrapped to 100 columns."""
    return textwrap.fill(text, 100, initial_indent="  - ", subsequent_indent="    ")


def write_licence(
    out: Path, test: list[int], train: list[int], window: tuple[float, float]
) -> None:
    text = f"""# Demo data: source and licence

The images and masks under `data/demo/train/` and `data/demo/test/` are derived from the
**Colin27** brain MRI ("Colin Holmes 27 average"): 27 T1-weighted scans of one healthy
volunteer, registered and averaged at the Montreal Neurological Institute (MNI), McGill
University. Reference: C. J. Holmes, R. Hoge, L. Collins, R. Woods, A. W. Toga, A. C. Evans,
"Enhancement of MR images using registration for signal averaging", *Journal of Computer
Assisted Tomography* 22(2):324-333, 1998.

They were taken from the copies distributed with **MRIcron** (Chris Rorden) in the Debian
package `{PACKAGE}` (version {package_version()}):

| file | role | SHA-256 |
|---|---|---|
| `{T1_FILE}` | T1-weighted image | `{sha256(T1_FILE)}` |
| `{BRAIN_FILE}` | skull-stripped image; brain mask = voxels > 0 | `{sha256(BRAIN_FILE)}` |

Modifications, made by `python scripts/make_demo_data.py`:

- extracted axial slices (index z of the 181 x 217 x 181 volume), oriented anterior-up:
{wrap("test: z = " + ", ".join(map(str, test)))}
{wrap("training: z = " + ", ".join(map(str, train)))}
- intensities windowed to [{window[0]:g}, {window[1]:g}] (0.5-99.5 percentiles of the volume)
  and saved as 8-bit grayscale PNG;
- masks: the non-zero voxels of the skull-stripped image, saved as 0/255 PNG.

## Licence

Debian's copyright file for the package,
`{COPYRIGHT_FILE}`, lists no separate notice for the template
volumes; they are distributed as part of MRIcron under the terms below, quoted from that file
(its other paragraphs concern source code that is not used here):

```
{copyright_paragraphs()}
```
"""
    (out / "LICENSE-DATA.md").write_text(text)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "data" / "demo", help="output folder"
    )
    parser.add_argument("--test", type=int, default=8, help="number of test slices")
    parser.add_argument("--train", type=int, default=40, help="maximum number of training slices")
    parser.add_argument(
        "--gap",
        type=int,
        default=2,
        help="training slices are more than GAP planes away from every test slice",
    )
    parser.add_argument(
        "--min-brain",
        type=float,
        default=0.02,
        help="skip slices whose brain pixels are fewer than this fraction of the slice",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    ensure_source_files()
    t1 = load_volume(T1_FILE).astype(np.float32)
    brain = load_volume(BRAIN_FILE) > 0
    if t1.shape != brain.shape:
        sys.exit(f"shape mismatch: {T1_FILE} {t1.shape} vs {BRAIN_FILE} {brain.shape}")

    low, high = (float(v) for v in np.percentile(t1, [0.5, 99.5]))
    scaled = np.clip((t1 - low) / (high - low) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    test, train = choose_slices(
        brain.mean(axis=(0, 1)), args.test, args.train, args.gap, args.min_brain
    )

    for split, planes in (("train", train), ("test", test)):
        folder = args.out / split
        clear_split(folder)
        for z in planes:
            name = f"ch2_z{z:03d}.png"
            write_png(folder / "images" / name, axial_slice(scaled, z))
            write_png(folder / "masks" / name, axial_slice(brain, z).astype(np.uint8) * 255)
    write_licence(args.out, test, train, (low, high))

    size = sum(p.stat().st_size for p in args.out.rglob("*.png"))
    print(f"window [{low:g}, {high:g}]; test z = {test}")
    print(f"train z = {train}")
    print(f"wrote {len(train)} training and {len(test)} test slices ({size / 1e6:.2f} MB of PNG)")


if __name__ == "__main__":
    main()
