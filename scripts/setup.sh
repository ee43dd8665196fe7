#!/usr/bin/env bash
# Installs what dmc needs to build and test on Debian 12 (or Ubuntu): system libraries through apt, and a
# Python venv holding the pinned PyPI torch wheel (whose LibTorch we link) plus the test oracles
# (transformers, safetensors, numpy, sentencepiece). Idempotent: a second run only checks.
#
#   scripts/setup.sh            # venv at $DMC_VENV, default ~/.local/share/dmc/venv
#   DMC_SKIP_APT=1 scripts/setup.sh   # when the libraries are already there (e.g. the GPU machine)
set -euo pipefail
TORCH_VERSION=${DMC_TORCH_VERSION:-2.11.0}
VENV=${DMC_VENV:-$HOME/.local/share/dmc/venv}

if [ "${DMC_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null; then
  pkgs="build-essential cmake ninja-build ccache pkg-config python3-venv libsentencepiece-dev sentencepiece libgloo-dev
        libyaml-cpp-dev libspdlog-dev nlohmann-json3-dev catch2 liblzma-dev zlib1g-dev libpcre2-dev
        libcpp-httplib-dev"
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "[setup] apt-get install $missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating venv $VENV"
  python3 -m venv "$VENV"
fi
have=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  echo "[setup] pip install torch==$TORCH_VERSION (LibTorch for the C++ build)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
fi
if ! "$VENV/bin/python" -c 'import transformers, safetensors, numpy, sentencepiece, tokenizers, gguf, accelerate, openai, lm_eval, tenacity' 2>/dev/null; then
  echo "[setup] pip install test oracles and clients (transformers, tokenizers, safetensors, numpy, sentencepiece, gguf, accelerate, openai, lm_eval)"
  "$VENV/bin/pip" install -q transformers tokenizers safetensors numpy sentencepiece "gguf>=0.10" accelerate openai \
    "lm_eval[api]==0.4.13"
fi
echo "[setup] ok: venv $VENV, torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
