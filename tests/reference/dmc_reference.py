#!/usr/bin/env python3
"""Plain reference of the DMC attention (dmc-spec sections 1-2), written independently of the C++ code:
explicit loops over batch, KV head, query head and time, in float64, autograd for gradients.

  dmc_reference.py IN.safetensors OUT.safetensors

IN holds q [B,T,nh,D], k, v [B,T,nkv,D], noise [B,T,nkv] (logistic G1-G2), doc_start [B,T] (uint8),
R [B,T,nh,D] and r2 [B] (weights of the scalar L = sum(out*R) + sum(decision_mean*r2)); its metadata holds
mode (train|eval), window, init_val, temperature, rope_theta, doc_boundaries (0|1).
OUT gets out [B,T,nh,D], decision_mean [B], and grad_q, grad_k, grad_v.
"""
import math
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def rope_rotate_half(x, pos, theta):
    """HF Llama RoPE for one vector x [D] at position pos."""
    D = x.shape[0]
    half = D // 2
    out = torch.empty_like(x)
    for i in range(half):
        inv = 1.0 / (theta ** (2.0 * i / D))
        ang = pos * inv
        c, s = math.cos(ang), math.sin(ang)
        out[i] = x[i] * c - x[i + half] * s
        out[i + half] = x[i + half] * c + x[i] * s
    return out


def drop_last_rope(x, pos, theta):
    D = x.shape[0]
    y = torch.cat([x[: D - 1], torch.zeros(1, dtype=x.dtype)])
    r = rope_rotate_half(y, pos, theta)
    return torch.cat([r[: D - 1], torch.zeros(1, dtype=x.dtype)])


def reference(q, k, v, noise, doc_start, mode, W, c, tau, theta, doc_boundaries):
    B, T, nh, D = q.shape
    nkv = k.shape[2]
    G = nh // nkv
    eps = torch.finfo(torch.float64).eps
    out = [[[None] * nh for _ in range(T)] for _ in range(B)]
    dmean = []
    for b in range(B):
        dsum = 0.0
        for h in range(nkv):
            p, ell, bnd, omega = [], [], [], []
            for t in range(T):
                a = k[b, t, h, D - 1] - c
                if mode == "train":
                    e = (a + noise[b, t, h]) / tau
                    ell.append(e)
                    p.append(torch.sigmoid(e))
                else:
                    soft = torch.sigmoid(a)
                    p.append((soft > 0.5).double() + soft - soft.detach())
                hard = (p[t].detach() > 0.5).double()
                dsum = dsum + hard + p[t] - p[t].detach()
                forced = t == 0 or (doc_boundaries and bool(doc_start[b, t]))
                bnd.append(torch.zeros((), dtype=torch.float64) if forced else p[t])
                qs = torch.stack([q[b, t, h * G + g, D - 1] for g in range(G)]).mean()
                omega.append(torch.sigmoid(qs + c) + eps)
            # pooled keys / values
            khat, vhat = [], []
            for t in range(T):
                num_k = torch.zeros(D, dtype=torch.float64)
                num_v = torch.zeros(D, dtype=torch.float64)
                den = torch.zeros((), dtype=torch.float64)
                coef = torch.ones((), dtype=torch.float64)
                for m in range(W):
                    j = t - m
                    if j < 0:
                        break
                    if m > 0:
                        coef = coef * bnd[t - m + 1]
                    num_k = num_k + coef * omega[j] * k[b, j, h]
                    num_v = num_v + coef * omega[j] * v[b, j, h]
                    den = den + coef * omega[j]
                khat.append(num_k / den)
                vhat.append(num_v / den)
            # bias per key column
            bias = []
            for j in range(T):
                if j == T - 1 or (doc_boundaries and bool(doc_start[b, j + 1])):
                    bias.append(torch.zeros((), dtype=torch.float64))
                elif mode == "train":
                    bias.append(torch.nn.functional.logsigmoid(-ell[j + 1]))
                else:
                    bias.append(-50000.0 * p[j + 1])
            kr = [drop_last_rope(khat[j], j, theta) for j in range(T)]
            for g in range(G):
                hq = h * G + g
                for i in range(T):
                    qr = drop_last_rope(q[b, i, hq], i, theta)
                    scores = []
                    for j in range(i + 1):
                        s = (qr * kr[j]).sum() / math.sqrt(D)
                        if j < i:
                            s = s + bias[j]
                        scores.append(s)
                    w = torch.softmax(torch.stack(scores), 0)
                    out[b][i][hq] = sum(w[j] * vhat[j] for j in range(i + 1))
        dmean.append(dsum / (T * nkv))
    o = torch.stack([torch.stack([torch.stack(out[b][i]) for i in range(T)]) for b in range(B)])
    return o, torch.stack(dmean)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with safe_open(src, "pt") as f:
        meta = f.metadata()
        t = {n: f.get_tensor(n) for n in f.keys()}
    q = t["q"].double().requires_grad_(True)
    k = t["k"].double().requires_grad_(True)
    v = t["v"].double().requires_grad_(True)
    o, dm = reference(q, k, v, t["noise"].double(), t["doc_start"].bool(), meta["mode"], int(meta["window"]),
                      float(meta["init_val"]), float(meta["temperature"]), float(meta["rope_theta"]),
                      meta["doc_boundaries"] == "1")
    L = (o * t["R"].double()).sum() + (dm * t["r2"].double()).sum()
    L.backward()
    save_file({"out": o.detach().contiguous(), "decision_mean": dm.detach().contiguous(),
               "grad_q": q.grad.contiguous(), "grad_k": k.grad.contiguous(), "grad_v": v.grad.contiguous()}, dst)


if __name__ == "__main__":
    main()
