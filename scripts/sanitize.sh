#!/usr/bin/env bash
# The CPU test suite under AddressSanitizer + UndefinedBehaviorSanitizer, built with CUDA off (so this build is
# also the proof that a machine without the CUDA toolkit compiles everything, the GPU test files included; their
# cases report skipped), plus one replay of every fuzz corpus input (tests/fuzz/corpus) under the sanitizers.
#
#   scripts/sanitize.sh                      # all CPU cases except those excluded below
#   DMC_SANITIZE_EXCLUDE='^$' scripts/sanitize.sh   # every case (slower: the multi-process and oracle cases)
#   scripts/sanitize.sh -R 'options'         # extra ctest arguments
#
# Build directory ${DMC_SANITIZE_BUILD:-build-asan}. LibTorch itself is not instrumented; leak checking is off
# (LibTorch keeps static allocations alive at exit), every other report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${DMC_SANITIZE_BUILD:-build-asan}
DMC_BUILD=$BUILD DMC_BUILD_TYPE=${DMC_BUILD_TYPE:-RelWithDebInfo} scripts/build.sh -DDMC_SANITIZE=ON
# the multi-process Gloo cases spend minutes in uninstrumented LibTorch; they run in the plain build
EXCLUDE=${DMC_SANITIZE_EXCLUDE:-Gloo|TP=2|torchrun}
cd "$BUILD"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=0:halt_on_error=1:detect_odr_violation=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} ctest --output-on-failure -j "${DMC_TEST_JOBS:-2}" -E "$EXCLUDE" "$@"
