#!/usr/bin/env bash
# SmolLM2-135M-Instruct on the GPU machine (no network): the GGUF travels in two halves (the device tool brings back and
# carries at most 64 MiB a call), joined here, converted to bf16, then
#   1. greedy `dmc generate --chat` (the engine: paged cache, CUDA kernels, graphs) against HF generate() on the
#      same chat prompts, 64 new tokens each (bench/hf_chat_generate.py);
#   2. engine decode tokens/s at batch 1 and at the largest batch of a memory budget (dmc bench decode, vanilla cache).
# Results: $OUT/smollm2_generate.md, $OUT/smollm2_bench.jsonl, logs.
#   OUT=... scripts/gpu_smollm2.sh GGUF_OR_PARTS_GLOB
# With the device tool (a fresh machine after 30 s idle, 64 MiB carried a call), in two calls back to back:
#   here:  split -b 40M ~/.cache/dmc/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .carry/smol-part-
#   call 1 (carry .carry without part ab): mkdir -p /root/smol && cp .carry/smol-part-aa /root/smol/ && OUT=$OUT scripts/gpu_check.sh build
#   call 2 (carry .carry/smol-part-ab):  cp .carry/smol-part-ab /root/smol/ && OUT=$OUT scripts/gpu_smollm2.sh '/root/smol/smol-part-*'
# (check the sha256 this prints against the local file's)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
src=${1:?usage: scripts/gpu_smollm2.sh GGUF_or_parts_glob}
gguf=/tmp/smollm2.gguf
# shellcheck disable=SC2086
cat $src > "$gguf" || { echo "cannot read $src"; exit 1; }
sha256sum "$gguf" | tee "$OUT/gguf.sha256"
OUT="$OUT" scripts/gpu_check.sh build > "$OUT/gpu_check.log" 2>&1; tail -3 "$OUT/gpu_check.log"
B=${DMC_BUILD:-build-gpu}
PY=${DMC_PYTHON:-/opt/torch/.venv/bin/python}
"$B/dmc" convert --from-gguf "$gguf" --out /tmp/smol-bf16 --dtype bf16 --overwrite > "$OUT/convert.log" 2>&1 || {
  tail "$OUT/convert.log"; exit 1; }
cat > /tmp/prompts.json <<'J'
["What is the capital of France?", "Write a haiku about the sea.", "Explain what a hash table is in two sentences.",
 "List three primary colors.", "What is 12 times 7?"]
J
"$PY" bench/hf_chat_generate.py /tmp/smol-bf16 /tmp/prompts.json "$OUT/hf_generate.json" > "$OUT/hf.log" 2>&1 ||
  tail "$OUT/hf.log"
"$PY" - "$B/dmc" "$OUT" <<'PY'
import json, subprocess, sys
dmc, out = sys.argv[1], sys.argv[2]
hf = json.load(open(out + "/hf_generate.json"))
rows, same = [], 0
for r in hf:
    p = subprocess.run([dmc, "generate", "--model", "/tmp/smol-bf16", "--chat", "--prompt", r["prompt"], "--temperature",
                        "0", "--max-new-tokens", "64", "--device", "cuda", "--dtype", "bf16"],
                       capture_output=True, text=True)
    got = p.stdout[len(r["text"]):].rstrip("\n") if p.stdout.startswith(r["text"]) else "PROMPT DIFFERS: " + p.stdout
    ok = got == r["completion"]
    same += ok
    rows.append(f"| {r['prompt']} | {'equal' if ok else 'DIFFERS'} | {got[:80]!r} | {r['completion'][:80]!r} |")
with open(out + "/smollm2_generate.md", "w") as f:
    f.write(f"{same} of {len(hf)} prompts: dmc greedy = HF generate() (bf16, 64 new tokens)\n\n")
    f.write("| prompt | result | dmc | HF |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
print(open(out + "/smollm2_generate.md").read())
PY
J="$OUT/smollm2_bench.jsonl"; rm -f "$J"
for b in 1 max; do
  "$B/dmc" bench decode --model /tmp/smol-bf16 --policy vanilla --batch $b --prompt-len 512 --new-tokens 256 \
    --steps 128 --memory-gib 40 --json "$J" >> "$OUT/bench.log" 2>&1; echo "bench batch $b rc=$?"
done
python3 scripts/decode_table.py "$J" | tee "$OUT/smollm2_bench.md"
# the device tool brings back at most 8 files: everything in one archive
(cd "$OUT" && tar czf smollm2.tgz --exclude smollm2.tgz -- * && find . -maxdepth 1 -type f ! -name smollm2.tgz -delete)
