#!/usr/bin/env bash
# Configures (once) and builds dmc with CMake + Ninja + ccache into ${DMC_BUILD:-build}.
# LibTorch is taken from the venv's torch wheel unless Torch_DIR is set.
#   scripts/build.sh [extra cmake args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DMC_VENV:-$HOME/.local/share/dmc/venv}
PY=${DMC_PYTHON:-$VENV/bin/python}
BUILD=${DMC_BUILD:-build}
# LibTorch's CMake turns this into nvcc -gencode flags; dmc's kernels target Hopper (sm_90)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export CCACHE_BASEDIR="$PWD" CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
if [ ! -f "$BUILD/build.ninja" ]; then
  prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  launcher=(); command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=${DMC_BUILD_TYPE:-Release} \
    -DCMAKE_PREFIX_PATH="$prefix" -DDMC_PYTHON="$PY" -DCMAKE_CUDA_ARCHITECTURES=90 "${launcher[@]}" "$@"
fi
# DMC_TARGETS: build only these targets (e.g. the fuzz programs)
cmake --build "$BUILD" -j "${DMC_JOBS:-$(nproc)}" ${DMC_TARGETS:+--target $DMC_TARGETS}
