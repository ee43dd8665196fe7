#!/usr/bin/env bash
# The main job end to end on a small built-in default, on CPU, in minutes, with nothing a fresh machine
# lacks after scripts/setup.sh: the text is the licence collection every Debian/Ubuntu system ships
# (/usr/share/common-licenses), split into train and validation parts.
#
# Today's chain: tokenizer -> tiny Llama -> generate -> eval ppl.  Output under ${RUN:-runs/demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
DMC=${DMC_BUILD:-build}/dmc
[ -x "$DMC" ] || scripts/build.sh
mkdir -p "$RUN"

# 1. text: every licence file, the last tenth of the lines held out for validation
src=/usr/share/common-licenses
[ -d "$src" ] || { echo "demo: $src not found (expected on Debian/Ubuntu)"; exit 1; }
cat "$src"/* > "$RUN/corpus.txt"
n=$(wc -l < "$RUN/corpus.txt")
head -n $(( n * 9 / 10 )) "$RUN/corpus.txt" > "$RUN/train.txt"
tail -n +$(( n * 9 / 10 + 1 )) "$RUN/corpus.txt" > "$RUN/valid.txt"

# 2. tokenizer and a tiny model
"$DMC" tokenizer train --input "$RUN/train.txt" --out "$RUN/tok" --vocab-size 1024
"$DMC" init --out "$RUN/base" --preset tiny --tokenizer "$RUN/tok.model" --overwrite
"$DMC" info "$RUN/base"

# 3. generate and evaluate
"$DMC" generate --model "$RUN/base" --tokenizer "$RUN/tok.model" --prompt "This License" --max-new-tokens 24 \
  --temperature 0 --device cpu
"$DMC" eval ppl --model "$RUN/base" --tokenizer "$RUN/tok.model" --text "$RUN/valid.txt" --seq-len 256 --stride 128 \
  --device cpu --json "$RUN/ppl_base.json"
echo "demo: done; results in $RUN"
