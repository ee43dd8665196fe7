#!/usr/bin/env bash
# scripts/smollm2_retrofit.sh on the GPU machine (no network, 30-minute leases, 64 MiB carried and returned a call):
# the same command repeated in back-to-back device calls of one lease; each call does what is left and returns the
# run's results so far (everything but weights) in $OUT/run.tgz.
#
# Inputs travel in three carries (count them first: a call carries the tree, ~11 MB with docs/results, too):
#   here:   scripts/gpu_carry.sh                 the build's libraries in .carry/{httplib,lzma,pcre2} (once a checkout)
#           scripts/gpu_retrofit.sh --split      the GGUF in three parts under data/x1..x3 (33 MB each), the corpora in
#                                                data/x4 (20 MB): each call's carry leaves room for a tree of up to ~25 MB
#   call 1  carry .carry/{httplib,lzma,pcre2} and data/x1         (builds dmc, keeps part 1)
#   calls 2-4  carry data/x2, data/x3, data/x4 (later calls carry nothing: what is under /root stays while the machine
#           is warm)
#   each:   OUT=$OUT RATIOS=4 DISTILL_CR= scripts/gpu_retrofit.sh      (a call that lacks an input names the next carry)
# or in the background, which goes on between calls while the machine is held (it goes back 30 s after a call):
#   call 2: OUT=$OUT RATIOS=4 ... scripts/gpu_retrofit.sh --start      then each next call:
#           OUT=$OUT scripts/gpu_retrofit.sh --wait 560                 (returns early when the job is done)
# Every call checks the joined GGUF's sha256 against the one --split recorded. The run lives in /root/smollm2-run;
# a call stops its jobs DEADLINE_S (540) seconds after it started: training checkpoints on SIGTERM, an evaluation job
# is not started without JOB_SECONDS left (exit 75 = more to do). Environment: RATIOS, DISTILL_CR, CONTROL_RATIOS,
# UNIT, PHASES, TASK_SAMPLES, ... as scripts/smollm2_retrofit.sh takes them; LANE0 / LANE1 split the work over two
# GPUs (see below).
set -uo pipefail
cd "$(dirname "$0")/.."
GGUF_LOCAL=${DMC_CACHE:-$HOME/.cache/dmc}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "${1:-}" = --split ]; then
  SHARED=${DMC_SHARED:-../shared}
  rm -rf data/x1 data/x2 data/x3 data/x4 && mkdir -p data/x1 data/x2 data/x3 data/x4/corpora
  # three equal parts: call 1 carries one with the build's libraries (4.2 MB), every call the tree (~12 MB)
  split -n 3 -d "$GGUF_LOCAL" data/x1/gguf.part-
  [ -f data/x1/gguf.part-02 ] && [ ! -e data/x1/gguf.part-03 ] || { echo "$GGUF_LOCAL: expected 3 parts"; exit 1; }
  mv data/x1/gguf.part-01 data/x2/ && mv data/x1/gguf.part-02 data/x3/
  cp "$SHARED"/corpora/*.txt.xz data/x4/corpora/
  sha256sum "$GGUF_LOCAL" | cut -d' ' -f1 > data/x1/gguf.sha256
  (cd data/x4/corpora && sha256sum -- *.txt.xz) > data/x1/corpora.sha256
  for d in data/x2 data/x3 data/x4; do cp data/x1/gguf.sha256 data/x1/corpora.sha256 "$d/"; done
  du -sh data/x1 data/x2 data/x3 data/x4
  exit 0
fi
T0=$(date +%s)
source scripts/gpu_job_lib.sh
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT" /root/smol /root/corpora
export RUN=${RUN:-/root/smollm2-run}
B=${DMC_BUILD:-build-gpu}
copy_new() {  # copy_new DIR FILE...: the files DIR lacks
  local dir=$1 f; shift
  for f in "$@"; do [ -f "$f" ] && [ ! -e "$dir/$(basename "$f")" ] && cp "$f" "$dir/"; done
  return 0
}
copy_new /root/smol data/x*/gguf.*
copy_new /root/corpora data/x*/corpora/*.txt.xz data/x*/corpora.sha256
build_and_test "$B" "$OUT" || exit 1
gguf=/root/smol/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$gguf" ]; then
  for i in 0 1 2; do
    [ -f /root/smol/gguf.part-0$i ] || {
      echo "GGUF parts so far: $(ls /root/smol | tr '\n' ' ') (carry data/x$((i + 1)) next)"; exit 0; }
  done
  cat /root/smol/gguf.part-00 /root/smol/gguf.part-01 /root/smol/gguf.part-02 > "$gguf.tmp"
  [ "$(sha256sum "$gguf.tmp" | cut -d' ' -f1)" = "$(cat /root/smol/gguf.sha256)" ] || {
    echo "GGUF sha256 differs from the one recorded at --split"; rm -f "$gguf.tmp"; exit 1; }
  mv "$gguf.tmp" "$gguf"
fi
# the corpora: every file --split listed, each with its recorded sha256
[ -f /root/corpora/corpora.sha256 ] && (cd /root/corpora && sha256sum --quiet -c corpora.sha256) > /dev/null 2>&1 || {
  echo "corpora so far: $(ls /root/corpora | wc -l) files, not all of corpora.sha256 (carry data/x4 next)"; exit 0; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export GGUF=$gguf CORPORA_GLOB='/root/corpora/*.txt.xz' DMC_BUILD=$B
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
# two lanes on one GPU (kind nvidia-h200) share it: they overlap one another's launch gaps, and each task job takes
# half the batch so that two of them (8k-token caches) and a training job fit in its memory together
if [ -n "${LANE0:-}" ] && [ "$NGPU" -lt 2 ]; then
  export TASK_ARGS=${TASK_ARGS:---sinks 4 --batch 160 --prefill-tokens 131072 --prefill-chunk 256}
fi
export TASK_ARGS=${TASK_ARGS:---sinks 4 --batch 384 --prefill-tokens 262144 --prefill-chunk 256}
# the work: the retrofit script, or two lanes of it on two GPUs (nvidia-h200-x2; on one GPU both lanes share it): the
# shared phases first, then LANE0 on GPU 0 and LANE1 on GPU 1 at once, each a ';'-separated list of VAR=value for scripts/smollm2_retrofit.sh (no
# shell parses them), ' :: ' between invocations that run one after another, e.g.
#   LANE0='PHASES=control eval tasks;ONLY=^(original|control4x)$'
#   LANE1='PHASES=dmc eval tasks;ONLY=^dmc4x$ :: TAG=-lr500;DMC_ARGS=--dmc-decision-lr-mult 500;PHASES=dmc eval tasks;ONLY=^dmc4x-lr500$'
# With DEADLINE set, each part stops there (timeout; SIGTERM checkpoints).
limit() { if [ -n "${DEADLINE:-}" ]; then timeout -s TERM "$(( DEADLINE - $(date +%s) ))" "$@"; else "$@"; fi; }
work() {
  if [ -z "${LANE0:-}" ]; then
    limit scripts/smollm2_retrofit.sh
    echo "smollm2_retrofit.sh rc=$? (0 done, 75 or 124 more to do)"
  else
    PHASES="original data" scripts/smollm2_retrofit.sh
    for lane in 0 1; do
      spec=LANE$lane
      (
        val=${!spec:-PHASES=none}
        mapfile -t steps < <(printf '%s\n' "${val// :: /$'\n'}")
        for step in "${steps[@]}"; do  # one invocation after another on this lane's GPU
          IFS=';' read -ra kv <<< "$step"
          CUDA_VISIBLE_DEVICES=$(( NGPU < 2 ? 0 : lane )) limit env "${kv[@]}" scripts/smollm2_retrofit.sh || exit $?
        done
      ) > "$RUN.lane$lane.log" 2>&1 &
    done
    wait
    for lane in 0 1; do echo "-- lane $lane"; tail -12 "$RUN.lane$lane.log"; done
  fi
}
case "${1:-run}" in
  run)  # in this call, up to DEADLINE_S seconds after it started
    export DEADLINE=$(( T0 + ${DEADLINE_S:-540} ))
    work 2>&1 | tee -a "$RUN.log" ;;
  --job)  # the background job --start launched: no deadline
    unset DEADLINE
    work; echo "job finished ($(( $(date +%s) - T0 )) s)"; job_done retrofit
    exit 0 ;;
  --start)  # the whole run in the background of this machine (it goes on between calls while the machine is held)
    job_start retrofit "$RUN.log" "$0" --job ;;
  --wait)  # until the background job ends or N seconds (default 540) pass, then the results so far
    job_wait retrofit "$RUN.log" "${2:-540}"
    for f in "$RUN".lane*.log; do [ -f "$f" ] && { echo "-- $f"; tail -8 "$f"; }; done ;;
  *) echo "usage: scripts/gpu_retrofit.sh [--split | --start | --wait [SECONDS]]"; exit 2 ;;
esac
# results so far (no weights, no token shards) and the log of every call
cp "$RUN.log" "$RUN/calls.log" 2>/dev/null
for f in "$RUN".lane*.log; do [ -f "$f" ] && cp "$f" "$RUN/$(basename "$f" | sed 's/.*\.\(lane[0-9]\)\.log/calls-\1.log/')"; done
source scripts/eval_lib.sh
[ -d "$RUN" ] && pack_run run.tgz > /dev/null && mv "$RUN/run.tgz" "$OUT/run.tgz" && ls -la "$OUT/run.tgz"
exit 0
