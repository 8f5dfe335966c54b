#!/usr/bin/env bash
# Install reportgen into .venv, a virtual environment in the checkout, so that both README
# commands work on a stock Debian 12 (whose python3 refuses `pip install`, PEP 668) as on a
# machine with a pip-writable Python. The environment sees the base Python's packages
# (--system-site-packages): a torch already installed there is used, not installed again.
#
#   bash scripts/install.sh          the package: then .venv/bin/reportgen
#   bash scripts/install.sh --test   and what the test suite needs: Debian's Chromium,
#                                    poppler-utils and fontconfig's tools (browser, PDF and
#                                    font checks) when missing, and the test extra
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
}

missing=()
if [ -n "$extra" ]; then
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
    command -v fc-list >/dev/null 2>&1 || missing+=(fontconfig)
fi
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    rm -rf .venv  # a half-made one from an interrupted run
    if ! python3 -m venv --system-site-packages .venv; then
        rm -rf .venv
        apt_install python3-venv  # Debian ships venv's pip bootstrap (ensurepip) apart
        python3 -m venv --system-site-packages .venv
    fi
fi
.venv/bin/python -m pip install -q -e ".$extra"
