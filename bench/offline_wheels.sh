#!/usr/bin/env bash
# Collect the wheels bench/gpu.sh needs on a CUDA machine without network access that
# already has torch, torchvision, timm, numpy, OpenCV, Jinja2 and pytest: the packages
# below, built or downloaded for that machine's Python (default 3.12) on this one.
#
#   bash bench/offline_wheels.sh [DIR] [PYTHON_VERSION]      # default: .whl 3.12
#
# Then, on the CUDA machine, from the repository root:
#   pip install --no-index --no-deps --target /tmp/site DIR/*.whl
#   PYTHONPATH=/tmp/site bash bench/gpu.sh
# WeasyPrint is left out: without Pango on that machine no PDF is built anyway
# (bench/build.py then times the build without it).
set -euo pipefail
dir=${1:-.whl}
python=${2:-3.12}
mkdir -p "$dir"
platform=(--only-binary=:all: --python-version "$python" --implementation cp
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
# these depend on torch: without their dependencies, or pip would fetch a torch build
python3 -m pip download -q --no-deps "${platform[@]}" -d "$dir" \
    "segmentation-models-pytorch==0.6.0" ttach
python3 -m pip wheel -q --no-deps -w "$dir" "grad-cam==1.5.7"   # published as sources only
# these do not: with their dependencies, resolved for the target Python
python3 -m pip download -q "${platform[@]}" -d "$dir" pydantic pydicom pypdf pytest-timeout
ls "$dir"
