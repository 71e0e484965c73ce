#!/usr/bin/env bash
# Install what is missing, then run every check CI runs: ruff, import-linter contracts, pytest (CPU).
#   ./test.sh            the whole suite
#   ./test.sh -k fit     extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
# torch's OpenMP threads spin while waiting; on a shared or busy machine that slows everything ~10x.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export DPMESH_HOME="${DPMESH_HOME:-$PWD/.dpmesh-home}"   # caches (Anny build) stay inside the checkout
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
export PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check dpmesh_core app tests
.venv/bin/lint-imports --no-cache   # its cache has gone stale here (reported cycles that no longer exist)
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
