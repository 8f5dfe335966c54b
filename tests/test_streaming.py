"""Streaming: a build writes each image's maps and page as it goes, so its memory does not
grow with the number of images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_images, write_spec

ROOT = Path(__file__).resolve().parents[1]
PEAK_RSS = """
import resource, sys
from reportgen.build import BuildOptions, build
build(sys.argv[1], BuildOptions())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_mib(folder: Path, images: int) -> float:
    """Peak resident memory of a fresh process building a report of `images` images."""
    write_images(folder, count=images, size=128)
    spec = write_spec(folder / "spec.yaml",
                      model={"architecture": "Unet", "encoder": "resnet18", "input_size": 128},
                      layers=["encoder_mid", "encoder_last", "decoder_last"],
                      methods=["gradcam", "layercam"], metrics=["attention", "dice"],
                      output={"pdf": None}, runtime={"device": "cpu", "batch_size": 4})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(spec)], capture_output=True,
                          text=True, env=env, check=True, timeout=600)
    return int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's")
def test_peak_memory_of_a_build_does_not_grow_with_the_number_of_images(tmp_path: Path):
    small = _peak_rss_mib(tmp_path / "small", 30)
    large = _peak_rss_mib(tmp_path / "large", 120)
    # Holding every image's arrays (input, display, probability, 6 maps, page data: about
    # 0.8 MiB per image at 128 px) would add some 70 MiB for the 90 extra images.
    assert large - small < 25, f"peak RSS {small:.0f} MiB for 30 images, {large:.0f} for 120"
