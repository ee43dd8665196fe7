#!/usr/bin/env bash
# Fuzzes dmc's parsers of untrusted files with libFuzzer (clang, ASan + UBSan) for a bounded time each:
# safetensors headers, config.json, YAML settings, the .xz/.gz decoders (tests/fuzz/*.cpp).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET=60] [target ...]
#
# New inputs that raise coverage are added to a scratch copy of tests/fuzz/corpus/<target>/ (under the build
# directory); a crash leaves crash-* files in the build directory and fails the script: minimise it
# (./fuzz_<target> -minimize_crash=1 FILE), fix the bug, and add the input to tests/fuzz/corpus/<target>/ so that
# the replay in scripts/sanitize.sh (CI) keeps it fixed. Needs clang and libFuzzer (Debian: clang,
# libclang-rt-14-dev), installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
TARGETS=${*:-safetensors config yaml decompress gguf tokenizer_json}
if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-rt-14-dev >/dev/null
fi
BUILD=${DMC_FUZZ_BUILD:-build-fuzz}
DMC_TARGETS=$(printf 'fuzz_%s ' $TARGETS) CC=clang CXX=clang++ DMC_BUILD=$BUILD DMC_BUILD_TYPE=RelWithDebInfo \
  scripts/build.sh -DDMC_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DDMC_BUILD_TESTS=OFF
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:detect_odr_violation=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in $TARGETS; do
  work="$BUILD/corpus-$t"
  mkdir -p "$work"
  cp -n tests/fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
  echo "[fuzz] $t for ${SECS}s"
  (cd "$BUILD" && ./fuzz_"$t" -max_total_time="$SECS" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="crash-$t-" "corpus-$t") > "$BUILD/fuzz-$t.log" 2>&1 || { status=1; tail -30 "$BUILD/fuzz-$t.log"; }
  grep -E "^#[0-9]+.*(DONE|pulse)" "$BUILD/fuzz-$t.log" | tail -1 || true
done
exit $status
