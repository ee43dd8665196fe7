#!/usr/bin/env bash
# SmolLM2-135M-Instruct retrofitted to DMC 2x / 4x / 8x, judged against its vanilla control and the training-free
# baselines applied to that control (issue #17; docs/results.md), end to end with resume:
#
#   1. original   the GGUF (scripts/get_smollm2.sh) as an fp32 model directory                  dmc convert
#   2. data       the corpora with SmolLM2's own tokenizer, 5% of the documents held out          dmc data prepare
#   3. control    vanilla continued training at the longest DMC budget, one constant LR; its checkpoint at each
#                 DMC run's step count is that run's control (same tokens, same schedule)        dmc train
#   4. dmc        per ratio: zero_out -> retrofit -> finetune in the reference's proportions, stage 2 lengthened
#                 with the ratio as the reference does (250 / 6000 x (CR - 1) / 2000 steps per UNIT = 6000)
#   5. distill    the same three stages at DISTILL_CR with the KL to the original's logits (--distill-from)
#   6. eval       validation perplexity at EVAL_SEQ (parallel; parallel against incremental on a subset), the
#                 long-context tasks for each control (vanilla, TOVA / H2O / window at its ratio) and each DMC model
#   7. bench      decode tokens/s at equal cache memory, largest batch: each control against its DMC model
#   8. pack       everything but the weights in $RUN/smollm2.tar.gz
#
#   scripts/smollm2_retrofit.sh                   (a CUDA build in $DMC_BUILD, default build-gpu)
#   GGUF=file | ORIGINAL=dir, CORPORA_GLOB, RUN    inputs / output (ORIGINAL: a model directory instead of the GGUF)
#   UNIT (steps per 6000 reference steps, default 150: runs 5-6), RATIOS, DISTILL_CR (empty = none), PHASES
#   CONTROL_RATIOS   the ratios the control serves over every invocation of this RUN (default: RATIOS and DISTILL_CR):
#                    its step count and exports come from these, so a later invocation with other RATIOS finds the
#                    control's export at its budget (a GPU lease runs one ratio at a time)
#   ZERO_OUT_MIN     stage 1's floor in steps (default 25): the reference's 250 / 6000 at UNIT 60 is 3 steps, and
#                    zeroing the q/k dimension D-1 in 3 steps left SmolLM2 at perplexity 35.9 (from 21.5)
#   TAG, DMC_ARGS    a recipe variant: DMC runs named dmc<CR>x<TAG> / distill<CR>x<TAG>, DMC_ARGS added to their stages
#                    (e.g. TAG=-lr400 DMC_ARGS='--dmc-decision-lr-mult 400'); the controls are shared
#   ONLY             a regular expression on model names (original, control4x, dmc4x-lr400, ...): the eval, tasks and
#                    bench phases take only those
#   STAGE1_EVAL=1    evaluate each DMC run's stage-1 model too (zeroout<CR>x<TAG>: ppl, tasks with the full cache)
#   BASELINES        the training-free policies run on each control (default "tova h2o window"), at the control's
#                    ratio, at BASELINE_CRS (extra ratios) and, with BASELINE_AT_ACHIEVED=1 (default), at the ratio each
#                    DMC model of that budget reached on the tasks (evaluated before, here or in an earlier invocation)
#   DEADLINE         epoch seconds: no evaluation job starts when fewer than JOB_SECONDS (default 240) remain; the
#                    script then exits 75 and the next invocation resumes (training checkpoints on SIGTERM instead)
#   BATCH="--micro-batch 2 ...", EVAL_SEQ, TASK_LENGTHS, TASK_SAMPLES, TOKENIZER    overrides (CPU smoke test); BATCH
#                    goes to the control and every DMC stage alike (e.g. BATCH="--lr 1e-4 --min-lr 1e-4")
# Phases skip work whose output exists (a run directory with final/, an eval JSON), so the script resumes; an
# interrupted training run resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${DMC_SHARED:-../shared}
CORPORA_GLOB=${CORPORA_GLOB:-$SHARED/corpora/*.txt.xz}
GGUF=${GGUF:-${DMC_CACHE:-$HOME/.cache/dmc}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
RUN=${RUN:-runs/smollm2}
ORIGINAL=${ORIGINAL:-$RUN/original}
TOKENIZER=${TOKENIZER:-$ORIGINAL}
DATA=${DATA:-$RUN/data}
DMC=${DMC_BUILD:-build-gpu}/dmc
UNIT=${UNIT:-150}
RATIOS=${RATIOS:-2 4 8}
DISTILL_CR=${DISTILL_CR-4}
PHASES=${PHASES:-original data control dmc distill eval tasks bench pack}
BATCH=${BATCH:-} EVAL_SEQ=${EVAL_SEQ:-4096} EVAL_SUBSET=${EVAL_SUBSET:-16384}
TASK_LENGTHS=${TASK_LENGTHS:-1024,2048,4096,8192} TASK_SAMPLES=${TASK_SAMPLES:-100} TASK_ARGS=${TASK_ARGS:-}
BENCH_GIB=${BENCH_GIB:-40} PROMPT=${PROMPT:-3968} NEW=${NEW:-128} STEPS=${STEPS:-64}
ZERO_OUT_MIN=${ZERO_OUT_MIN:-25} TAG=${TAG:-} DMC_ARGS=${DMC_ARGS:-} ONLY=${ONLY:-}
STAGE1_EVAL=${STAGE1_EVAL:-0} BASELINES=${BASELINES:-tova h2o window} BASELINE_CRS=${BASELINE_CRS:-} BASELINE_AT_ACHIEVED=${BASELINE_AT_ACHIEVED:-1}
CONTROL_RATIOS=${CONTROL_RATIOS:-$RATIOS ${DISTILL_CR}} DEADLINE=${DEADLINE:-} JOB_SECONDS=${JOB_SECONDS:-240}
has() { [[ " $PHASES " == *" $1 "* ]]; }
# before a job that cannot resume from a checkpoint (an evaluation): stop cleanly if the deadline is too close
budget_for() {
  [ -z "$DEADLINE" ] && return 0
  local left=$(( DEADLINE - $(date +%s) ))
  [ "$left" -ge "$JOB_SECONDS" ] && return 0
  echo "deadline: ${left} s left, fewer than the ${JOB_SECONDS} s a job may take: stopping before $1 (run again to resume)"
  exit 75
}
done_run() { [ -f "$1/final/config.json" ]; }
# stage steps of one ratio: zero_out, retrofit, finetune (the reference's 250 / 6000 (CR - 1) / 2000 at UNIT = 6000,
# zero_out at least ZERO_OUT_MIN)
stages() {
  local cr=$1
  local z=$(( (UNIT * 250 + 5999) / 6000 ))
  [ "$z" -lt "$ZERO_OUT_MIN" ] && z=$ZERO_OUT_MIN
  echo $z $(( UNIT * (cr - 1) )) $(( (UNIT * 2000 + 5999) / 6000 ))
}
total() { local z r f; read -r z r f <<< "$(stages "$1")"; echo $(( z + r + f )); }
mkdir -p "$RUN"
# a run's stage lengths are fixed: its controls and evaluations are named by ratio, so a later invocation with another
# UNIT or ZERO_OUT_MIN would pair a DMC run with a control of another length
for cr in $CONTROL_RATIOS $RATIOS ${DISTILL_CR}; do
  s=$(stages "$cr")
  was=$(sed -n "s/^$cr: //p" "$RUN/stages.txt" 2>/dev/null | head -1 || true)
  if [ -z "$was" ]; then echo "$cr: $s" >> "$RUN/stages.txt"
  elif [ "$was" != "$s" ]; then
    echo "$RUN: CR $cr was run with stages $was (zero_out retrofit finetune), now $s: use another RUN"; exit 1
  fi
done
T="--tokenizer $TOKENIZER --data $DATA"
C="--config configs/smollm2/continue.yaml $T --log-level warn $BATCH"
max_total=0 need=0
for cr in $CONTROL_RATIOS $RATIOS ${DISTILL_CR}; do t=$(total "$cr"); [ "$t" -gt "$max_total" ] && max_total=$t; done
for cr in $RATIOS ${DISTILL_CR}; do t=$(total "$cr"); [ "$t" -gt "$need" ] && need=$t; done
echo "smollm2 retrofit: run $RUN, UNIT $UNIT, ratios $RATIOS, distillation at ${DISTILL_CR:-none}, control $max_total steps"
source scripts/eval_lib.sh  # tree_id, ev, tk, bd, pack_run
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true; tree_id || true
  echo "UNIT=$UNIT ZERO_OUT_MIN=$ZERO_OUT_MIN TAG='$TAG' DMC_ARGS='$DMC_ARGS' BATCH='$BATCH' RATIOS='$RATIOS' DISTILL_CR=$DISTILL_CR EVAL_SEQ=$EVAL_SEQ TASK_LENGTHS=$TASK_LENGTHS TASK_SAMPLES=$TASK_SAMPLES"
  for cr in $RATIOS; do echo "DMC ${cr}x: zero_out / retrofit / finetune = $(stages "$cr") steps"; done; } > "$RUN/machine.txt"

if has original && [ ! -f "$ORIGINAL/config.json" ]; then
  echo "== original: $GGUF"
  [ -f "$GGUF" ] || { echo "no GGUF at $GGUF: run scripts/get_smollm2.sh, or set GGUF= or ORIGINAL="; exit 1; }
  "$DMC" convert --from-gguf "$GGUF" --out "$ORIGINAL" --dtype fp32 > "$RUN/original.log" 2>&1 ||
    { tail -5 "$RUN/original.log"; exit 1; }
fi

if has data && [ ! -f "$DATA/meta.json" ]; then
  echo "== data: $CORPORA_GLOB"
  "$DMC" data prepare --input "$CORPORA_GLOB" --tokenizer "$TOKENIZER" --out "$DATA" --valid-fraction 0.05 \
    --overwrite > "$RUN/data.log" 2>&1 || { tail -5 "$RUN/data.log"; exit 1; }
  tail -1 "$RUN/data.log"
fi

# a checkpoint as a model directory (config + weights), written atomically
export_ckpt() {
  local ck=$1 out=$2 tmp
  [ -f "$out/config.json" ] && return 0
  tmp=$(mktemp -d "$out.tmp.XXXXXX")
  cp "$ck/config.json" "$ck"/model*.safetensors "$tmp/"
  mv "$tmp" "$out"
}
if has control; then
  # one run to max_total steps, stopped at each DMC budget to export that step's weights (this invocation goes as far
  # as its own ratios need)
  budgets=$(for cr in $CONTROL_RATIOS $RATIOS ${DISTILL_CR}; do total "$cr"; done | sort -n | uniq)
  for n in $budgets; do
    [ "$n" -gt "$need" ] && break
    [ -f "$RUN/control-$n/config.json" ] && continue
    done_run "$RUN/control" && { echo "control: step $n passed without an export"; exit 1; }
    at=0
    last=$(ls -d "$RUN"/control/checkpoints/step-* 2>/dev/null | sort | tail -1 || true)
    [ -n "$last" ] && at=$((10#${last##*step-}))
    [ "$at" -le "$n" ] || { echo "control: at step $at, past the budget of $n without its export"; exit 1; }
    echo "== control: steps $at -> $n of $max_total"
    if [ "$n" -lt "$max_total" ]; then
      "$DMC" train $C --init-from "$ORIGINAL" --out "$RUN/control" --train-steps "$max_total" \
        --exit-after-steps $(( n - at )) --seed 1234
    else
      "$DMC" train $C --init-from "$ORIGINAL" --out "$RUN/control" --train-steps "$max_total" --seed 1234
    fi
    export_ckpt "$(printf '%s/control/checkpoints/step-%08d' "$RUN" "$n")" "$RUN/control-$n"
  done
fi

dmc_run() {  # prefix cr [extra args]: the three stages
  local p=$1 cr=$2 z r f; shift 2
  read -r z r f <<< "$(stages "$cr")"
  local D="$C --config configs/smollm2/dmc.yaml --target-cr $cr $DMC_ARGS $*"
  echo "== $(basename "$p"): zero_out $z -> retrofit $r -> finetune $f"
  done_run "$p-1-zero_out" || "$DMC" retrofit --stage zero_out $D --init-from "$ORIGINAL" --out "$p-1-zero_out" \
    --train-steps "$z" --seed 1234
  done_run "$p-2-retrofit" || "$DMC" retrofit --stage retrofit $D --init-from "$p-1-zero_out/final" --out "$p-2-retrofit" \
    --train-steps "$r" --seed 1235
  done_run "$p-3-finetune" || "$DMC" retrofit --stage finetune $D --init-from "$p-2-retrofit/final" --out "$p-3-finetune" \
    --train-steps "$f" --seed 1236
  "$DMC" report "$p-1-zero_out" "$p-2-retrofit" "$p-3-finetune" --out "$p-report" > "$p-report.log" 2>&1
}
if has dmc; then for cr in $RATIOS; do dmc_run "$RUN/dmc${cr}x$TAG" "$cr"; done; fi
if has distill && [ -n "$DISTILL_CR" ]; then
  dmc_run "$RUN/distill${DISTILL_CR}x$TAG" "$DISTILL_CR" --distill-from "$ORIGINAL"
fi

# the models: name:directory:ratio (control-N is the control of the runs of N steps)
models="original:$ORIGINAL:0"
for cr in $RATIOS; do
  models="$models control${cr}x:$RUN/control-$(total "$cr"):$cr dmc${cr}x$TAG:$RUN/dmc${cr}x$TAG-3-finetune/final:$cr"
done
[ -n "$DISTILL_CR" ] && models="$models distill${DISTILL_CR}x$TAG:$RUN/distill${DISTILL_CR}x$TAG-3-finetune/final:$DISTILL_CR"
# STAGE1_EVAL=1: also each DMC run right after stage 1 (q/k dimension D-1 zeroed, nothing compressed yet): what the
# zeroing alone costs, apart from the compression
if [ "$STAGE1_EVAL" = 1 ]; then
  for cr in $RATIOS; do models="$models zeroout${cr}x$TAG:$RUN/dmc${cr}x$TAG-1-zero_out/final:$cr"; done
fi
# ONLY (an extended regular expression): evaluate just the models whose names match (two invocations on two GPUs)
if [ -n "$ONLY" ]; then
  kept=""
  for m in $models; do [[ ${m%%:*} =~ $ONLY ]] && kept="$kept $m"; done
  models=$kept
fi
mkdir -p "$RUN/eval" "$RUN/tasks"
E="--tokenizer $TOKENIZER --data $DATA --split valid --seq-len $EVAL_SEQ"
if has eval; then
  echo "== perplexity on the validation split ($EVAL_SEQ-token windows)"
  for m in $models; do
    IFS=: read -r name dir cr <<< "$m"
    [ -f "$RUN/eval/$name-subset-incremental.json" ] || budget_for "the perplexity of $name"
    ev "$name" "$dir"
    ev "$name-subset-parallel" "$dir" --max-tokens "$EVAL_SUBSET"
    ev "$name-subset-incremental" "$dir" --max-tokens "$EVAL_SUBSET" --mode incremental --batch 8
  done
fi
tk() {  # name model [args...]: long-context tasks, JSON and heatmaps under tasks/
  local name=$1 model=$2; shift 2
  [ -f "$RUN/tasks/$name.json" ] && return 0
  budget_for "the tasks of $name"
  "$DMC" eval tasks --model "$model" --tokenizer "$TOKENIZER" --data "$DATA" --lengths "$TASK_LENGTHS" \
    --samples "$TASK_SAMPLES" --seed 0 --json "$RUN/tasks/$name.json" --heatmaps "$RUN/tasks/heatmaps-$name" $TASK_ARGS "$@" \
    > "$RUN/tasks/$name.md" 2> "$RUN/tasks/$name.log" || { tail -5 "$RUN/tasks/$name.log"; return 1; }
}
if has tasks; then
  echo "== long-context tasks ($TASK_LENGTHS, $TASK_SAMPLES samples each)"
  # first every model with its own cache (the full cache for the original and the controls), then the eviction
  # baselines on each control: one job per policy (each fits a device call), merged into one report per control
  for m in $models; do
    IFS=: read -r name dir cr <<< "$m"
    case $name in
      original) tk "$name" "$dir" --cache vanilla ;;
      control*) tk "$name-vanilla" "$dir" --cache vanilla ;;
      zeroout*) tk "$name" "$dir" --cache vanilla ;;
      *) tk "$name" "$dir" --cache dmc --needles ;;  # (+ the decisions at the needles, per layer and KV head)
    esac
  done
  for m in $models; do
    IFS=: read -r name dir cr <<< "$m"
    [[ $name == control* ]] || continue
    for pol in $BASELINES; do tk "$name-$pol" "$dir" --cache $pol --cr "$cr"; done
    # the same baselines at the ratio each DMC model of this budget reached on these tasks (the same cache memory
    # when a model misses its target), and at BASELINE_CRS
    extra=$BASELINE_CRS
    if [ "$BASELINE_AT_ACHIEVED" = 1 ]; then
      for md in "$RUN"/tasks/dmc"$cr"x*.md "$RUN"/tasks/distill"$cr"x*.md; do
        [ -f "$md" ] || continue
        x=$(sed -n 's/^dmc .*achieved CR \([0-9.]*\),.*/\1/p' "$md" | head -1)
        echo "  $(basename "$md" .md) reached CR ${x:-?} on the tasks: $name's baselines there too (unless < 1.05)"
        extra="$extra $x"
      done
    fi
    for x in $(printf '%s\n' $extra | sort -u); do
      [ "$x" = "$cr" ] || awk -v x="$x" 'BEGIN { exit !(x < 1.05) }' && continue  # (a model that did not compress)
      for pol in $BASELINES; do tk "$name-$pol@$x" "$dir" --cache $pol --cr "$x"; done
    done
    # one report of every part this control has (this invocation's and earlier ones'), merged again each time
    parts=("$RUN/tasks/$name-vanilla.json")
    for pol in tova h2o window; do
      for f in "$RUN/tasks/$name-$pol.json" "$RUN/tasks/$name-$pol"@*.json; do [ -f "$f" ] && parts+=("$f"); done
    done
    "$DMC" report tasks "${parts[@]}" --json "$RUN/tasks/$name.json" --heatmaps "$RUN/tasks/heatmaps-$name" \
      > "$RUN/tasks/$name.md" 2> "$RUN/tasks/$name.log" || { tail -5 "$RUN/tasks/$name.log"; exit 1; }
  done
fi

if has bench; then
  bench_setup
  for m in $models; do
    IFS=: read -r name dir cr <<< "$m"
    [ -f "$RUN/bench_$name.jsonl" ] && continue
    case $name in
      original|zeroout*) ;;
      control*) bd "$name" "$dir" vanilla ;;
      *) bd "$name" "$dir" dmc ;;
    esac
  done
fi

if has pack; then
  pack_run smollm2.tar.gz
fi
echo "smollm2 retrofit: done"
