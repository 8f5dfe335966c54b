"""Time the per-image rendering of a build (figures, page, thumbnail, maps file) with
1 to N render threads, as `reportgen build` does it: `SiteWriter.prepare_image` and
`write_npz` on `runtime.render_workers` threads, `commit_image` in order on the caller's.

    python bench/render.py                       # 640 px, 5 layers x 4 methods, 8 images
    python bench/render.py --threads 1,2,4,8 --images 16

(from the repository root). The first row renders on one thread with the maps at zlib's
default level (6), as builds did before render threads: the baseline of the speed-ups.
The last stores the maps undeflated (`output.compress_maps: false`). The images, maps
and metrics are synthetic (smooth random maps of the reference configuration's shapes:
three encoder layers at 20-160 px upsampled, two at full size); rendering cost does not
depend on what they show. The output is thrown away.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reportgen.build import MAPS_COMPRESSION  # noqa: E402
from reportgen.hashing import write_npz  # noqa: E402
from reportgen.render.site import SiteWriter  # noqa: E402
from reportgen.report.results import Cell, ImageResult, LayerRow, MethodRow, ShownValue  # noqa: E402
from tests.site_fixtures import METRICS, disc, make_context  # noqa: E402

LAYERS = {"encoder_early": 160, "encoder_mid": 40, "encoder_last": 20, "decoder_last": 0,
          "seg_head": 0}  # raw map side at 640 px; 0: the input size
METHODS = ["gradcam", "gradcam++", "scorecam", "layercam"]


def synthetic(index: int, size: int) -> tuple[ImageResult, dict[str, np.ndarray]]:
    """One image's result (as the site gets it) and its maps file's arrays."""
    generator = torch.Generator().manual_seed(index)
    rng = np.random.default_rng(index)
    display = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    prediction = disc(size, (size / 2, size / 2 + index), size / 5)
    cells, arrays = {}, {}
    for layer, side in LAYERS.items():
        for method in METHODS:
            raw = torch.rand(1, 1, side or size // 16, side or size // 16, generator=generator)
            normalised = F.interpolate(raw, size=(size, size), mode="bilinear")[0, 0]
            if not side:
                raw = normalised[None, None]
            arrays[f"{layer}|{method}|raw"] = raw[0, 0].numpy()
            arrays[f"{layer}|{method}|normalised"] = normalised.numpy().astype(np.float16)
            cells[layer, method] = Cell(
                layer=layer, method=method, map=normalised.numpy(), verdict="good",
                metrics={name: ShownValue(float(rng.random())) for name in METRICS},
                curves={"deletion": list(np.linspace(1, 0, 11)),
                        "insertion": list(np.linspace(0, 1, 11))})
    result = ImageResult(
        id=f"img-{index:04d}", source=Path(f"images/{index:04d}.png"), display=display,
        probability=prediction.astype(np.float32), prediction=prediction,
        ground_truth=prediction, mask_source=Path(f"masks/{index:04d}.png"),
        dice=ShownValue(1.0), iou=ShownValue(1.0), cells=cells, notes=[])
    return result, arrays


def run(threads: int, images: list[tuple[ImageResult, dict[str, np.ndarray]]],
        out: Path, level: int | None = MAPS_COMPRESSION) -> float:
    """Wall seconds to render every image with `threads` render threads, the maps
    deflated at zlib `level` (0: stored)."""
    context = dataclasses.replace(
        make_context(image_count=len(images)),
        layers=[LayerRow(name, name, 16, 1.0, "") for name in LAYERS],
        methods=[MethodRow(name, "gradient", "1 backward", "") for name in METHODS])
    writer = SiteWriter(out, context, [result.id for result, _ in images])

    def prepare(item: tuple[ImageResult, dict[str, np.ndarray]]):
        result, arrays = item
        write_npz(out / f"{result.id}.npz", arrays, compress=level != 0, level=level)
        return writer.prepare_image(result)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for prepared in pool.map(prepare, images):
            writer.commit_image(prepared)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    args = parser.parse_args()
    images = [synthetic(i, args.size) for i in range(args.images)]
    counts = [int(n) for n in args.threads.split(",")]
    cpu = platform.processor() or platform.machine()
    print(f"# {datetime.date.today()} {platform.platform()}, {cpu}, {os.cpu_count()} CPUs; "
          f"{args.images} images of {args.size} px, {len(LAYERS)} layers x "
          f"{len(METHODS)} methods")
    print("| render threads | maps zlib level | s per image | images per second | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    runs = [(1, None)] + [(count, MAPS_COMPRESSION) for count in counts] + [(counts[-1], 0)]
    first = None
    for count, level in runs:  # first: one thread at zlib's default level, as before
        with tempfile.TemporaryDirectory() as folder:
            per_image = run(count, images, Path(folder), level) / args.images
        first = first or per_image
        shown = "stored" if level == 0 else level or 6
        print(f"| {count} | {shown} | {per_image:.3f} | {1 / per_image:.2f} | "
              f"{first / per_image:.2f}x |")


if __name__ == "__main__":
    main()
