"""transformers as the oracle of dmc's GGUF import (needs transformers, gguf, accelerate; CPU, fp32).

  hf_gguf.py logits MODEL IDS.json OUT.f32     logits [T, vocab] of the ids as raw fp32; MODEL is a .gguf file
                                               (transformers' own GGUF loader: from_pretrained(dir, gguf_file=...))
                                               or an HF directory (e.g. the one `dmc convert --from-gguf` wrote)
  hf_gguf.py ppl MODEL IDS.json SEQ_LEN        {"nll_sum", "tokens"} over non-overlapping windows of SEQ_LEN, each
                                               scoring its positions 1.. (what `dmc eval ppl` computes)
  hf_gguf.py chat DIR TEXT                     apply_chat_template([user: TEXT], add_generation_prompt=True) of DIR
  hf_gguf.py chat DIR MESSAGES.json            the same for a conversation (a JSON list of {role, content})
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load(model):
    if model.endswith(".gguf"):
        return AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(model)),
                                                    gguf_file=os.path.basename(model), torch_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32)


def main():
    cmd = sys.argv[1]
    torch.set_grad_enabled(False)
    if cmd == "chat":
        tok = AutoTokenizer.from_pretrained(sys.argv[2])
        msgs = [{"role": "user", "content": sys.argv[3]}]
        if sys.argv[3].endswith(".json"):
            with open(sys.argv[3]) as f:
                msgs = json.load(f)
        print(tok.apply_chat_template(msgs, tokenize=False,
                                      add_generation_prompt=True), end="")
        return
    m = load(sys.argv[2]).eval()
    with open(sys.argv[3]) as f:
        ids = json.load(f)
    if cmd == "logits":
        x = torch.tensor([ids])
        m(x).logits[0].float().numpy().astype("<f4").tofile(sys.argv[4])
    elif cmd == "ppl":
        S = int(sys.argv[4])
        nll, n = 0.0, 0
        for b in range(0, len(ids) - 1, S):
            w = torch.tensor([ids[b:b + S]])
            if w.shape[1] < 2:
                break
            lg = m(w).logits[0].double()
            nll += torch.nn.functional.cross_entropy(lg[:-1], w[0, 1:], reduction="sum").item()
            n += w.shape[1] - 1
        print(json.dumps({"nll_sum": nll, "tokens": n}))


if __name__ == "__main__":
    main()
