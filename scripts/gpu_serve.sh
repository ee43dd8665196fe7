#!/usr/bin/env bash
# The serving benchmark on the GPU machine (issue #18): SmolLM2-135M-Instruct behind `dmc serve`, the full cache
# against DMC with decisions forced to CR 4 (`--force-cr 4`: SmolLM2 has no trained DMC model yet, so the DMC side's
# answers are meaningless; its speed and memory are a CR-4 DMC model's), both with the same KV-cache memory, under
# scripts/bench_serve.py's Poisson arrivals at several request rates (vLLM's benchmark_serving shape).
# With `7b` in place of the GGUF: the issue's fallback shape, a Llama-2-7B-shape model with random bf16 weights
# (written in Megatron's release layout by tests/reference/megatron_writer.py and imported, as gpu_megatron.sh does)
# and the Llama 2 tokenizer from .carry/shared.
#   OUT=... scripts/gpu_serve.sh GGUF_OR_PARTS_GLOB|7b [RATES] [NUM_PROMPTS] [MEMORY_GIB]
# With the device tool, as scripts/gpu_tasks.sh: call 1 builds (scripts/gpu_check.sh build, carrying .carry, whose
# httplib/ holds the cpp-httplib the machine lacks), call 2 carries the GGUF's second half and runs this.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
src=${1:?usage: scripts/gpu_serve.sh GGUF_or_parts_glob [RATES] [NUM_PROMPTS] [MEMORY_GIB]}
rates=${2:-2,8,32,inf}
n=${3:-200}
mem=${4:-1}
B=${DMC_BUILD:-build-gpu}
h=$PWD/.carry/httplib/lib
[ -d "$h" ] && export LD_LIBRARY_PATH=$h${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PY=${DMC_PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$PY" ] || PY=python3
[ -x "$B/dmc" ] || { echo "no $B/dmc: run scripts/gpu_check.sh build first"; exit 1; }
if [ "$src" = 7b ]; then
  model=/tmp/m7b
  if [ ! -s $model/config.json ]; then
    [ -s /tmp/meg7b/mp_rank_00/model_optim_rng.pt ] || "$PY" tests/reference/megatron_writer.py random:llama2-7b /tmp/meg7b \
      --tp 1 --layout root --dmc-args > "$OUT/write.log" 2>&1 || { tail "$OUT/write.log"; exit 1; }
    DMC_PYTHON=$PY "$B/dmc" convert --from-megatron /tmp/meg7b --out $model --dmc on --dtype bf16 \
      --tokenizer .carry/shared/tokenizers/llama2/tokenizer.model > "$OUT/import.log" 2>&1 || { tail "$OUT/import.log"; exit 1; }
  fi
else
  model=/tmp/smol-bf16
  . scripts/gpu_smol.sh
  smol_bf16 "$src"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
port=8181
for label in vanilla dmc-cr4; do
  extra=(--cache vanilla)
  [ "$label" = dmc-cr4 ] && extra=(--cache dmc --force-cr 4)
  "$B/dmc" serve --model $model --port $port --memory-gib "$mem" --max-batch 256 --device cuda --dtype bf16 \
    "${extra[@]}" > "$OUT/serve_$label.log" 2>&1 &
  pid=$!
  get() { "$PY" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' "$1"; }
  for _ in $(seq 1 240); do get "http://127.0.0.1:$port/health" > /dev/null 2>&1 && break; sleep 0.5; done
  timeout 240 "$PY" scripts/bench_serve.py --base-url "http://127.0.0.1:$port" --num-prompts "$n" \
    --request-rate "$rates" --input-len 1024 --output-len 128 --label "$label" --json "$OUT/serve_$label.json" \
    > "$OUT/bench_$label.txt" 2>&1
  echo "$label: bench rc=$?"
  get "http://127.0.0.1:$port/metrics" > "$OUT/metrics_$label.txt"
  kill -TERM $pid; wait $pid; echo "$label: serve rc=$?"
  port=$((port + 1))
done
grep -hE "Label|Request rate|Output token throughput|Median TTFT|P99 TTFT|Median TPOT|P99 TPOT" "$OUT"/bench_*.txt
