#!/usr/bin/env python3
# scripts/decision_input_stats.py MODEL_DIR TEXT.xz: per layer, S = sum_i |E_t[x_i]| of the attention input (docs/results.md, SmolLM2 retrofit).
# S_l = sum_i |E_t[x_i]| of each layer's attention input (after input_layernorm): under Adam (about one lr per
# weight per step, in the direction sign(E[x_i]) for the hinge's gradient) the decision logit of an average token
# rises by lr * S_l per step.
import lzma, torch, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
text = lzma.open(sys.argv[2], "rt").read()[200000:260000]
ids = tok(text, return_tensors="pt").input_ids[:, :2048]
xs = {}
hooks = [l.input_layernorm.register_forward_hook(lambda mod, i, o, k=k: xs.__setitem__(k, o.detach()[0]))
         for k, l in enumerate(m.model.layers)]
with torch.no_grad():
    m(ids)
S = [xs[k].mean(0).abs().sum().item() for k in range(len(xs))]
rms = [xs[k].pow(2).mean().sqrt().item() for k in range(len(xs))]
# the spread of a direction-aligned logit across tokens: std over t of sum_i sign(E x_i) x_ti
spread = [(xs[k] @ torch.sign(xs[k].mean(0))).std().item() for k in range(len(xs))]
print("layer S=sum|E x| rms(x) spread")
for k in range(len(xs)):
    print(k, round(S[k], 2), round(rms[k], 3), round(spread[k], 2))
print("mean S", sum(S) / len(S), "median", sorted(S)[len(S)//2])
