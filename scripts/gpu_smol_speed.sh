#!/usr/bin/env bash
# Issue #17's speed gate on the GPU machine, one call after `scripts/gpu_check.sh build`: SmolLM2-135M's shape
# (random weights: head_dim 64, 9 query / 3 KV heads, 30 layers) measured the way the issue measured it.
#   1. the kernels' correctness ([gpu][dmc] and [gpu][inference] cases, which include 9 / 3 heads of 64: the flash
#      DMC attention's training form against its fp32 blockwise twin, the blend's backward kernel against autograd,
#      the decode kernels against the reference ops);
#   2. the training step, vanilla against the DMC retrofit stage (4k context, micro-batch 8), a kernel profile of the
#      DMC step, both again with the fused kernels off (the A/B of the blend kernels), and the DMC step with the
#      row-per-warp pooling kernels (DMC_POOL_TILED=0, the A/B of the tiled ones);
#   3. decode at 8k context (7,936-token prompts + 256 new), equal memory, largest batch, vanilla against DMC at
#      forced CR 4, with step / HBM-floor ratios.
#   OUT=... scripts/gpu_smol_speed.sh          results in $OUT/speed.tgz (logs, JSON lines, tables)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
R=/tmp/smol-speed
rm -rf "$R"; mkdir -p "$R" "$OUT"
B=${DMC_BUILD:-build-gpu}
[ -x "$B/dmc" ] || { echo "no $B/dmc: run scripts/gpu_check.sh build first"; exit 1; }
t0=$(date +%s)
# (by tag: Catch2 splits a test name at its commas)
timeout 150 "$B/dmc_tests" "[gpu][dmc],[gpu][inference]" -s > "$R/tests.log" 2>&1
echo "kernel tests rc=$? ($(( $(date +%s) - t0 )) s)"; grep -E "^\[gpu-dmc-flash\]|^\[gpu-dmc-blend|^\[gpu-decode-kernels|passed|failed" "$R/tests.log" | tail -40
J="$R/train.jsonl"
common=(--preset smollm2-135m --seq-len 4096 --micro-batch 8 --steps 6 --warmup 2 --json "$J")
timeout 120 "$B/bench_train" "${common[@]}" --mode vanilla > "$R/train_vanilla.log" 2>&1; echo "train vanilla rc=$?"
timeout 150 "$B/bench_train" "${common[@]}" --mode dmc --profile 2 > "$R/train_dmc.log" 2>&1; echo "train dmc rc=$?"
# the A/B: both modes again with the fused kernels off (RMSNorm, SwiGLU and DMC's blend in their ATen forms)
timeout 120 "$B/bench_train" "${common[@]}" --mode vanilla --fused-ops false > "$R/train_vanilla_aten.log" 2>&1
timeout 150 "$B/bench_train" "${common[@]}" --mode dmc --fused-ops false > "$R/train_dmc_aten.log" 2>&1
echo "train, fused ops off: rc=$?"
# the A/B of the pooling kernels: the DMC step with the row-per-warp forms instead of the tiled ones
DMC_POOL_TILED=0 timeout 150 "$B/bench_train" "${common[@]/$J/$R/train_untiled.jsonl}" --mode dmc \
  > "$R/train_dmc_untiled.log" 2>&1; echo "train dmc, pooling untiled: rc=$?"
python3 scripts/train_table.py "$J" | tee "$R/train.md"
echo "pooling kernels untiled (DMC_POOL_TILED=0):"; python3 scripts/train_table.py "$R/train_untiled.jsonl" | tail -1 | tee -a "$R/train.md"
grep -A16 "^profile" "$R/train_dmc.log" | cut -c1-160
D="$R/decode.jsonl"
timeout 200 "$B/dmc" bench decode --preset smollm2-135m --prompt-len 7936 --new-tokens 256 --steps 32 --batch max \
  --policy vanilla,dmc --force-cr 4 --prefill-check 0 --json "$D" > "$R/decode.log" 2>&1; echo "decode rc=$?"
grep -E "verif|error" "$R/decode.log" | tail -4
python3 scripts/decode_table.py "$D" | tee "$R/decode.md"
tar czf "$OUT/speed.tgz" -C "$R" .
echo "total $(( $(date +%s) - t0 )) s"
