#!/usr/bin/env bash
# Sets up if needed, builds, and runs every test: ctest (C++) then pytest (reference parity).
# Usage: scripts/test.sh [ctest -R regex]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SFTGO_BUILD_DIR:-build}
scripts/setup.sh
echo "== C++ tests (ctest)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${SFTGO_TEST_JOBS:-2}" ${1:+-R "$1"}
echo "== Reference parity tests (pytest)"
export SFTGO_BUILD_DIR="$(cd "$BUILD_DIR" && pwd)"
.venv/bin/python -m pytest -q tests/python
