#!/usr/bin/env bash
# The long-context task sweep on the GPU machine (no network): SmolLM2-135M-Instruct, every task, lengths 1k-8k,
# the full cache against TOVA / H2O / window + sinks at CR 2 / 4 / 8, all on the same samples. One `eval tasks`
# job per length (each writes its own report, so a job cut short still leaves the others), merged by
# `dmc report tasks` into the tables and the depth x length heatmaps.
#   OUT=... scripts/gpu_tasks.sh GGUF_OR_PARTS_GLOB DATA_DIR [SAMPLES] [LENGTHS]
# A sweep too long for one device call is split by policy: DMC_TASKS_CACHE (default vanilla,tova,h2o,window),
# DMC_TASKS_CR (2,4,8), DMC_TASKS_LIST (every task), DMC_TASKS_CHUNK (prefill chunk, 256) and DMC_TASKS_TAG (a suffix
# for the report names); `dmc report tasks` merges the jobs' reports afterwards.
# DATA_DIR: a `dmc data prepare` directory made with SmolLM2's tokenizer; its valid split (never trained on) gives
# the essay haystacks (only meta.json and valid-* are read). With the device tool, as scripts/gpu_smollm2.sh: call 1
# builds (scripts/gpu_check.sh build), call 2 carries the GGUF's second half and runs this.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
src=${1:?usage: scripts/gpu_tasks.sh GGUF_or_parts_glob DATA_DIR [SAMPLES] [LENGTHS]}
data=${2:?usage: scripts/gpu_tasks.sh GGUF_or_parts_glob DATA_DIR [SAMPLES] [LENGTHS]}
samples=${3:-100}
lengths=${4:-1024 2048 4096 8192}
B=${DMC_BUILD:-build-gpu}
[ -x "$B/dmc" ] || { OUT="$OUT" scripts/gpu_check.sh build > "$OUT/gpu_check.log" 2>&1; tail -3 "$OUT/gpu_check.log"; }
. scripts/gpu_smol.sh
smol_bf16 "$src"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
t0=$(date +%s)
# the device tool stops a call at 600 s: the jobs stop by this deadline, so the archive below is always written
deadline=$(( t0 + ${DMC_SWEEP_SECONDS:-520} ))
reports=()
for L in $lengths; do
  left=$(( deadline - $(date +%s) ))
  [ "$left" -gt 10 ] || { echo "length $L: no time left"; continue; }
  # prompts of one length prefill 32 at a time at 8k (262144 padded tokens), eviction prompts 256 tokens a forward;
  # decode batch: every sample up to 2k, then what the full cache of 72 GB holds
  case $L in 1024|2048) batch=1024 ;; 4096) batch=768 ;; *) batch=384 ;; esac
  name=tasks_$L${DMC_TASKS_TAG:-}
  timeout "$left" "$B/dmc" eval tasks --model /tmp/smol-bf16 --data "$data" --lengths "$L" --samples "$samples" --seed 0 \
    --tasks "${DMC_TASKS_LIST:-passkey,niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multivalue,niah_multiquery,vt}" \
    --cache "${DMC_TASKS_CACHE:-vanilla,tova,h2o,window}" --cr "${DMC_TASKS_CR:-2,4,8}" --sinks 4 --batch $batch \
    --prefill-tokens 262144 --prefill-chunk "${DMC_TASKS_CHUNK:-256}" \
    --device cuda --dtype bf16 --json "$OUT/$name.json" > "$OUT/$name.md" 2> "$OUT/$name.log"
  echo "length $L rc=$? at $(( $(date +%s) - t0 )) s"
  [ -s "$OUT/$name.json" ] && reports+=("$OUT/$name.json")
done
echo "sweep: $(( $(date +%s) - t0 )) s" | tee "$OUT/sweep_seconds.txt"
[ ${#reports[@]} -gt 0 ] && "$B/dmc" report tasks "${reports[@]}" --json "$OUT/tasks.json" --heatmaps "$OUT/heatmaps" \
  > "$OUT/tasks.md"
# the device tool brings back at most 8 files: everything in one archive
(cd "$OUT" && tar czf tasks.tgz --exclude tasks.tgz -- * && find . -mindepth 1 -maxdepth 1 ! -name tasks.tgz -exec rm -rf {} +)
