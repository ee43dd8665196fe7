#!/usr/bin/env bash
# A/B on one GPU card in one lease: the tree at an earlier commit (a copy under .carry/old, made here with
#   rm -rf .carry/old && mkdir -p .carry/old && git archive COMMIT | tar -x -C .carry/old
# ) against this tree, each built by its own scripts/gpu_check.sh and run through the same sections, so that a
# redesign can show it kept every number. Results (logs, tables) go to one archive $OUT/ab.tgz.
#   OUT=... scripts/gpu_ab.sh "NEW_SECTIONS" "OLD_SECTIONS"     e.g. "gpu train" "train", then "cr4 cr8" "cr4 cr8"
set -uo pipefail
cd "$(dirname "$0")/.."
[ -d .carry/old/scripts ] || { echo ".carry/old holds no tree (see the header)"; exit 1; }
RES=${RES:-/tmp/ab}
mkdir -p "$RES/new" "$RES/old"
new=${1:-gpu train}
old=${2:-train}
echo "== new: $new"
OUT="$RES/new" scripts/gpu_check.sh $new
echo "== old: $old"
OUT="$RES/old" .carry/old/scripts/gpu_check.sh $old
for t in train_results decode_results cr4_results; do
  for side in new old; do
    [ -f "$RES/$side/$t.md" ] && { echo "-- $side $t"; cat "$RES/$side/$t.md"; }
  done
done
[ -n "${OUT:-}" ] && tar czf "$OUT/ab.tgz" -C "$RES" new old
exit 0
