#!/usr/bin/env bash
# The small-scale DMC replication (docs/results.md), end to end on one GPU:
#
#   1. token shards of the corpora with the Llama 2 tokenizer, 2% of the documents held out    dmc data prepare
#   2. a base Llama (8 layers, hidden 512, MHA 8 x 64, SwiGLU 1536, 32k vocab, 1024 context)  dmc train
#   3. the same continued-training budget (CONT steps) five ways from the base:
#        vanilla control                                                  dmc train --init-from base
#        DMC 2x, 4x, 8x: zero_out (3%) -> retrofit (73%) -> finetune (24%)  dmc retrofit --stage ...
#      (the stage proportions of the reference recipe: 250 / 6000 / 2000 steps)
#   4. validation perplexity of every model (parallel; and parallel against incremental on a subset), achieved
#      ratios per layer and head, TOVA / H2O / window+sinks on the vanilla control and on the base model at the
#      budgets of 2x, 4x, 8x
#   5. decode throughput at equal cache memory, largest batch each, vanilla base against the DMC models
#   6. everything but the checkpoints packed into $RUN/replication.tar.gz; scripts/replication_report.py makes
#      docs/results.md and the pictures from it
#
#   scripts/replicate.sh                       (needs a CUDA build in $DMC_BUILD, default build-gpu)
#   CORPORA=dir TOKENIZER=file RUN=dir ...     inputs / output; defaults: $DMC_SHARED or ../shared
#   BASE_STEPS, CONT_STEPS, RATIOS, PHASES     the recipe's size (defaults below) and which phases to run
#   SHAPE="--hidden-size 64 ...", BATCH="--micro-batch 2 ...", EVAL_SEQ, PROMPT, NEW    overrides (CPU smoke test)
#
# Phases skip work whose output exists (a finished run directory has final/), so the script resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${DMC_SHARED:-../shared}
CORPORA=${CORPORA:-$SHARED/corpora}
TOKENIZER=${TOKENIZER:-$SHARED/tokenizers/llama2/tokenizer.model}
RUN=${RUN:-runs/replication}
DATA=${DATA:-$RUN/data}
DMC=${DMC_BUILD:-build-gpu}/dmc
BASE_STEPS=${BASE_STEPS:-1500}
CONT_STEPS=${CONT_STEPS:-500}
RATIOS=${RATIOS:-2 4 8}
PHASES=${PHASES:-data base control dmc eval bench pack}
EVAL_SUBSET=${EVAL_SUBSET:-32768}     # tokens scored both ways (parallel and incremental) and by the baselines
BENCH_GIB=${BENCH_GIB:-8}             # cache memory of every policy in the decode benchmark
SHAPE=${SHAPE:-} BATCH=${BATCH:-} EVAL_SEQ=${EVAL_SEQ:-1024} PROMPT=${PROMPT:-896} NEW=${NEW:-112} STEPS=${STEPS:-64}
Z=$(( (CONT_STEPS * 3 + 50) / 100 )); F=$(( (CONT_STEPS * 24 + 50) / 100 )); R=$(( CONT_STEPS - Z - F ))
has() { [[ " $PHASES " == *" $1 "* ]]; }
done_run() { [ -f "$1/final/config.json" ]; }
mkdir -p "$RUN"
T="--tokenizer $TOKENIZER --data $DATA"
echo "replication: run $RUN, base $BASE_STEPS steps, continued $CONT_STEPS = $Z + $R + $F steps, ratios $RATIOS"
source scripts/eval_lib.sh  # tree_id, ev, bd, pack_run
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true; tree_id || true
  echo "BASE_STEPS=$BASE_STEPS CONT_STEPS=$CONT_STEPS RATIOS='$RATIOS' EVAL_SUBSET=$EVAL_SUBSET BENCH_GIB=$BENCH_GIB"; } > "$RUN/machine.txt"

if has data && [ ! -f "$DATA/meta.json" ]; then
  echo "== data: $CORPORA"
  "$DMC" data prepare --input "${CORPORA_GLOB:-$CORPORA/*.txt.xz}" --tokenizer "$TOKENIZER" --out "$DATA" --valid-fraction 0.02 \
    --overwrite > "$RUN/data.log" 2>&1 || { tail -5 "$RUN/data.log"; exit 1; }
  tail -3 "$RUN/data.log"
fi

if has base && ! done_run "$RUN/base"; then
  echo "== base model: $BASE_STEPS steps"
  "$DMC" train --config configs/replication/base.yaml $T --out "$RUN/base" --train-steps "$BASE_STEPS" --log-level warn \
    $SHAPE $BATCH
fi

C="--config configs/replication/continue.yaml $T --log-level warn $BATCH"
if has control && ! done_run "$RUN/vanilla"; then
  echo "== vanilla continued training: $CONT_STEPS steps"
  "$DMC" train $C --init-from "$RUN/base/final" --out "$RUN/vanilla" --train-steps "$CONT_STEPS" --lr-schedule cosine
fi

if has dmc; then
  for cr in $RATIOS; do
    D="$C --config configs/replication/dmc.yaml --target-cr $cr"
    p=$RUN/dmc${cr}x
    echo "== DMC ${cr}x: zero_out $Z -> retrofit $R -> finetune $F"
    done_run "$p-1-zero_out" || "$DMC" retrofit --stage zero_out $D --init-from "$RUN/base/final" --out "$p-1-zero_out" \
      --train-steps "$Z" --seed 1234
    done_run "$p-2-retrofit" || "$DMC" retrofit --stage retrofit $D --init-from "$p-1-zero_out/final" --out "$p-2-retrofit" \
      --train-steps "$R" --seed 1235
    done_run "$p-3-finetune" || "$DMC" retrofit --stage finetune $D --init-from "$p-2-retrofit/final" --out "$p-3-finetune" \
      --train-steps "$F" --lr-schedule cosine --seed 1236
    "$DMC" report "$p-1-zero_out" "$p-2-retrofit" "$p-3-finetune" --out "$RUN/report-dmc${cr}x" > "$RUN/report-dmc${cr}x.log" 2>&1
  done
fi

E="--tokenizer $TOKENIZER --data $DATA --split valid --seq-len $EVAL_SEQ"
mkdir -p "$RUN/eval"
if has eval; then
  echo "== evaluation on the validation split"
  models="base:$RUN/base/final vanilla:$RUN/vanilla/final"
  for cr in $RATIOS; do models="$models dmc${cr}x:$RUN/dmc${cr}x-3-finetune/final"; done
  for nm in $models; do
    name=${nm%%:*} model=${nm#*:}
    ev "$name" "$model"
    ev "$name-subset-parallel" "$model" --max-tokens "$EVAL_SUBSET"
    ev "$name-subset-incremental" "$model" --max-tokens "$EVAL_SUBSET" --mode incremental --batch 32
  done
  # the baselines on the vanilla control (the same continued training as DMC: the comparison isolates the cache) and
  # on the base model
  for cr in $RATIOS; do
    for src in vanilla base; do
      for pol in tova h2o window; do
        ev "$src-$pol-${cr}x" "$RUN/$src/final" --max-tokens "$EVAL_SUBSET" --mode incremental --batch 32 --cache "$pol" \
          --cr "$cr"
      done
    done
  done
fi

if has bench; then
  bench_setup
  bd base "$RUN/base/final" vanilla
  for cr in $RATIOS; do bd "dmc${cr}x" "$RUN/dmc${cr}x-3-finetune/final" dmc; done
  cat "$RUN"/bench_*.jsonl | grep -o '"policy":"[a-z]*"\|"batch":[0-9]*\|"tokens_per_s":[0-9.]*\|"achieved_cr":[0-9.]*' |
    paste - - - -
fi

if has pack; then
  pack_run replication.tar.gz
fi
echo "replication: done"
