#!/usr/bin/env python3
"""docs/results.md and its pictures from a scripts/replicate.sh run (its directory, or the replication.tar.gz
it packs). Standard library only: the heatmaps are written as SVG directly.

  python3 scripts/replication_report.py RUN_DIR_OR_TARBALL [--out docs/results.md] [--pictures docs/results]
      [--notes FILE]   a Markdown file appended as the report's discussion
"""
import argparse
import glob
import json
import lzma
import math
import os
import re
import shutil
import sys
import tarfile
import tempfile


def load_json(path):
    """a JSON file, or one compressed with xz (.json.xz: the large task reports kept in docs/results)"""
    with (lzma.open(path, "rt") if path.endswith(".xz") else open(path)) as f:
        return json.load(f)


def jsonl(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
    return rows


def bench_rows(run):
    """decode benchmark results of a run: bench_NAME.jsonl (one a model; "name" = NAME) and the older shared
    bench_decode.jsonl (name = the weights' run directory); vanilla rows first"""
    rows = []
    for b in jsonl(os.path.join(run, "bench_decode.jsonl")):
        b["name"] = os.path.basename(os.path.dirname(b.get("weights", "").rstrip("/"))) or b["policy"]
        rows.append(b)
    for path in sorted(glob.glob(os.path.join(run, "bench_*.jsonl"))):
        name = os.path.basename(path)[len("bench_"):-len(".jsonl")]
        if name == "decode":
            continue
        for b in jsonl(path):
            b["name"] = name
            rows.append(b)
    return sorted(rows, key=lambda b: b["policy"] != "vanilla")


def open_run(path):
    """a run directory as it is, or an archive of one (.tar.gz) unpacked into a temporary directory"""
    if os.path.isdir(path):
        return path
    d = tempfile.mkdtemp()
    with tarfile.open(path) as t:
        t.extractall(d, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(d)
    return d


def color(v, lo, hi):
    """white (lo) to dark blue (hi)"""
    t = 0.0 if hi <= lo else max(0.0, min(1.0, (v - lo) / (hi - lo)))
    r = int(247 - t * (247 - 8))
    g = int(251 - t * (251 - 48))
    b = int(255 - t * (255 - 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap_svg(title, values, lo, hi):
    rows, cols = len(values), len(values[0])
    cw, ch, left, top = 44, 26, 70, 40
    w, h = left + cols * cw + 20, top + rows * ch + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="20" font-size="13">{title}</text>']
    for l in range(rows):
        out.append(f'<text x="{left - 8}" y="{top + l * ch + ch * 0.65}" text-anchor="end">layer {l}</text>')
        for g in range(cols):
            v = values[l][g]
            x, y = left + g * cw, top + l * ch
            fg = "#fff" if (v - lo) > 0.6 * (hi - lo) else "#000"
            out.append(f'<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="{color(v, lo, hi)}" stroke="#fff"/>')
            out.append(f'<text x="{x + cw / 2}" y="{y + ch * 0.65}" text-anchor="middle" fill="{fg}">{v:.1f}</text>')
    for g in range(cols):
        out.append(f'<text x="{left + g * cw + cw / 2}" y="{top + rows * ch + 16}" text-anchor="middle">h{g}</text>')
    out.append(f'<text x="{left}" y="{top + rows * ch + 34}">KV head; colour scale {lo:.0f}x (white) to {hi:.0f}x</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--pictures", default="docs/results")
    ap.add_argument("--notes", default="")
    a = ap.parse_args()
    run = open_run(a.run)
    ev = lambda name: load_json(f"{run}/eval/{name}.json") if os.path.exists(f"{run}/eval/{name}.json") else None
    ratios = sorted(int(m.group(1)) for p in glob.glob(f"{run}/eval/dmc*x.json")
                    if (m := re.search(r"dmc(\d+)x\.json$", p)))
    os.makedirs(a.pictures, exist_ok=True)
    pic_rel = os.path.relpath(a.pictures, os.path.dirname(os.path.abspath(a.out)) or ".")
    md = []
    machine = open(f"{run}/machine.txt").read().strip().splitlines() if os.path.exists(f"{run}/machine.txt") else []
    meta = load_json(f"{run}/data/meta.json") if os.path.exists(f"{run}/data/meta.json") else {}
    md.append("# Small-scale DMC replication\n")
    md.append("Llama 2 weights cannot be had here, so this is a small replication: a 60M-parameter Llama with the Llama 2 "
              "tokenizer, pretrained by dmc on ~35M tokens of public-domain and permissive English, then retrofitted. "
              "The numbers say how the pieces behave together at this scale, not what DMC does to Llama 2 7B.\n")
    md.append("Reproduce (one GPU, ~20 minutes on an H200): `scripts/build.sh && DMC_BUILD=build scripts/replicate.sh` "
              "(defaults BASE_STEPS=1500 CONT_STEPS=500 RATIOS='2 4 8', the run below; needs ../shared or `CORPORA=` "
              "and `TOKENIZER=`), then `python3 scripts/replication_report.py runs/replication/replication.tar.gz "
              "--notes docs/results/notes.md`. The run below was made on the device tool's H200 with "
              "`BASE_STEPS=1500 CONT_STEPS=500 RUN=runs/replication scripts/replicate.sh` (in the background of a "
              "warm machine, `setsid`), the probe before it with `BASE_STEPS=150 CONT_STEPS=200 RATIOS=8 "
              "PHASES='base dmc' RUN=runs/probe`.\n")
    if machine:  # date, card, (commit of the machine's checkout), sizes
        md.append("Run: " + "; ".join(l for l in machine if not re.fullmatch(r"[0-9a-f]{40}", l)) + "\n")
    # ---- recipe
    base_cfg = open(f"{run}/base/config.yaml").read() if os.path.exists(f"{run}/base/config.yaml") else ""
    def cfg(key, text=base_cfg):
        m = re.search(rf"^{key}:\s*(\S+)", text, re.M)
        return m.group(1) if m else "?"
    base_metrics = [r for r in jsonl(f"{run}/base/metrics.jsonl") if "loss" in r]
    md.append("## Recipe\n")
    if meta:
        sp = meta["splits"]
        md.append(f"- Data: {len(meta.get('sources', []))} corpora, `dmc data prepare` with the Llama 2 tokenizer "
                  f"(fingerprint {meta.get('tokenizer_fingerprint')}): train {sp['train']['tokens']:,} tokens in "
                  f"{sp['train']['documents']:,} documents, validation {sp['valid']['tokens']:,} tokens in "
                  f"{sp['valid']['documents']:,} documents (2% of the documents, chosen by seed, never trained on).")
    if base_metrics:
        last = base_metrics[-1]
        tps = sorted(r["tokens_per_s"] for r in base_metrics[len(base_metrics) // 4:])
        md.append(f"- Base model: {cfg('num_hidden_layers')} layers, hidden {cfg('hidden_size')}, "
                  f"{cfg('num_attention_heads')} heads (MHA), FFN {cfg('intermediate_size')}, context {cfg('seq_len')}; "
                  f"{last['step']} steps of {cfg('global_batch')} x {cfg('seq_len')} tokens = {last['tokens_seen'] / 1e6:.0f}M "
                  f"tokens, AdamW lr {cfg('lr')} cosine to {cfg('min_lr')}, warmup {cfg('warmup_steps')}; "
                  f"{tps[len(tps) // 2]:,.0f} tokens/s (median).")
    cont = {}
    for name in ["vanilla"] + [f"dmc{r}x-{s}" for r in ratios[:1] for s in ("1-zero_out", "2-retrofit", "3-finetune")]:
        rows = [r for r in jsonl(f"{run}/{name}/metrics.jsonl") if "loss" in r]
        if rows:
            cont[name] = rows
    if "vanilla" in cont:
        steps = cont["vanilla"][-1]["step"]
        toks = cont["vanilla"][-1]["tokens_seen"]
        md.append(f"- Continued training, the same budget for every model: {steps} steps = {toks / 1e6:.1f}M tokens "
                  f"(configs/replication/continue.yaml). Vanilla control: cosine from 5e-4 to 5e-5. DMC: zero_out / "
                  f"retrofit / finetune in the reference recipe's proportions 250 : 6000 : 2000 (3% / 73% / 24%), lr "
                  f"5e-4 constant in stages 1-2 and cosine to 5e-5 in stage 3, target ramp 1 -> CR over stage 2 "
                  f"(configs/replication/dmc.yaml).")
    md.append("")
    # ---- main table
    md.append("## Perplexity and achieved compression\n")
    md.append("Validation perplexity over the whole validation split (windows of 1024, parallel forward; DMC models in "
              "eval mode with hard decisions). Subset: the first tokens of the validation split scored both in "
              "parallel and token by token through the paged-cache engine (`--mode incremental`).\n")
    md.append("| model | target CR | achieved CR (valid) | valid ppl | vs control | subset ppl parallel | subset ppl incremental | rel. diff | subset CR parallel / incremental |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    ctrl = ev("vanilla")
    names = [("base", "base (no continued training)"), ("vanilla", "vanilla control")] + [(f"dmc{r}x", f"DMC {r}x") for r in ratios]
    for key, label in names:
        full, sp, si = ev(key), ev(f"{key}-subset-parallel"), ev(f"{key}-subset-incremental")
        if not full:
            continue
        tgt = full.get("dmc_target_cr", 1)
        ach = full.get("dmc_cr", 1.0)
        rel = abs(sp["ppl"] - si["ppl"]) / sp["ppl"] if sp and si else float("nan")
        vs = f"{(full['ppl'] / ctrl['ppl'] - 1) * 100:+.1f}%" if ctrl else "-"
        md.append(f"| {label} | {tgt:g} | {ach:.2f} | {full['ppl']:.2f} | {vs} | {sp['ppl']:.3f} | {si['ppl']:.3f} | "
                  f"{rel:.1e} | {sp.get('dmc_cr', 1.0):.2f} / {si.get('cr', 1.0):.2f} |")
    subset_tokens = ev("base-subset-parallel")["tokens_scored"] if ev("base-subset-parallel") else 0
    md.append("")
    # ---- baselines
    md.append("## Training-free baselines at the same cache budget\n")
    md.append(f"Token by token through the engine, the first {subset_tokens:,} validation tokens (windows of 1024), a "
              "budget of ceil(1024 / CR) slots per (layer, head): TOVA, H2O (half recent, half heavy hitters) and a "
              "sliding window with 4 attention sinks, applied to the vanilla control (the same continued training as "
              "DMC, so the comparison isolates the cache) and to the base model. DMC: the retrofitted model on the "
              "same tokens.\n")
    for src, label in (("vanilla", "vanilla control"), ("base", "base model")):
        md.append(f"On the {label}:\n")
        md.append(f"| CR | DMC (retrofitted) | TOVA | H2O | window + sinks | {label}, full cache |")
        md.append("|---|---|---|---|---|---|")
        full_sub = ev(f"{src}-subset-incremental")
        for r in ratios:
            cells = []
            d = ev(f"dmc{r}x-subset-incremental")
            cells.append(f"{d['ppl']:.2f} (CR {d.get('cr', 1):.2f})" if d else "-")
            for pol in ("tova", "h2o", "window"):
                b = ev(f"{src}-{pol}-{r}x")
                cells.append(f"{b['ppl']:.2f}" if b else "-")
            cells.append(f"{full_sub['ppl']:.2f}" if full_sub else "-")
            md.append(f"| {r} | " + " | ".join(cells) + " |")
        md.append("")
    md.append("")
    # ---- heatmaps
    md.append("## Achieved ratio per layer and KV head\n")
    md.append("From the validation eval (parallel, hard decisions): tokens / KV slots of each (layer, head).\n")
    for r in ratios:
        full = ev(f"dmc{r}x")
        if not full or "dmc_cr_per_head" not in full:
            continue
        vals = full["dmc_cr_per_head"]
        hi = max(max(row) for row in vals)
        svg = heatmap_svg(f"DMC {r}x: achieved compression ratio (overall {full['dmc_cr']:.2f})", vals, 1.0,
                          max(2.0, math.ceil(hi)))
        with open(f"{a.pictures}/heatmap-dmc{r}x.svg", "w") as f:
            f.write(svg)
        md.append(f"![DMC {r}x heatmap]({pic_rel}/heatmap-dmc{r}x.svg)\n")
    for r in ratios:
        for pic in ("ratio", "loss"):
            src = f"{run}/report-dmc{r}x/{pic}.svg"
            if os.path.exists(src):
                shutil.copy(src, f"{a.pictures}/{pic}-dmc{r}x.svg")
    if ratios:
        md.append("Training curves of the three stages (`dmc report`): " + ", ".join(
            f"[{r}x ratio]({pic_rel}/ratio-dmc{r}x.svg) / [loss]({pic_rel}/loss-dmc{r}x.svg)" for r in ratios) + ".\n")
    # ---- throughput
    bench = bench_rows(run)
    if bench:
        van = next((b for b in bench if b["policy"] == "vanilla"), None)
        md.append("## Decode throughput at equal memory\n")
        b0 = bench[0]
        md.append(f"`dmc bench decode`, prompts of {b0['prompt_len']} validation tokens + {b0['new_tokens']} generated, "
                  f"the same cache memory for every model ({b0['memory_budget_bytes'] / 2**30:.1f} GiB: pages + DMC "
                  f"state), the largest batch that fits (DMC: sized by calibration on full-context prompts, "
                  f"then real prefills), {b0['timed_steps']} timed steps, {b0['dtype']}, {b0['device']}.\n")
        md.append("| model | batch | ms/step | tokens/s | vs vanilla | achieved CR | KV bytes | step / HBM floor |")
        md.append("|---|---|---|---|---|---|---|---|")
        for b in bench:
            label = f"vanilla ({b['name']})" if b["policy"] == "vanilla" else f"DMC ({b['name']})"
            sp = f"{b['tokens_per_s'] / van['tokens_per_s']:.2f}x" if van else "-"
            md.append(f"| {label} | {b['batch']} | {b['ms_per_step']:.2f} | {b['tokens_per_s']:,.0f} | {sp} | "
                      f"{b['achieved_cr']:.2f} | {b['kv_bytes'] / 2**30:.2f} GiB | {b['step_over_floor']:.2f} |")
        md.append("")
    if a.notes and os.path.exists(a.notes):
        md.append(open(a.notes).read().rstrip() + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {a.out} and {a.pictures}/")


if __name__ == "__main__":
    sys.exit(main())
