#!/usr/bin/env bash
# Builds dmc and runs the whole test suite (CTest over the Catch2 cases). The tests that compare against
# HF transformers use the venv's python; those needing ../shared skip with a message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd "${DMC_BUILD:-build}"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} ctest --output-on-failure -j "${DMC_TEST_JOBS:-2}" "$@"
