# Sourced by the GPU scripts that run SmolLM2 (gpu_tasks.sh, gpu_serve.sh): the GGUF put together from the parts the
# device tool carried (its sha256 recorded in $OUT), converted once to /tmp/smol-bf16 with $B/dmc.
#   smol_bf16 GGUF_OR_PARTS_GLOB        exits the calling script with a message when it cannot
smol_bf16() {
  local gguf=/tmp/smollm2.gguf
  [ -s /tmp/smol-bf16/model.safetensors ] && return 0
  # shellcheck disable=SC2086
  cat $1 > "$gguf" || { echo "cannot read $1"; exit 1; }
  sha256sum "$gguf" | tee "$OUT/gguf.sha256"
  "$B/dmc" convert --from-gguf "$gguf" --out /tmp/smol-bf16 --dtype bf16 --overwrite > "$OUT/convert.log" 2>&1 || {
    tail "$OUT/convert.log"; exit 1; }
}
