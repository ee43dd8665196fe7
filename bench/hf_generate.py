#!/usr/bin/env python3
"""HF transformers baseline for bench_decode: greedy generate() of a random-weight Llama (bf16, CUDA, SDPA)
with the same shape, prompt length and generated length. Decode tokens/s = B * (N - 1) / (t(N) - t(1)), i.e.
the prefill (a generate of one token) is subtracted, as bench_decode reports decode only.

  hf_generate.py --preset llama2-7b --batch 1,16 --prompt-len 128 --new-tokens 256 --json out.jsonl
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32),
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                     num_key_value_heads=16),
}


def timed_generate(model, ids, n):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                         pad_token_id=0)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + n
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="llama2-7b")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--json", default="")
    a = p.parse_args()
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, **PRESETS[a.preset])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    model.eval()
    for b in [int(x) for x in a.batch.split(",")]:
        ids = torch.randint(3, 32000, (b, a.prompt_len), device="cuda")
        timed_generate(model, ids, 8)  # warm-up
        t1 = timed_generate(model, ids, 1)
        tn = timed_generate(model, ids, a.new_tokens)
        steps = a.new_tokens - 1
        rec = {"engine": "hf_transformers", "preset": a.preset, "batch": b, "prompt_len": a.prompt_len,
               "new_tokens": a.new_tokens, "dtype": "bf16", "prefill_ms": t1 * 1e3,
               "decode_ms_per_step": (tn - t1) * 1e3 / steps, "decode_tokens_per_s": b * steps / (tn - t1),
               "transformers": __import__("transformers").__version__, "torch": torch.__version__}
        print(json.dumps(rec), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
