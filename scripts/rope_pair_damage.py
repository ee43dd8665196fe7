#!/usr/bin/env python3
# scripts/rope_pair_damage.py GGUF_OR_HF_DIR [SEQ_LEN] [PAIRS]: what repurposing each rotary pair's partner dim costs
# an untrained model (docs/results.md, SmolLM2 run 4; dmc_decision_pair).
# DMC's stage 1 zeroes q/k dim D-1 around RoPE (rotate-half layout: the partner of pair D/2-1, the lowest frequency).
# This measures, in HF transformers (an oracle independent of dmc's forward), the perplexity of the model with dim
# p + D/2 zeroed in every q and k head before and after RoPE, for each pair p, on 2 x SEQ_LEN tokens from the middle
# of four corpora (DMC_SHARED/corpora, default ../shared/corpora). CPU, fp32: ~20 s a pair for SmolLM2-135M at 2048.
import lzma, math, os, sys
import torch
import transformers.models.llama.modeling_llama as ml
from transformers import AutoModelForCausalLM, AutoTokenizer

src = sys.argv[1]
L = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
if src.endswith(".gguf"):
    d, g = os.path.split(src)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=g)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=g, dtype=torch.float32).eval()
else:
    tok = AutoTokenizer.from_pretrained(src)
    m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
D = getattr(m.config, "head_dim", None) or m.config.hidden_size // m.config.num_attention_heads
half = D // 2
pairs = [int(p) for p in sys.argv[3].split(",")] if len(sys.argv) > 3 else list(range(half))
corpora = os.path.join(os.environ.get("DMC_SHARED", "../shared"), "corpora")
ids = []
for name in ["austen", "brown", "jargon", "bible_web"]:
    t = lzma.open(os.path.join(corpora, name + ".txt.xz"), "rt").read()
    ids.append(tok(t[len(t) // 2: len(t) // 2 + 40000], return_tensors="pt").input_ids[:, :L])

orig = ml.apply_rotary_pos_emb
zero = {"dim": None}
def patched(q, k, cos, sin, *a, **kw):
    j = zero["dim"]
    if j is None:
        return orig(q, k, cos, sin, *a, **kw)
    q = q.clone(); k = k.clone(); q[..., j] = 0; k[..., j] = 0
    qo, ko = orig(q, k, cos, sin, *a, **kw)
    qo = qo.clone(); ko = ko.clone(); qo[..., j] = 0; ko[..., j] = 0
    return qo, ko
ml.apply_rotary_pos_emb = patched

def ppl():
    nll = n = 0
    with torch.no_grad():
        for x in ids:
            nll += m(x, labels=x).loss.item() * (x.shape[1] - 1)
            n += x.shape[1] - 1
    return math.exp(nll / n)

base = ppl()
print(f"{src}: head_dim {D}, {len(ids)} texts x {L} tokens, perplexity untouched {base:.3f}")
print("| pair | dim zeroed | ppl | vs untouched |\n|---|---|---|---|")
for p in pairs:
    zero["dim"] = p + half
    v = ppl()
    print(f"| {p} | {p + half} | {v:.3f} | {100 * (v / base - 1):+.1f}% |", flush=True)
