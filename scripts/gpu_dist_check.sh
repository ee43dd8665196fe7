#!/usr/bin/env bash
# Several-GPU checks (device tool, a 2-GPU kind), results under $OUT:
#   1. tensor parallel over NCCL: TP=2 logits, loss and gradients equal one GPU (fp32, vanilla and DMC layers);
#   2. training throughput of a ~1B Llama (seq 4096, bf16 autocast): 1 GPU, DP=2, TP=2 (with and without sequence
#      parallelism; and with micro-batch 8, which TP's smaller per-GPU memory allows), same global batch;
#   3. a DMC retrofit stage (finetune at CR 2) over NCCL with TP=2 and with DP=2;
#   4. inference with TP=2 (KV heads split, each rank its own page pool): greedy tokens equal one GPU's.
# Needs .carry/shared/tokenizers (the Llama 2 tokenizer) for the data.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export DMC_VENV=/opt/torch/.venv PATH=/opt/torch/.venv/bin:$PATH DMC_BUILD=build-gpu TORCH_CUDA_ARCH_LIST=9.0 DMC_JOBS=32
{ nvidia-smi -L; date -u; } > "$OUT/machine.txt"
scripts/build.sh -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
B=$PWD/build-gpu W=/tmp/dist
mkdir -p $W
two() {  # two ranks of one command
  local port=$((20000 + RANDOM % 20000))
  for r in 0 1; do RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$@" & done
  wait
}
for mode in vanilla dmc; do
  $B/dmc_dist_worker $W/tp1_$mode.st $mode 1 cuda
  for sp in 0 1; do  # sp 1: sequence parallelism
  two $B/dmc_dist_worker $W/tp2_$mode.st $mode 1 cuda $sp
  python3 -c "
from safetensors.torch import load_file as L; a=L('$W/tp1_$mode.st'); b=L('$W/tp2_$mode.st')
w=max(((b[k]-a[k]).norm()/a[k].norm().clamp_min(1e-30)).item() for k in a)
print('[nccl-tp2-vs-1gpu] $mode sequence_parallel=$sp: %d tensors, worst relative difference %.2e' % (len(a), w))" | tee -a "$OUT/dist_results.txt"
  done
done
for mode in generate-vanilla generate-dmc; do
  $B/dmc_dist_worker $W/g1_$mode.st $mode 0 cuda > "$OUT/$mode.log" 2>&1 && two $B/dmc_dist_worker $W/g2_$mode.st $mode 0 cuda >> "$OUT/$mode.log" 2>&1
  python3 -c "
from safetensors.torch import load_file as L; a=L('$W/g1_$mode.st'); b=L('$W/g2_$mode.st')
same=bool((a['tokens']==b['tokens']).all()); r=((b['prefill_logits']-a['prefill_logits']).norm()/a['prefill_logits'].norm()).item()
print('[nccl-tp2-generate] $mode: %d tokens, equal to one GPU: %s, prefill logits rel. diff %.2e' % (a['tokens'].numel(), same, r))" | tee -a "$OUT/dist_results.txt"
done
TOK=.carry/shared/tokenizers/llama2/tokenizer.model
$B/dmc data prepare --input '/usr/share/common-licenses/*' --tokenizer $TOK --out $W/data --threads 16 > "$OUT/prepare.log" 2>&1
common="--tokenizer $TOK --data $W/data --preset llama-1b --seq-len 4096 --micro-batch 4 --global-batch 8 --log-every 4
  --eval-every 0 --eval-batches 1 --device cuda --dtype bf16 --lr 1e-4 --warmup-steps 0 --keep-last 1"
run() { local name=$1; shift; timeout 240 "$@" > "$OUT/$name.log" 2>&1; echo "$name rc=$?"; }
# 12 steps; the last metrics row averages steps 9-12
run g1 $B/dmc train $common --train-steps 12 --out $W/g1
run dp2 env DMC_BIN=$B/dmc scripts/launch.sh 2 - $common --train-steps 12 --out $W/dp2
run tp2 env DMC_BIN=$B/dmc scripts/launch.sh 2 - $common --train-steps 12 --out $W/tp2 --tensor-parallel 2
run tp2_mb8 env DMC_BIN=$B/dmc scripts/launch.sh 2 - $common --train-steps 12 --out $W/tp2_mb8 --tensor-parallel 2 --micro-batch 8
run tp2_nosp env DMC_BIN=$B/dmc scripts/launch.sh 2 - $common --train-steps 12 --out $W/tp2_nosp --tensor-parallel 2 --sequence-parallel false
dmc="--stage finetune --target-cr 2 --init-from $W/g1/final --train-steps 4 --activation-checkpointing true"
if [ -z "${DIST_SKIP_DMC:-}" ]; then  # DIST_SKIP_DMC=1: skip the two retrofit runs
run dmc_tp2 env DMC_COMMAND=retrofit DMC_BIN=$B/dmc scripts/launch.sh 2 - $common $dmc --out $W/dmc_tp2 --tensor-parallel 2
run dmc_dp2 env DMC_COMMAND=retrofit DMC_BIN=$B/dmc scripts/launch.sh 2 - $common $dmc --out $W/dmc_dp2
fi
for r in g1 dp2 tp2 tp2_mb8 tp2_nosp dmc_tp2 dmc_dp2; do
  [ -f $W/$r/metrics.jsonl ] && python3 -c "
import json; rows=[json.loads(l) for l in open('$W/$r/metrics.jsonl') if 'tokens_per_s' in l]
r=rows[-1]; print('[train] $r: step %d loss %.4f tokens/s %.0f mfu %.3f mem %.1f GiB cr %s' % (r['step'], r['loss'], r['tokens_per_s'], r['mfu'], r['peak_memory_bytes']/2**30, r.get('cr','-')))" | tee -a "$OUT/dist_results.txt"
done
grep -h "error\|Error" "$OUT"/*.log | head -5
