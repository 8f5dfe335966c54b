#!/usr/bin/env bash
# Install what the test suite needs (Debian's Chromium and poppler-utils for the
# browser and PDF checks, the package with its test extra) and run all of it.
# Extra arguments go to pytest. Fails when any test fails or when none ran.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
fi

python3 -m pip install -q -e '.[test]'
python3 -m ruff check .
# pytest exits 5 when it collected no test: set -e turns that into a failure too.
python3 -m pytest "$@"
