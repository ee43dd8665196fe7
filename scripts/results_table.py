#!/usr/bin/env python3
"""Markdown table from bench JSONL files (bench_decode and hf_generate lines): one row per engine and batch,
with the dmc/HF speed ratio per batch."""
import json
import sys

rows = []
for path in sys.argv[1:]:
    for line in open(path):
        line = line.strip()
        if line:
            rows.append(json.loads(line))
print("| engine | preset | batch | prompt | new | prefill ms | decode ms/step | tokens/s | HBM floor ms |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['engine']} | {r['preset']} | {r['batch']} | {r['prompt_len']} | {r['new_tokens']} | "
          f"{r['prefill_ms']:.1f} | {r['decode_ms_per_step']:.2f} | {r['decode_tokens_per_s']:.1f} | "
          f"{r.get('hbm_floor_ms', 0):.2f} |")
print()
by = {}
for r in rows:
    by.setdefault(r["batch"], {})[r["engine"]] = r["decode_tokens_per_s"]
for b, e in sorted(by.items()):
    if "dmc" in e and "hf_transformers" in e:
        print(f"batch {b}: dmc / HF generate() decode tokens/s = {e['dmc'] / e['hf_transformers']:.2f}x")
