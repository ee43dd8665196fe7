#!/usr/bin/env python3
"""Decode-step GEMMs of the Llama 2 7B shape at the batch sizes the decode benchmark runs (vanilla 28, DMC 111 and
216), in the ways a LibTorch engine can call them: F.linear(x, W) (cuBLAS, what the engine does), (W @ x^T)^T (the
transposed problem: other kernels), and F.linear under cuBLASLt. Each weight is cycled through 8 copies so that the
50 MB L2 cache does not hold it between calls (a decode step reads every weight once from HBM). Every variant's
output is checked against F.linear before it is timed.

  python3 bench/gemm_shapes.py [--batch 28,111,216]
Prints ms per step for the four projections of 32 layers plus the LM head, and the HBM floor (weight bytes over
copy bandwidth)."""
import argparse

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--batch", default="28,111,216")
p.add_argument("--iters", type=int, default=40)
a = p.parse_args()
dev = "cuda"
H, I, V, L = 4096, 11008, 32000, 32
shapes = {"qkv": (3 * H, H), "o": (H, H), "gate_up": (2 * I, H), "down": (H, I), "lm_head": (V, H)}
copies = 8
Ws = {k: [torch.randn(n, kk, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies)] for k, (n, kk) in shapes.items()}

src = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
dst = torch.empty_like(src)
for _ in range(3):
    dst.copy_(src)
torch.cuda.synchronize()
e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
e0.record()
for _ in range(10):
    dst.copy_(src)
e1.record()
torch.cuda.synchronize()
bw = 2 * src.numel() * 10 / (e0.elapsed_time(e1) * 1e-3)
print(f"copy bandwidth {bw / 1e9:.0f} GB/s")

variants = {
    "linear": lambda x, W: F.linear(x, W),
    "transposed": lambda x, W: (W @ x.t()).t(),
}


def time_variant(fn, x, name, lt=False):
    torch.backends.cuda.preferred_blas_library("cublaslt" if lt else "cublas")
    W = Ws[name]
    ref = F.linear(x, W[0])
    out = fn(x, W[0])
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert err < 1e-2, (name, err)
    for i in range(copies):
        fn(x, W[i])
    torch.cuda.synchronize()
    e0.record()
    for it in range(a.iters):
        fn(x, W[it % copies])
    e1.record()
    torch.cuda.synchronize()
    torch.backends.cuda.preferred_blas_library("cublas")
    return e0.elapsed_time(e1) / a.iters


for M in [int(b) for b in a.batch.split(",")]:
    xs = {k: torch.randn(M, kk, device=dev, dtype=torch.bfloat16) for k, (n, kk) in shapes.items()}
    floor = sum((n * kk * 2) * (L if k != "lm_head" else 1) for k, (n, kk) in shapes.items()) / bw * 1e3
    for vname, fn in list(variants.items()) + [("linear+cublaslt", variants["linear"])]:
        per = {k: time_variant(fn, xs[k], k, lt=vname.endswith("cublaslt")) for k in shapes}
        step = sum(per[k] * (L if k != "lm_head" else 1) for k in shapes)
        print(f"batch {M:4d} {vname:16s} step {step:6.2f} ms (floor {floor:.2f}, {step / floor:.2f}x)  " +
              "  ".join(f"{k} {per[k] * 1e3:.1f} us" for k in shapes))
