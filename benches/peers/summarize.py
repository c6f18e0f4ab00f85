#!/usr/bin/env python3
"""Markdown table of kiln vs numpy GEMM throughput from the JSON lines of
examples/gemm_gflops.rs and matmul_numpy.py (files as arguments, or stdin).

Each (impl, shape, layout) may appear once per round; the table shows the median GFLOP/s
over rounds, the number of rounds, and the ratio kiln/numpy (> 1: kiln is faster).
Lines that are not JSON objects are ignored. Standard library only.
"""

import json
import statistics
import sys


def read(lines):
    runs = {}  # (shape, layout) -> impl -> [gflops, ...]
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
            key = (r["shape"], r["layout"])
            runs.setdefault(key, {}).setdefault(r["impl"], []).append(float(r["gflops"]))
        except (ValueError, KeyError, TypeError):
            continue
    return runs


def fmt(v):
    return "-" if v is None else f"{v:.1f}"


def table(runs):
    out = [
        "| shape (MxKxN) | layout | kiln GFLOP/s | numpy GFLOP/s | kiln/numpy | rounds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (shape, layout), by_impl in runs.items():
        kiln = statistics.median(by_impl["kiln"]) if "kiln" in by_impl else None
        numpy = statistics.median(by_impl["numpy"]) if "numpy" in by_impl else None
        ratio = f"{kiln / numpy:.2f}" if kiln is not None and numpy else "-"
        rounds = "/".join(str(len(by_impl.get(i, []))) for i in ("kiln", "numpy"))
        out.append(f"| {shape} | {layout} | {fmt(kiln)} | {fmt(numpy)} | {ratio} | {rounds} |")
    return "\n".join(out)


def main(paths):
    if paths:
        lines = []
        for p in paths:
            with open(p, encoding="utf-8") as f:
                lines.extend(f)
    else:
        lines = sys.stdin
    print(table(read(lines)))


if __name__ == "__main__":
    main(sys.argv[1:])
