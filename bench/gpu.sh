#!/usr/bin/env bash
# Every check that needs a GPU: the CUDA tests, then the engine, render and
# whole-build benchmarks in their reference configuration (U-Net++ efficientnet-b5,
# 640 px, random weights). Logs go to LOG_DIR (default bench/logs).
#
#   bash bench/gpu.sh [LOG_DIR] [all|engine|build]
#
# "engine" runs the CUDA tests and the engine and render benchmarks (about 6 minutes on
# an H100), "build" the whole-build benchmark alone (up to 9 minutes), "all" (default)
# both with shorter limits, under 10 minutes. BUILD_IMAGES (default 8) sets the images
# of the whole-build benchmark (the full spec: every metric, site and PDF where
# WeasyPrint loads) and VARIANTS its variants (default full; add maps for the baseline's
# work only); rates are per image.
set -uo pipefail
logs=${1:-bench/logs}
part=${2:-all}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$logs/gpu.txt"
if [ "$part" != build ]; then
    timeout 90 python3 -m pytest -v -p no:cacheprovider --timeout 50 -m gpu tests/test_cam_gpu.py \
        2>&1 | tee "$logs/tests.log" || status=1
    timeout 240 python3 bench/engine.py --config gpu --scorecam-layers encoder_last --compile 2>&1 \
        | grep -v "it/s]" | tee "$logs/engine.log" || status=1
    timeout 60 python3 bench/render.py --threads 1,2,4,8 --images 8 2>&1 \
        | tee "$logs/render.log" || status=1
fi
if [ "$part" != engine ]; then
    limit=$([ "$part" = build ] && echo 560 || echo 200)
    timeout "$limit" python3 bench/build.py --config gpu --images "${BUILD_IMAGES:-8}" \
        --baseline-images 2 --variants "${VARIANTS:-full}" 2>&1 | grep -v "it/s]" \
        | tee "$logs/build.log" || status=1
fi
exit $status
