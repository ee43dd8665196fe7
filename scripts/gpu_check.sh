#!/usr/bin/env bash
# One call on the GPU machine (device tool): build dmc against the machine's torch + libraries, then the chosen
# sections, writing logs and result tables under $OUT:
#   OUT=/tmp/out scripts/gpu_check.sh [sections...]     sections: ctest gpu decode hf train (default: gpu decode train)
#     ctest   the whole CTest suite (CPU cases too)
#     gpu     the [gpu] test cases: kernels vs reference ops, bf16 vs HF, flash DMC attention
#     decode  dmc bench decode: Llama 2 7B shape, vanilla vs DMC (forced CR 4 and 8) at equal memory, 4k context
#     cr4     the CR 4 half of decode alone (vanilla and DMC, with the prefill timings)
#     cr8     vanilla and DMC at forced CR 8 in one invocation, REPEATS times (default 1); with BLASLT=1 each
#             repeat runs once more with TORCH_BLAS_PREFER_CUBLASLT=1 (cuBLASLt for every GEMM)
#     prefill kernel profiles of one 4k prefill, vanilla and DMC (batch 4 decode after it)
#     hf      the engine's vanilla generate against HF generate() (bench_decode + bench/hf_generate.py)
#     train   DMC vs vanilla training step (1B, recompute; blockwise and flash DMC attention)
#     trainhf 1B training step (no recompute) vs HF eager: fused ops off and on, each with a kernel profile
# With the device tool, carry .carry (a copy of ../shared/tokenizers, .carry/lzma: liblzma's headers from Debian's
# liblzma-dev, and .carry/pcre2/include: pcre2.h from Debian's libpcre2-dev, which the GPU machine lacks; CMake finds
# it there and links the machine's libpcre2-8.so.0; scripts/gpu_carry.sh makes .carry/{httplib,lzma,pcre2}) so that
# the build and the tokenizer-vector test run.
set -uo pipefail
cd "$(dirname "$0")/.."
sections=${*:-gpu decode train}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export DMC_VENV=${DMC_VENV:-/opt/torch/.venv}
export PATH="$DMC_VENV/bin:$PATH"
[ -d .carry/shared ] && export DMC_SHARED=$PWD/.carry/shared
export DMC_BUILD=${DMC_BUILD:-build-gpu} TORCH_CUDA_ARCH_LIST=9.0 DMC_JOBS=${DMC_JOBS:-16}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u; } > "$OUT/machine.txt" 2>&1
t0=$(date +%s)
# the GPU machine has liblzma's runtime but not its headers: carry them (.carry/lzma, from Debian's liblzma-dev) and
# link the installed runtime (or the carried static library)
lzma=()
if [ -f .carry/lzma/include/lzma.h ] && [ ! -f /usr/include/lzma.h ]; then
  lib=$(ls /usr/lib/x86_64-linux-gnu/liblzma.so.5 2>/dev/null || echo "$PWD/.carry/lzma/lib/liblzma.a")
  lzma=(-DLIBLZMA_INCLUDE_DIR="$PWD/.carry/lzma/include" -DLIBLZMA_LIBRARY="$lib")
fi
# cpp-httplib (for `dmc serve`), which the GPU machine lacks: Debian's split build carried in .carry/httplib (its
# header, libcpp-httplib.so.0.11.4, the brotli runtime, and the openssl / zlib / brotli headers its header includes
# under the defines the library was built with); a pkg-config file made here points CMake at it
if [ -f .carry/httplib/include/httplib.h ] && ! pkg-config --exists cpp-httplib 2>/dev/null; then
  h=$PWD/.carry/httplib
  ln -sf libcpp-httplib.so.0.11.4 "$h/lib/libcpp-httplib.so"
  ln -sf libcpp-httplib.so.0.11.4 "$h/lib/libcpp-httplib.so.0.11"  # the soname the binaries ask for at run time
  mkdir -p /tmp/dmc-pc
  printf '%s\n' "Name: cpp-httplib" "Description: carried from Debian 12" "Version: 0.11.4" \
    "Libs: -L$h/lib -Wl,-rpath,$h/lib -lcpp-httplib -pthread" \
    "Cflags: -I$h/include -I$h/include/x86_64-linux-gnu -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT" \
    > /tmp/dmc-pc/cpp-httplib.pc
  export PKG_CONFIG_PATH=/tmp/dmc-pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  export LD_LIBRARY_PATH=$h/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if ! scripts/build.sh -DCMAKE_CUDA_ARCHITECTURES=90 "${lzma[@]}" > "$OUT/build.log" 2>&1; then
  if [ -n "${h:-}" ]; then  # the carried cpp-httplib did not work here: build without `dmc serve` rather than nothing
    echo "build with the carried cpp-httplib failed (see build_httplib.log); building without dmc serve"
    mv "$OUT/build.log" "$OUT/build_httplib.log"; rm -f /tmp/dmc-pc/cpp-httplib.pc "$DMC_BUILD/CMakeCache.txt" "$DMC_BUILD/build.ninja"
    scripts/build.sh -DCMAKE_CUDA_ARCHITECTURES=90 "${lzma[@]}" > "$OUT/build.log" 2>&1 || {
      tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
  else
    tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
fi
echo "build: $(( $(date +%s) - t0 )) s"
B=$DMC_BUILD
has() { [[ " $sections " == *" $1 "* ]]; }
if has ctest; then
  (cd "$B" && ctest --output-on-failure -j 8 > "$OUT/ctest.log" 2>&1); echo "ctest rc=$?"
  tail -5 "$OUT/ctest.log"
fi
if has gpu; then
  "$B/dmc_tests" "[gpu]" -s > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests rc=$?"
  grep -E "^\[gpu|passed|failed|FAILED|with expansion" -A2 "$OUT/gpu_tests.log" | grep -v "^--$" | tail -40
fi
if has decode; then
  J="$OUT/bench_decode.jsonl"; rm -f "$J"
  common="--preset llama2-7b --prompt-len 3840 --new-tokens 256 --steps 64 --batch max --json $J"
  timeout 300 "$B/dmc" bench decode $common --policy vanilla,dmc --force-cr 4 > "$OUT/decode.log" 2>&1; echo "bench decode cr4 rc=$?"
  timeout 200 "$B/dmc" bench decode $common --policy vanilla,dmc --force-cr 8 --prefill-check 0 >> "$OUT/decode.log" 2>&1; echo "bench decode cr8 rc=$?"
  grep -E "verif|error" "$OUT/decode.log" | tail -6
  python3 scripts/decode_table.py "$J" | tee "$OUT/decode_results.md"
fi
dcommon="--preset llama2-7b --prompt-len 3840 --new-tokens 256 --steps 64 --batch max"
if has cr4; then
  J="$OUT/bench_cr4.jsonl"; rm -f "$J"; t1=$(date +%s)
  timeout 300 "$B/dmc" bench decode $dcommon --json "$J" --policy vanilla,dmc --force-cr 4 > "$OUT/cr4.log" 2>&1
  echo "bench decode cr4 rc=$? ($(( $(date +%s) - t1 )) s)"
  grep -E "verif|error" "$OUT/cr4.log" | tail -4
  python3 scripts/decode_table.py "$J" | tee "$OUT/cr4_results.md"
fi
if has cr8; then
  J="$OUT/bench_cr8.jsonl"; rm -f "$J"
  for r in $(seq 1 "${REPEATS:-1}"); do
    for lt in 0 ${BLASLT:+1}; do
      t1=$(date +%s)
      TORCH_BLAS_PREFER_CUBLASLT=$lt timeout 200 "$B/dmc" bench decode $dcommon --json "$J" --policy vanilla,dmc \
        --force-cr 8 --prefill-check 0 >> "$OUT/cr8.log" 2>&1
      echo "bench decode cr8 (repeat $r, cublaslt $lt) rc=$? ($(( $(date +%s) - t1 )) s)"
      python3 scripts/decode_table.py "$J" | tail -2
    done
  done
  grep -E "verif|error" "$OUT/cr8.log" | tail -4
fi
if has prefill; then
  t1=$(date +%s)
  timeout 200 "$B/dmc" bench decode --preset llama2-7b --prompt-len 3840 --new-tokens 8 --steps 4 --batch 4 \
    --policy vanilla,dmc --force-cr 4 --profile-prefill 1 > "$OUT/prefill_profile.log" 2>&1
  echo "prefill profile rc=$? ($(( $(date +%s) - t1 )) s)"
  grep -E -A14 "^profile of one prefill" "$OUT/prefill_profile.log" | cut -c1-160
  grep -E "prefill" "$OUT/prefill_profile.log" | grep -v "^profile" | tail -6
fi
if has hf; then
  rm -f "$OUT/bench_hf.jsonl"
  "$B/bench_decode" --preset llama2-7b --batch 1,16 --prompt-len 128 --new-tokens 256 --json "$OUT/bench_hf.jsonl" \
    > "$OUT/bench_hf.log" 2>&1; echo "bench_decode rc=$?"
  python3 bench/hf_generate.py --preset llama2-7b --batch 1,16 --prompt-len 128 --new-tokens 256 \
    --json "$OUT/bench_hf.jsonl" >> "$OUT/bench_hf.log" 2>&1; echo "hf_generate rc=$?"
  python3 scripts/results_table.py "$OUT/bench_hf.jsonl" | tee "$OUT/hf_results.md"
fi
if has trainhf; then
  J="$OUT/bench_train_hf.jsonl"; rm -f "$J"
  common="--preset llama-1b --seq-len 4096 --micro-batch 4 --steps 8 --warmup 3 --json $J"
  for f in ${FUSED_SETTINGS:-false true}; do
    "$B/bench_train" $common --mode vanilla --fused-ops $f --profile 2 > "$OUT/bench_train_fused_$f.log" 2>&1
    echo "dmc fused_ops=$f rc=$?"; grep -A14 "^profile" "$OUT/bench_train_fused_$f.log" | cut -c1-150
  done
  python3 bench/hf_train.py $common > "$OUT/hf_train.log" 2>&1; echo "hf rc=$?"
  python3 scripts/train_table.py "$J" | tee "$OUT/train_hf_results.md"
fi
if has train; then
  J="$OUT/bench_train.jsonl"; rm -f "$J"
  common="--preset llama-1b --seq-len 4096 --steps 6 --warmup 2 --json $J --micro-batch 4"
  "$B/bench_train" $common --mode vanilla --activation-checkpointing > "$OUT/bench_train.log" 2>&1; echo "vanilla+ckpt rc=$?"
  for impl in ${DMC_ATTN_IMPLS:-blocks flash}; do
    "$B/bench_train" $common --mode dmc --dmc-attn-impl $impl --activation-checkpointing >> "$OUT/bench_train.log" 2>&1
    echo "dmc/$impl+ckpt rc=$?"
  done
  python3 scripts/train_table.py "$J" | tee "$OUT/train_results.md"
fi
