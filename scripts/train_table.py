#!/usr/bin/env python3
"""Markdown table from bench_train / hf_train JSONL lines, with the dmc/HF and DMC/vanilla ratios."""
import json
import sys

rows = [json.loads(l) for p in sys.argv[1:] for l in open(p) if l.strip()]
print("| engine | mode | fused ops | preset | seq | micro-batch | recompute | step ms | tokens/s | MFU | peak GiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['engine']} | {r['mode']} | {r.get('fused_ops', '-')} | {r['preset']} | {r['seq_len']} | {r['micro_batch']} | "
          f"{r['activation_checkpointing']} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% | "
          f"{r['peak_memory_GiB']:.1f} |")
print()
key = lambda e, m, c: next((r for r in reversed(rows) if r["engine"] == e and r["mode"] == m and r["activation_checkpointing"] == c), None)
h = key("hf_transformers", "vanilla", False)
for d in [r for r in rows if r["engine"] == "dmc" and r["mode"] == "vanilla" and not r["activation_checkpointing"]]:
    if h:
        print(f"dmc trainer (fused ops {d.get('fused_ops', '-')}) / HF eager tokens/s: "
              f"{d['tokens_per_s'] / h['tokens_per_s']:.2f}x (dmc MFU {100 * d['mfu']:.1f}%)")
v = key("dmc", "vanilla", True)
for x in [r for r in rows if r["engine"] == "dmc" and r["mode"].startswith("dmc") and r["activation_checkpointing"]]:
    if v:
        print(f"DMC ({x['mode']}) / vanilla step (both with recompute): time {x['step_ms'] / v['step_ms']:.2f}x, "
              f"memory {x['peak_memory_GiB'] / v['peak_memory_GiB']:.2f}x")
