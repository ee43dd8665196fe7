#!/usr/bin/env python3
"""The SmolLM2 retrofit's tables for docs/results.md from scripts/smollm2_retrofit.sh runs: run directories, or
archives of them (scripts/gpu_retrofit.sh's run.tgz, the pack's smollm2.tar.gz). Runs from several leases on the
same data (the split is deterministic) merge by model name, the first given winning a clash. Every DMC model is
judged against the control of its ratio (controlNx: the vanilla run's checkpoint at that run's step count) and the
baselines applied to that control, with issue #17's targets. Standard library only.

  python3 scripts/smollm2_report.py RUN[@SUFFIX] [RUN[@SUFFIX] ...] [--out FILE.md] [--pictures DIR]
      [--target-lengths 4096,8192]
      @SUFFIX   appended to that run's DMC / distilled model names (a variant run without a TAG)
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replication_report import bench_rows, heatmap_svg, jsonl, load_json, open_run  # noqa: E402

NAME = re.compile(r"^(control|dmc|distill|zeroout)(\d+)x(.*)$")  # zeroout: a DMC run right after stage 1
PPL_TARGET = {2: 1.5, 4: 4.0, 8: 10.0}  # % over the control


def ratio_of(name):
    m = NAME.match(name)
    return int(m.group(2)) if m else 0


def task_mean(acc, length):
    vals = [v[length] for t, v in acc.items() if t != "vt" and length in v]
    return sum(vals) / len(vals) if vals else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="-")
    ap.add_argument("--pictures", default="")
    ap.add_argument("--target-lengths", default="4096,8192", help="the lengths the accuracy targets are judged at")
    a = ap.parse_args()
    runs = []
    for p in a.runs:
        path, _, suffix = p.partition("@") if not os.path.exists(p) else (p, "", "")
        runs.append((open_run(path), suffix))

    def named(n, suffix):  # a variant's DMC models carry its suffix
        m = NAME.match(n)
        return n.replace(m.group(0), m.group(0) + suffix, 1) if suffix and m and m.group(1) != "control" else n
    evals, tasks, training, bench, needles = {}, {}, [], [], {}
    for r, suffix in runs:
        for f in sorted(glob.glob(os.path.join(r, "eval", "*.json"))):
            base = os.path.basename(f)[:-5]
            stem = re.sub(r"-subset-(parallel|incremental)$", "", base)
            evals.setdefault(named(stem, suffix) + base[len(stem):], load_json(f))
        for f in sorted(glob.glob(os.path.join(r, "tasks", "*.json")) + glob.glob(os.path.join(r, "tasks", "*.json.xz"))):
            name = re.sub(r"\.json(\.xz)?$", "", os.path.basename(f))
            if NAME.match(name) and NAME.match(name).group(1) == "control" and "-" not in name:
                continue  # the merged control report: its parts are read one by one
            rep = load_json(f)
            if "needles" in rep:
                needles.setdefault(named(name, suffix), rep["needles"])
            for run in rep["runs"]:
                label = name.replace("-vanilla", "") if run["policy"] == "vanilla" else f"{name.split('-')[0]} + {run['name']}"
                if run["policy"] == "dmc":
                    label = name
                tasks.setdefault(named(label, suffix), run)
        for d in sorted(glob.glob(os.path.join(r, "*", "metrics.jsonl"))):
            rows = jsonl(d)
            run_name = os.path.basename(os.path.dirname(d))
            stage = re.match(r"^(.*?)(-\d-\w+)?$", run_name)
            run_name = named(stage.group(1), suffix) + (stage.group(2) or "")
            if any(t["run"] == run_name for t in training):
                continue
            steps = [x for x in rows if "tokens_per_s" in x]
            if not steps:
                continue
            tokens = steps[-1].get("tokens_seen", 0)
            tps = sum(x["tokens_per_s"] for x in steps) / len(steps)
            crs = [x["cr"] for x in steps if "cr" in x]
            pair = next((x["decision_pair"] for x in steps if "decision_pair" in x), None)
            training.append({"run": run_name, "step": steps[-1]["step"], "tokens": tokens, "seconds": tokens / tps,
                             "tps": tps, "cr": crs[-1] if crs else None,
                             "target": steps[-1].get("target_cr"), "pair": pair})
        bench += bench_rows(r)
    md = []
    # ---- training
    md.append("Training (tokens and seconds from each stage's metrics: seconds = tokens / mean tokens/s):\n")
    md.append("| run | last logged step | tokens | seconds | tokens/s | last training CR (target) |")
    md.append("|---|---|---|---|---|---|")
    for t in training:
        cr = f"{t['cr']:.2f} ({t['target']:.2f})" if t["cr"] is not None else "-"
        md.append(f"| {t['run']} | {t['step']} | {t['tokens'] / 1e6:.1f}M | {t['seconds']:.0f} | {t['tps'] / 1e3:.0f}k | {cr} |")
    md.append("")
    # stage 1's decision pair (dmc_decision_pair; the zero-out metrics carry it)
    for t in training:
        p = t["pair"]
        if not p:
            continue
        line = (f"{t['run']}: dim D-1 repurposed from rotary pair {p['pair']} (frequency index {p['frequency_index']}; "
                f"dmc_decision_pair {p['option']})")
        if "losses" in p:
            ls = p["losses"]
            line += (f"; calibration loss with each pair's partner zeroed: {min(ls):.4f} (chosen) to {max(ls):.4f}, "
                     f"{ls[-1]:.4f} for the last pair (the reference's), {p['loss_untouched']:.4f} untouched")
        md.append(line + "\n")
    # ---- perplexity
    models = sorted((n for n in evals if not n.endswith(("-subset-parallel", "-subset-incremental"))),
                    key=lambda n: (ratio_of(n), n))
    md.append("Perplexity on the validation split (parallel; the subset parallel against token by token):\n")
    md.append("| model | target CR | achieved CR | valid ppl | vs control | target | subset parallel | subset "
              "incremental | rel. diff |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for n in models:
        e, cr = evals[n], ratio_of(n)
        ctrl = evals.get(f"control{cr}x") if cr else None
        kind = NAME.match(n).group(1) if NAME.match(n) else n
        vs, target = "-", "-"
        if ctrl and kind != "control":
            d = (e["ppl"] / ctrl["ppl"] - 1) * 100
            vs = f"{d:+.1f}%"
            if cr in PPL_TARGET and kind in ("dmc", "distill"):
                ok = d <= PPL_TARGET[cr] and abs(e.get("dmc_cr", 1.0) / cr - 1) <= 0.05
                target = f"<= +{PPL_TARGET[cr]:g}%, CR +-5%: {'met' if ok else 'missed'}"
        sp, si = evals.get(n + "-subset-parallel"), evals.get(n + "-subset-incremental")
        sub = f"{sp['ppl']:.3f} | {si['ppl']:.3f} | {abs(sp['ppl'] - si['ppl']) / sp['ppl']:.1e}" if sp and si else "- | - | -"
        md.append(f"| {n} | {cr if kind in ('dmc', 'distill') else 1} | {e.get('dmc_cr', 1.0):.2f} | {e['ppl']:.2f} | "
                  f"{vs} | {target} | {sub} |")
    md.append("")
    # ---- tasks
    if tasks:
        lengths = sorted({L for r in tasks.values() for v in r["accuracy"].values() for L in v}, key=int)
        md.append("Long-context tasks: mean accuracy % of the retrieval tasks (vt apart) by length:\n")
        md.append("| model / cache | " + " | ".join(lengths) + " | achieved CR | seconds |")
        md.append("|---|" + "---|" * len(lengths) + "---|---|")
        order = sorted(tasks, key=lambda k: (ratio_of(k.split(" ")[0]), " + " in k, k))
        for k in order:
            r = tasks[k]
            cells = [task_mean(r["accuracy"], L) for L in lengths]
            md.append(f"| {k} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) +
                      f" | {r['achieved_cr']:.2f} | {r['seconds']:.0f} |")
        md.append("")
        md.append(f"Targets at {a.target_lengths} tokens: a DMC model at its ratio (achieved within 5%) keeps >= 90% of its control's "
                  "accuracy and is >= 10 points above each baseline at the same ratio (the last two columns: the "
                  "baselines run at the ratio the model reached, within 5%, i.e. the same cache memory):\n")
        md.append("| model | length | achieved CR | DMC | control | DMC / control | best baseline | margin | target | "
                  "best baseline at the achieved CR | margin there |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for k in order:
            m = NAME.match(k)
            if not m or m.group(1) not in ("dmc", "distill"):
                continue
            cr = int(m.group(2))
            ctrl = tasks.get(f"control{cr}x")
            for L in a.target_lengths.split(","):
                d = task_mean(tasks[k]["accuracy"], L)
                c = task_mean(ctrl["accuracy"], L) if ctrl else None
                ach = tasks[k]["achieved_cr"]
                # baselines on this budget's control, by the ratio their name carries ("control4x + window@2.67")
                at_ratio = {}
                for n, v in tasks.items():
                    bm = re.match(rf"^control{cr}x \+ \w+@([\d.]+)$", n)
                    if bm and task_mean(v["accuracy"], L) is not None:
                        at_ratio.setdefault(float(bm.group(1)), []).append((task_mean(v["accuracy"], L), n))
                base = at_ratio.get(float(cr), [])
                best = max(base) if base else None
                near = [b for x, bs in at_ratio.items() if x != cr and abs(x / ach - 1) <= 0.05 for b in bs]
                best_ach = max(near) if near else None
                if d is None:
                    continue
                frac = d / c if c else float("nan")
                margin = d - best[0] if best else float("nan")
                ok = c is not None and best is not None and frac >= 0.9 and margin >= 10 and abs(ach / cr - 1) <= 0.05
                cs = "-" if c is None else f"{c:.1f}"
                bs = "-" if best is None else "%.1f (%s)" % (best[0], best[1].split(" + ")[1])
                verdict = "met" if ok else "missed" if c is not None and best is not None else "incomplete"
                ba = "-" if best_ach is None else "%.1f (%s)" % (best_ach[0], best_ach[1].split(" + ")[1])
                ma = "-" if best_ach is None else f"{d - best_ach[0]:+.1f}"
                fs = "-" if c is None or not c else f"{frac * 100:.0f}%"
                mg = "-" if best is None else f"{margin:+.1f}"
                md.append(f"| {k} | {L} | {ach:.2f} | {d:.1f} | {cs} | {fs} | {bs} | {mg} | {verdict} | {ba} | {ma} |")
        md.append("")
    # ---- the decisions at the needles (dmc eval tasks --needles)
    if needles:
        md.append("Decisions at the needles (the task prompts, parallel forward): needle values kept in slots of their "
                  "own, % (mean over KV heads), and prompt tokens merged, %, by thirds of the layers:\n")
        md.append("| model | occurrences | isolated: first / middle / last third | merged: first / middle / last third |")
        md.append("|---|---|---|---|")
        for n, v in sorted(needles.items()):
            def thirds(m):
                rows = [sum(r) / len(r) * 100 for r in m]
                k = len(rows)
                parts = [rows[: k // 3], rows[k // 3: 2 * k // 3], rows[2 * k // 3:]]
                return " / ".join(f"{sum(p) / len(p):.0f}" if p else "-" for p in parts)
            md.append(f"| {n} | {v['occurrences']} | {thirds(v['isolated'])} | {thirds(v['merge_rate'])} |")
        md.append("")
    # ---- heatmaps
    pics = []
    for n in models:
        e = evals[n]
        if a.pictures and e.get("dmc_cr_per_head"):
            os.makedirs(a.pictures, exist_ok=True)
            vals = e["dmc_cr_per_head"]
            hi = max(max(row) for row in vals)
            path = os.path.join(a.pictures, f"heatmap-{n}.svg")
            with open(path + ".tmp", "w") as f:
                f.write(heatmap_svg(f"{n}: achieved ratio per layer and KV head (validation)", vals, 1.0, max(hi, 1.01)))
            os.replace(path + ".tmp", path)
            pics.append(f"[{n}]({os.path.relpath(path, os.path.dirname(os.path.abspath(a.out))) if a.out != '-' else path})")
    if pics:
        md.append("Achieved ratio per layer and KV head: " + ", ".join(pics) + "\n")
    # the same summarised: the cache is set by the heads that keep everything (the overall ratio is a harmonic mean)
    per_head = [(n, evals[n]["dmc_cr_per_head"]) for n in models if evals[n].get("dmc_cr_per_head")]
    if per_head:
        md.append("Achieved ratio per KV head, summarised (hard decisions over the validation split; thirds of the "
                  "layers as harmonic means):\n")
        md.append("| model | heads at <= 1.05 | heads at >= 20 | median head | largest | CR by third of the layers | "
                  "overall |")
        md.append("|---|---|---|---|---|---|---|")
        def harmonic(xs):
            return len(xs) / sum(1.0 / x for x in xs)
        for n, vals in per_head:
            flat = [x for row in vals for x in row]
            k = len(vals)
            thirds = [[x for row in vals[i * k // 3:(i + 1) * k // 3] for x in row] for i in range(3)]
            md.append(f"| {n} | {sum(x <= 1.05 for x in flat)} of {len(flat)} | {sum(x >= 20 for x in flat)} | "
                      f"{statistics.median(flat):.2f} | {max(flat):.0f} | " +
                      " / ".join(f"{harmonic(t):.2f}" if t else "-" for t in thirds) + f" | {harmonic(flat):.2f} |")
        md.append("")
    # ---- decode
    if bench:
        md.append("Decode at equal cache memory, largest batch (`dmc bench decode`, real prefills):\n")
        md.append("| model | policy | batch | ms/step | tokens/s | vs control | achieved CR | step / HBM floor |")
        md.append("|---|---|---|---|---|---|---|---|")
        controls = {b["name"]: b for b in bench if b["policy"] == "vanilla"}
        for b in bench:
            # each DMC model against the control of its ratio (dmc4x-lr500 -> control4x), else against any control
            m = re.match(r"[a-z]+(\d+x)", b["name"])
            ctl = controls.get(f"control{m.group(1)}" if m else "") or next(iter(controls.values()), None)
            vs = f"{b['tokens_per_s'] / ctl['tokens_per_s']:.2f}x ({ctl['name']})" if ctl and ctl is not b else "-"
            md.append(f"| {b['name']} | {b['policy']} | {b['batch']} | {b['ms_per_step']:.2f} | {b['tokens_per_s']:.0f} | "
                      f"{vs} | {b['achieved_cr']:.2f} | {b['step_over_floor']:.2f} |")
        md.append("")
    text = "\n".join(md) + "\n"
    if a.out == "-":
        sys.stdout.write(text)
    else:
        with open(a.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
