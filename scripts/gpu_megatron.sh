#!/usr/bin/env bash
# Issue #20 on the GPU machine: a Llama-2-7B-shape model with random bf16 weights written as NVIDIA's DMC releases
# are laid out (TP 1, the tracker and mp_rank_00/ at the root, dmc_* args), imported with
# `dmc convert --from-megatron`, then decoded through the engine with DMC at forced CR 4 against the full cache at
# the same cache memory: batch 1 and the largest batch, dmc's pages (16 tokens) and the seed's (256), each run also
# timing parallel prefill against the token-by-token prefill the seed's inference uses.
#   OUT=... scripts/gpu_megatron.sh        (after scripts/gpu_check.sh build; no carried files needed)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
B=${DMC_BUILD:-build-gpu}
PY=${DMC_PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$B/dmc" ] || { echo "no $B/dmc: run scripts/gpu_check.sh build first"; exit 1; }
t0=$(date +%s)
[ -s /tmp/meg7b/mp_rank_00/model_optim_rng.pt ] || {
  "$PY" tests/reference/megatron_writer.py random:llama2-7b /tmp/meg7b --tp 1 --layout root --dmc-args \
    > "$OUT/write.log" 2>&1 || { tail "$OUT/write.log"; exit 1; }
}
echo "wrote the 7B release-layout checkpoint: $(( $(date +%s) - t0 )) s, $(du -sh /tmp/meg7b | cut -f1)"
t1=$(date +%s)
rm -rf /tmp/m7b
DMC_PYTHON=$PY "$B/dmc" convert --from-megatron /tmp/meg7b --out /tmp/m7b --dmc on --dtype bf16 > "$OUT/import.log" 2>&1 \
  || { tail "$OUT/import.log"; exit 1; }
echo "import: $(( $(date +%s) - t1 )) s"; grep -h "tensor_parallel\|wrote" "$OUT/import.log" | tail -2
J="$OUT/decode.jsonl"; rm -f "$J"
common=(--model /tmp/m7b --policy vanilla,dmc --force-cr 4 --prompt-len 3840 --new-tokens 256 --steps 64 --json "$J")
timeout 150 "$B/dmc" bench decode "${common[@]}" --batch 1 --prefill-check 1 > "$OUT/decode_b1.log" 2>&1; echo "batch 1 rc=$?"
timeout 200 "$B/dmc" bench decode "${common[@]}" --batch max --prefill-check 0 > "$OUT/decode_max.log" 2>&1; echo "batch max rc=$?"
timeout 200 "$B/dmc" bench decode "${common[@]}" --batch max --prefill-check 0 --page-size 256 > "$OUT/decode_max_p256.log" 2>&1
echo "batch max, pages of 256 rc=$?"
grep -hE "verif|tokens/s|prefill" "$OUT"/decode_*.log | tail -24
