#!/usr/bin/env bash
# The 60M replication (scripts/replicate.sh, docs/results.md's first section) on the GPU machine: no network, leases
# of 30 minutes, calls of at most 10, 64 MiB carried a call. The run (~20 minutes on an H200) goes on in the
# background of the held machine between back-to-back calls; each call returns the results so far (no weights) in
# $OUT/replication.tgz, the last one the whole pack.
#   here, once:  scripts/gpu_replicate.sh --prepare         the corpora and the Llama 2 tokenizer into data/rep (~21 MB)
#   call 1:      carry .carry/{httplib,lzma,pcre2} and data/rep
#                OUT=$OUT scripts/gpu_replicate.sh --start; OUT=$OUT scripts/gpu_replicate.sh --wait 420
#   next calls:  OUT=$OUT scripts/gpu_replicate.sh --wait 560                 (no thinking between calls)
# --start builds (scripts/gpu_check.sh build) and tests the GPU kernels first; no run starts if they fail.
# BASE_STEPS, CONT_STEPS, RATIOS, PHASES pass through to scripts/replicate.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --prepare ]; then
  SHARED=${DMC_SHARED:-../shared}
  rm -rf data/rep && mkdir -p data/rep/corpora
  cp "$SHARED"/corpora/*.txt.xz data/rep/corpora/ && cp "$SHARED"/tokenizers/llama2/tokenizer.model data/rep/
  du -sh data/rep
  exit 0
fi
T0=$(date +%s)
source scripts/gpu_job_lib.sh
OUT=${OUT:-$PWD/out}
export RUN=${RUN:-/root/replication}
B=${DMC_BUILD:-build-gpu}
mkdir -p "$OUT" /root/rep
case "${1:-}" in
  --start)
    [ -f data/rep/tokenizer.model ] && cp -r data/rep/. /root/rep/
    [ -f /root/rep/tokenizer.model ] || { echo "no corpora here: carry data/rep (scripts/gpu_replicate.sh --prepare)"; exit 1; }
    build_and_test "$B" "$OUT" || exit 1
    job_start replicate "$RUN.log" "$0" --job ;;
  --job)  # what --start launched
    DMC_BUILD=$B CORPORA=/root/rep/corpora TOKENIZER=/root/rep/tokenizer.model scripts/replicate.sh
    echo "replicate.sh rc=$? ($(( $(date +%s) - T0 )) s)"; job_done replicate
    exit 0 ;;
  --wait) job_wait replicate "$RUN.log" "${2:-540}" ;;
  *) echo "usage: scripts/gpu_replicate.sh --prepare | --start | --wait [SECONDS]"; exit 2 ;;
esac
# the results so far: the finished pack, or everything of the run but weights and token shards
cp "$RUN.log" "$RUN/calls.log" 2>/dev/null
source scripts/eval_lib.sh
if [ -f "$RUN/replication.tar.gz" ]; then
  cp "$RUN/replication.tar.gz" "$OUT/replication.tgz"
elif [ -d "$RUN" ]; then
  pack_run partial.tgz > /dev/null && mv "$RUN/partial.tgz" "$OUT/replication.tgz"
fi
ls -la "$OUT"/replication.tgz 2>/dev/null
exit 0
