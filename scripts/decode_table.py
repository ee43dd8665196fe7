#!/usr/bin/env python3
"""Markdown table from `dmc bench decode` JSONL lines, with each policy's tokens/s relative to vanilla (the latest
vanilla row before it, i.e. the one of its own invocation when several were appended to one file)."""
import json
import sys

rows = [json.loads(l) for p in sys.argv[1:] for l in open(p) if l.strip()]
van = next((r for r in rows if r["policy"] == "vanilla"), None)
print("| policy | decisions | batch | ms/step | tokens/s | vs vanilla | HBM floor ms | step/floor | attention ms (floor) | GEMM ms (TFLOP/s) | achieved CR | KV GiB | prefill ms | prefill speedup |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if r["policy"] == "vanilla":
        van = r
    rel = r["tokens_per_s"] / van["tokens_per_s"] if van else float("nan")
    print(f"| {r['policy']} | {r['decisions']} | {r['batch']} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:.0f} | {rel:.2f}x | "
          f"{r['hbm_floor_ms']:.2f} | {r['step_over_floor']:.2f} | "
          f"{r.get('attention_ms_per_step', float('nan')):.2f} ({r.get('attention_floor_ms', float('nan')):.2f}) | "
          f"{r.get('gemm_ms_per_step', float('nan')):.2f} ({r.get('gemm_tflops', float('nan')):.0f}) | {r['achieved_cr']:.2f} | {r['kv_bytes'] / 2**30:.1f} | "
          f"{r.get('prefill_ms', float('nan')):.0f} | {r.get('prefill_speedup', float('nan')):.0f}x |")
