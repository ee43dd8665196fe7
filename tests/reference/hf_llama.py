#!/usr/bin/env python3
"""Independent oracle for dmc's Llama: HF transformers' LlamaForCausalLM, used by the C++ tests.

  hf_llama.py make-model OUT --vocab V [--layers 2 --heads 4 --kv-heads 2 --hidden 64 --ffn 88 --tie --seed S]
      a random LlamaForCausalLM (fp32, non-trivial norm weights), saved with save_pretrained (safetensors)
  hf_llama.py logits MODEL IDS_JSON OUT [--dtype fp32|bf16] [--device cpu|cuda]
      logits for the token ids in IDS_JSON ([[...], ...]) saved to OUT (safetensors, key "logits", fp32)
  hf_llama.py ppl MODEL TOKENIZER TEXT --seq-len N --stride S
      perplexity with the sliding-window recipe of the transformers docs; prints JSON
"""
import argparse
import json
import math
import sys

import torch


def make_model(a):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(a.seed)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      max_position_embeddings=a.max_pos, rope_theta=a.rope_theta, rms_norm_eps=1e-5,
                      tie_word_embeddings=a.tie, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model.save_pretrained(a.out, safe_serialization=True)


def load(path, dtype, device):
    from transformers import LlamaForCausalLM
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    m = LlamaForCausalLM.from_pretrained(path, dtype=dt, attn_implementation="sdpa").to(device)
    m.eval()
    return m


def logits(a):
    from safetensors.torch import save_file
    m = load(a.model, a.dtype, a.device)
    ids = torch.tensor(json.load(open(a.ids)), dtype=torch.long, device=a.device)
    with torch.no_grad():
        out = m(ids).logits.float().cpu().contiguous()
    save_file({"logits": out}, a.out)


def ppl(a):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
    text = open(a.text, encoding="utf-8").read()
    ids = [sp.bos_id()] + sp.encode(text)
    m = load(a.model, "fp32", "cpu")
    enc = torch.tensor([ids])
    seq_len = enc.size(1)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, a.stride):
        end = min(begin + a.seq_len, seq_len)
        trg_len = end - prev_end
        input_ids = enc[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = m(input_ids, labels=target_ids).loss
        num_valid = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += loss.item() * num_valid
        n_tokens += num_valid
        prev_end = end
        if end == seq_len:
            break
    print(json.dumps({"ppl": math.exp(nll_sum / n_tokens), "tokens": n_tokens, "n_ids": len(ids)}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    mm = sub.add_parser("make-model")
    mm.add_argument("out")
    mm.add_argument("--vocab", type=int, required=True)
    mm.add_argument("--layers", type=int, default=2)
    mm.add_argument("--heads", type=int, default=4)
    mm.add_argument("--kv-heads", type=int, default=2)
    mm.add_argument("--hidden", type=int, default=64)
    mm.add_argument("--ffn", type=int, default=88)
    mm.add_argument("--max-pos", type=int, default=512)
    mm.add_argument("--rope-theta", type=float, default=10000.0)
    mm.add_argument("--tie", action="store_true")
    mm.add_argument("--seed", type=int, default=0)
    lg = sub.add_parser("logits")
    lg.add_argument("model")
    lg.add_argument("ids")
    lg.add_argument("out")
    lg.add_argument("--dtype", default="fp32")
    lg.add_argument("--device", default="cpu")
    pp = sub.add_parser("ppl")
    pp.add_argument("model")
    pp.add_argument("tokenizer")
    pp.add_argument("text")
    pp.add_argument("--seq-len", type=int, required=True)
    pp.add_argument("--stride", type=int, required=True)
    a = p.parse_args()
    {"make-model": make_model, "logits": logits, "ppl": ppl}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
