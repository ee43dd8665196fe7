# Sourced by scripts/replicate.sh and scripts/smollm2_retrofit.sh: one perplexity evaluation, skipped when its JSON
# exists (the scripts resume).
#   ev NAME MODEL [args...]   $DMC eval ppl --model MODEL $E args -> $RUN/eval/NAME.json (log beside it); prints ppl
ev() {
  local name=$1 model=$2; shift 2
  [ -f "$RUN/eval/$name.json" ] && return 0
  "$DMC" eval ppl --model "$model" $E --json "$RUN/eval/$name.json" "$@" > "$RUN/eval/$name.log" 2>&1 ||
    { tail -5 "$RUN/eval/$name.log"; return 1; }
  sed -n 's/^perplexity: \([0-9.]*\).*/\1/p' "$RUN/eval/$name.log" | head -1 | xargs echo "  $name: ppl"
}
# tree_id: the git tree of the files as they are here (HEAD^{tree} of the commit they match, compared with
# `git rev-parse COMMIT^{tree}`): on the device machine the working tree is the session's latest but its .git may be
# older, so `git rev-parse HEAD` there names the wrong commit. Ignored files (weights, data) are left out.
tree_id() {
  local idx=/tmp/dmc-tree-index.$$
  rm -f "$idx"
  GIT_INDEX_FILE=$idx git add -A . > /dev/null 2>&1 && echo "tree $(GIT_INDEX_FILE=$idx git write-tree 2> /dev/null)"
  rm -f "$idx"
}
# bench_setup: the decode benchmark's arguments, equal cache memory ($BENCH_GIB GiB), largest batch, real prefills of
# $PROMPT tokens.
#   bd NAME MODEL POLICY      one $DMC bench decode -> $RUN/bench_NAME.log, its result in $RUN/bench_NAME.jsonl (replaced;
#                             one file a model, so invocations for other models leave it alone)
bench_setup() {
  echo "== decode throughput at equal memory ($BENCH_GIB GiB of cache each), largest batch"
  B="--prompt-len $PROMPT --new-tokens $NEW --steps $STEPS --batch max --memory-gib $BENCH_GIB --data $DATA --tokenizer $TOKENIZER"
}
bd() {
  local j=$RUN/bench_$1.jsonl
  rm -f "$j.tmp"
  "$DMC" bench decode --model "$2" --policy "$3" $B --json "$j.tmp" > "$RUN/bench_$1.log" 2>&1 ||
    { tail -5 "$RUN/bench_$1.log"; return 1; }
  mv "$j.tmp" "$j"
}
# pack_run NAME: everything of $RUN but weights, checkpoints, token shards and other packs in $RUN/NAME (written
# atomically)
pack_run() {
  local tmp
  tmp=$(mktemp "/tmp/$1.XXXXXX")
  tar czf "$tmp" -C "$RUN" --exclude='*/final' --exclude='*/checkpoints' --exclude='*.safetensors' \
     --exclude="$1" --exclude='*.tar.gz' --exclude='data/*.bin' --exclude='data/*.idx' .
  mv "$tmp" "$RUN/$1"
  ls -la "$RUN/$1"
}
