#!/usr/bin/env bash
# The main job end to end on a small built-in default, on CPU, in minutes, needing nothing a fresh machine lacks
# after scripts/setup.sh. The text is what every Debian/Ubuntu system ships: the licence collection
# (/usr/share/common-licenses) and the packages' copyright files (/usr/share/doc/*/copyright), with repeated lines
# dropped (about 1M tokens on a developer machine); the last tenth of the lines is held out for evaluation.
#
#   1. tokenizer (SentencePiece BPE, 1024) and token shards          dmc tokenizer train, dmc data prepare
#   2. a tiny Llama (4 layers, hidden 128, GQA 4/2) pretrained         dmc train          (configs/demo/base.yaml)
#   3. the same continued-training budget two ways:
#        vanilla control                                               dmc train --init-from base
#        DMC 2x: zero_out -> retrofit -> finetune                      dmc retrofit --stage ...
#   4. perplexity of base, control and DMC on the held-out text, achieved compression ratio, report pictures
#
# The demo recipe departs from the 7B recipe in two documented ways, because its budget is 440 steps instead of
# thousands: a higher learning rate (3e-3) and dmc_init_val 2 instead of 5 (decision logits start at -2).
# Output under ${RUN:-runs/demo}; ~4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
# the demo owns this directory and starts clean (never resumes a stale run); it removes only a directory that is
# absent, empty or an earlier demo run (it holds corpus.txt), never the repository, the home directory or /
abs=$(realpath -m "$RUN"); repo=$(pwd -P)
if [ "$abs" = / ] || [ "$abs" = "$(realpath -m "$HOME")" ] || [ "$abs" = "$repo" ] || [[ "$repo/" == "$abs/"* ]]; then
  echo "demo: refusing RUN=$RUN (it would remove $abs)"; exit 1
fi
if [ -d "$RUN" ] && [ -n "$(ls -A "$RUN")" ] && [ ! -f "$RUN/corpus.txt" ]; then
  echo "demo: $RUN exists and is not an earlier demo run; choose another RUN"; exit 1
fi
rm -rf "$RUN"
DMC=${DMC_BUILD:-build}/dmc
scripts/build.sh   # incremental: a no-op when the build is current
mkdir -p "$RUN"
Z=${DEMO_STEPS_ZERO_OUT:-40}; R=${DEMO_STEPS_RETROFIT:-300}; F=${DEMO_STEPS_FINETUNE:-100}
CONT=$(( Z + R + F ))

echo "== 1. text, tokenizer, token shards"
src=/usr/share/common-licenses
[ -d "$src" ] || { echo "demo: $src not found (expected on Debian/Ubuntu)"; exit 1; }
cat "$src"/* /usr/share/doc/*/copyright 2>/dev/null | awk '!seen[$0]++ || NF == 0' > "$RUN/corpus.txt"
n=$(wc -l < "$RUN/corpus.txt")
head -n $(( n * 9 / 10 )) "$RUN/corpus.txt" > "$RUN/train.txt"
tail -n +$(( n * 9 / 10 + 1 )) "$RUN/corpus.txt" > "$RUN/valid.txt"
"$DMC" tokenizer train --input "$RUN/train.txt" --out "$RUN/tok" --vocab-size 1024 > "$RUN/tokenizer.log" 2>&1
"$DMC" data prepare --input "$RUN/train.txt" --tokenizer "$RUN/tok.model" --out "$RUN/data" --chunk-chars 4000 \
  --overwrite > "$RUN/data.log" 2>&1
T="--tokenizer $RUN/tok.model --data $RUN/data"

echo "== 2. base model (configs/demo/base.yaml)"
"$DMC" train --config configs/demo/base.yaml $T --out "$RUN/base" --log-level warn

echo "== 3a. vanilla continued training ($CONT steps)"
C="--config configs/demo/continue.yaml $T --lr 3e-3 --log-level warn"
"$DMC" train $C --init-from "$RUN/base/final" --out "$RUN/vanilla" --train-steps $CONT --lr-schedule cosine --min-lr 3e-4
echo "== 3b. DMC 2x: zero_out ($Z) -> retrofit ($R) -> finetune ($F)"
D="--dmc-init-val 2 --target-cr 2"
"$DMC" retrofit --stage zero_out $C $D --init-from "$RUN/base/final" --out "$RUN/dmc-1-zero_out" --train-steps $Z --min-lr 3e-3
"$DMC" retrofit --stage retrofit $C $D --init-from "$RUN/dmc-1-zero_out/final" --out "$RUN/dmc-2-retrofit" \
  --train-steps $R --min-lr 3e-3 --head-stats-every 100
"$DMC" retrofit --stage finetune $C $D --init-from "$RUN/dmc-2-retrofit/final" --out "$RUN/dmc-3-finetune" \
  --train-steps $F --lr-schedule cosine --min-lr 3e-4 --head-stats-every 50

echo "== 4. evaluation on the held-out text"
E="--tokenizer $RUN/tok.model --text $RUN/valid.txt --seq-len 128 --stride 64 --max-tokens 40000 --device cpu"
for m in base vanilla dmc-3-finetune; do
  "$DMC" eval ppl --model "$RUN/$m/final" $E --json "$RUN/ppl_$m.json" > "$RUN/ppl_$m.log" 2>&1 ||
    { tail -5 "$RUN/ppl_$m.log"; exit 1; }
done
"$DMC" report "$RUN/dmc-1-zero_out" "$RUN/dmc-2-retrofit" "$RUN/dmc-3-finetune" --out "$RUN/report" > "$RUN/report.log" 2>&1 ||
  { tail -5 "$RUN/report.log"; exit 1; }
field() { sed -n "s/.*\"$2\": *\([0-9.e+-]*\).*/\1/p" "$1" | head -1; }
{
  echo "| model | continued steps | held-out ppl | KV compression (achieved / target) |"
  echo "|---|---|---|---|"
  p2() { printf '%.2f' "$1"; }   # perplexities and ratios to 2 decimals
  echo "| base | 0 | $(p2 "$(field "$RUN/ppl_base.json" ppl)") | 1 / 1 |"
  echo "| vanilla continued | $CONT | $(p2 "$(field "$RUN/ppl_vanilla.json" ppl)") | 1 / 1 |"
  echo "| DMC 2x | $CONT | $(p2 "$(field "$RUN/ppl_dmc-3-finetune.json" ppl)") | $(p2 "$(field "$RUN/ppl_dmc-3-finetune.json" dmc_cr)") / $(field "$RUN/ppl_dmc-3-finetune.json" dmc_target_cr) |"
} | tee "$RUN/results.md"
echo
echo "report: $RUN/report/{loss.svg,ratio.svg,heatmap.svg,summary.md}"
