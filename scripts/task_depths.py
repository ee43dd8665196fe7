#!/usr/bin/env python3
"""Accuracy by needle depth (fifths of the haystack) from `dmc eval tasks` reports: where in the context a cache
policy or a retrofitted model loses its needles (docs/results.md, the SmolLM2 retrofit).

  python3 scripts/task_depths.py LABEL=REPORT.json[.xz]:RUN ... [--tasks passkey,niah_single_2] [--lengths 4096,8192]

RUN is a run name inside the report (vanilla, window@4, dmc, ...). Prints a markdown table: one row per (task,
length, label), the accuracy % in each fifth of depth (0 = the needle at the start of the haystack)."""
import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replication_report import load_json  # noqa: E402


def by_depth(report, run, task, length, bins=5):
    acc = collections.defaultdict(list)
    for s in report["samples"]:
        if s["task"] != task or s["length"] != length or run not in s["outputs"] or s.get("depth") is None:
            continue
        acc[min(int(s["depth"] * bins), bins - 1)].append(s["outputs"][run]["score"])
    return [100.0 * sum(acc[b]) / len(acc[b]) if acc[b] else None for b in range(bins)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=REPORT:RUN")
    p.add_argument("--tasks", default="passkey,niah_single_1,niah_single_2,niah_multikey_1")
    p.add_argument("--lengths", default="4096,8192")
    a = p.parse_args()
    series = []
    for spec in a.runs:
        label, rest = spec.split("=", 1) if "=" in spec else (spec, spec)
        path, run = rest.rsplit(":", 1)
        report = load_json(path)
        if not any(run in s["outputs"] for s in report["samples"]):
            sys.exit(f"{path}: no run named '{run}' (runs: {', '.join(r['name'] for r in report['runs'])})")
        series.append((label, report, run))
    print("| task | length | model / cache | 0-20% | 20-40% | 40-60% | 60-80% | 80-100% |")
    print("|---|---|---|---|---|---|---|---|")
    for task in a.tasks.split(","):
        for length in (int(x) for x in a.lengths.split(",")):
            for label, report, run in series:
                cells = by_depth(report, run, task, length)
                print(f"| {task} | {length} | {label} | " + " | ".join("-" if c is None else f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
