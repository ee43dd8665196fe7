#!/usr/bin/env bash
# One call on the GPU machine (device tool): build dmc against the machine's torch + libraries, run the whole
# test suite (GPU cases included), then the benchmarks, and write logs plus a results table under $OUT.
#   OUT=/tmp/out scripts/gpu_check.sh [all|tests|bench|train]
# With the device tool, carry .carry (a copy of ../shared/tokenizers) so the tokenizer-vector test runs too.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export DMC_VENV=${DMC_VENV:-/opt/torch/.venv}
export PATH="$DMC_VENV/bin:$PATH"
[ -d .carry/shared ] && export DMC_SHARED=$PWD/.carry/shared
export DMC_BUILD=${DMC_BUILD:-build-gpu} TORCH_CUDA_ARCH_LIST=9.0 DMC_JOBS=${DMC_JOBS:-16}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u; } > "$OUT/machine.txt" 2>&1
t0=$(date +%s)
if ! scripts/build.sh -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/build.log" 2>&1; then
  tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"
B=$DMC_BUILD
if [ "$what" = all ] || [ "$what" = tests ]; then
  (cd "$B" && ctest --output-on-failure -j 8 > "$OUT/ctest.log" 2>&1); echo "ctest rc=$?"
  tail -5 "$OUT/ctest.log"
  "$B/dmc_tests" "[gpu]" -s 2>&1 | grep -E "^\[gpu|passed|failed" | tail -5
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  rm -f "$OUT/bench_decode.jsonl"
  "$B/bench_decode" --preset llama2-7b --batch 1,16 --prompt-len 128 --new-tokens 256 --json "$OUT/bench_decode.jsonl" \
    > "$OUT/bench_decode.log" 2>&1; echo "bench_decode rc=$?"
  python3 bench/hf_generate.py --preset llama2-7b --batch 1,16 --prompt-len 128 --new-tokens 256 \
    --json "$OUT/bench_decode.jsonl" > "$OUT/hf_generate.log" 2>&1; echo "hf_generate rc=$?"
  python3 scripts/results_table.py "$OUT/bench_decode.jsonl" > "$OUT/results.md"; cat "$OUT/results.md"
fi
if [ "$what" = all ] || [ "$what" = train ]; then
  J="$OUT/bench_train.jsonl"; rm -f "$J"
  common="--preset llama-1b --seq-len 4096 --steps 8 --warmup 3 --json $J"
  # trainer vs HF eager, no recompute, micro-batch 4
  "$B/bench_train" $common --micro-batch 4 --mode vanilla > "$OUT/bench_train.log" 2>&1; echo "bench_train vanilla rc=$?"
  python3 bench/hf_train.py --preset llama-1b --seq-len 4096 --steps 8 --warmup 3 --micro-batch 4 --json "$J" \
    >> "$OUT/bench_train.log" 2>&1; echo "hf_train rc=$?"
  # DMC vs vanilla step, both with per-layer activation checkpointing (DMC's merging temporaries need it at 4k)
  "$B/bench_train" $common --micro-batch 4 --mode vanilla --activation-checkpointing >> "$OUT/bench_train.log" 2>&1
  echo "bench_train vanilla+ckpt rc=$?"
  "$B/bench_train" $common --micro-batch 4 --mode dmc --activation-checkpointing >> "$OUT/bench_train.log" 2>&1
  echo "bench_train dmc+ckpt rc=$?"
  python3 scripts/train_table.py "$J" > "$OUT/train_results.md"; cat "$OUT/train_results.md"
fi
