#!/usr/bin/env bash
# Every check that needs a GPU, in one go: the CUDA tests, then the engine and the
# whole-build benchmarks in their reference configuration (U-Net++ efficientnet-b5,
# 640 px, random weights). Logs go to LOG_DIR (default bench/logs).
#
#   bash bench/gpu.sh [LOG_DIR]
#
# BUILD_IMAGES (default 10) sets the images of the whole-build benchmark; its rates are
# per image, and the report (bench/RESULTS.md) says how many were built.
set -uo pipefail
logs=${1:-bench/logs}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$logs/gpu.txt"
timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cam_gpu.py 2>&1 \
    | tee "$logs/tests.log" || status=1
timeout 220 python3 bench/engine.py --config gpu --scorecam-layers encoder_last --compile 2>&1 \
    | grep -v "it/s]" | tee "$logs/engine.log" || status=1
timeout 240 python3 bench/build.py --config gpu --images "${BUILD_IMAGES:-10}" \
    --baseline-images 2 --variants maps,full 2>&1 | grep -v "it/s]" | tee "$logs/build.log" \
    || status=1
exit $status
