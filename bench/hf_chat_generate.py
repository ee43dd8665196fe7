"""HF generate() as the oracle of `dmc generate --chat`: greedy continuations of chat prompts.

  hf_chat_generate.py MODEL_DIR PROMPTS.json OUT.json [--device cuda] [--dtype bf16] [--max-new-tokens 64]
writes [{"prompt", "text": the prompt text of the chat template, "completion": the decoded new tokens (special tokens
skipped), "ids": the new token ids}] per prompt.
"""
import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("prompts")
ap.add_argument("out")
ap.add_argument("--device", default="cuda")
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--max-new-tokens", type=int, default=64)
a = ap.parse_args()
dt = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[a.dtype]
tok = AutoTokenizer.from_pretrained(a.model)
m = AutoModelForCausalLM.from_pretrained(a.model, dtype=dt, attn_implementation="sdpa").to(a.device).eval()
res = []
for p in json.load(open(a.prompts)):
    text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids.to(a.device)
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=a.max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if new and new[-1] == tok.eos_token_id:
        new = new[:-1]
    res.append({"prompt": p, "text": text, "ids": new, "completion": tok.decode(new, skip_special_tokens=True)})
json.dump(res, open(a.out, "w"), ensure_ascii=False, indent=1)
