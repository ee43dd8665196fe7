#!/usr/bin/env python3
"""HF transformers baseline for bench_train: an eager PyTorch training step of LlamaForCausalLM (SDPA attention,
fp32 master weights, bf16 autocast, fused AdamW, grad clip 1.0) with the same shape, sequence length and
micro-batch, on random tokens. Same FLOP count as bench_train: 6 N + 12 L d T per token.
"""
import argparse
import json
import math
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                     num_key_value_heads=16),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="llama-1b")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--json", default="")
    a = p.parse_args()
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=max(4096, a.seq_len), rms_norm_eps=1e-5,
                      **PRESETS[a.preset])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    if a.activation_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step(i):
        torch.manual_seed(i)
        tok = torch.randint(3, 32000, (a.micro_batch, a.seq_len + 1), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tok[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, 32000), tok[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(a.warmup):
        step(i).item()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(a.steps):
        last = step(a.warmup + i)
    last = last.item()
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    L, d, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    n = sum(p.numel() for p in model.parameters()) - V * d
    fpt = 6 * n + 12 * L * d * a.seq_len
    tps = a.steps * a.micro_batch * a.seq_len / secs
    rec = {"engine": "hf_transformers", "mode": "vanilla", "preset": a.preset, "layers": L, "seq_len": a.seq_len,
           "micro_batch": a.micro_batch, "activation_checkpointing": a.activation_checkpointing,
           "step_ms": 1e3 * secs / a.steps, "tokens_per_s": tps, "mfu": tps * fpt / (a.peak_tflops * 1e12),
           "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30, "last_loss": last,
           "transformers": __import__("transformers").__version__}
    print(json.dumps(rec), flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
