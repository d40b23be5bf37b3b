#!/usr/bin/python3
"""Writes the Markdown report of scripts/bench-cpu from the JSON files in its output folder.

    /usr/bin/python3 scripts/python/bench_report.py OUT_DIR > OUT_DIR/report.md
"""

import json
import os
import re
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def fmt_time(s):
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"


def main():
    out = sys.argv[1]
    lscpu = open(os.path.join(out, "lscpu.txt")).read()
    model = re.search(r"Model name:\s*(.*)", lscpu)
    cpus = re.search(r"^CPU\(s\):\s*(.*)", lscpu, re.M)
    flags = re.search(r"Flags:\s*(.*)", lscpu)
    isa = [f for f in ("avx2", "fma", "avx512f") if flags and f in flags.group(1).split()]
    print("# cpu backend benchmark report\n")
    print(f"Machine: {model.group(1) if model else '?'}, {cpus.group(1) if cpus else '?'} CPUs, "
          f"ISA extensions: {', '.join(isa) or 'none of avx2/fma/avx512f'}.  ")
    print(f"Load before: `{open(os.path.join(out, 'load_before.txt')).read().strip()}`  ")
    print(f"Load after: `{open(os.path.join(out, 'load_after.txt')).read().strip()}`\n")

    gemm = load(os.path.join(out, "gemm.json"))
    print("## GEMM ceiling (one thread)\n")
    print("| benchmark | time | GFLOP/s |")
    print("|---|---:|---:|")
    ceiling = 0.0
    for b in gemm["benchmarks"]:
        g = b["FLOPS"] * 1e-9
        if b["name"].startswith("BM_openblas_gemm<float>"):
            ceiling = max(ceiling, g)
        print(f"| {b['name']} | {b['real_time']:.2f} {b['time_unit']} | {g:.1f} |")
    print(f"\nSGEMM ceiling (best OpenBLAS float rate above): **{ceiling:.1f} GFLOP/s**\n")

    layer = load(os.path.join(out, "layer.json"))
    print("## Google Benchmark suite (float, essential FLOPs)\n")
    print("| benchmark | time | GFLOP/s | of SGEMM ceiling | GB/s |")
    print("|---|---:|---:|---:|---:|")
    for b in layer["benchmarks"]:
        g = b["FLOPS"] * 1e-9
        name = b["name"].replace("/real_time", "")
        print(f"| {name} | {b['real_time']:.2f} {b['time_unit']} | {g:.2f} | {100 * g / ceiling:.0f}% | "
              f"{b['bytes_per_second'] * 1e-9:.2f} |")

    rows = [json.loads(l) for l in open(os.path.join(out, "threads.jsonl")) if l.strip()]
    print("\n## Threads (radargate bench, T=256 N=40 d_in=d=4096 r=k=8 P=2048)\n")
    print("| pass | threads | median | GFLOP/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    by = {}
    for r in rows:
        p = "fwd+bwd" if r["backward"] else "fwd"
        by[(p, r["threads"])] = r
        print(f"| {p} | {r['threads']} | {fmt_time(r['median_s'])} | {r['gflops']:.2f} | {r['peak_rss_mb']:.1f} |")
    for p in ("fwd", "fwd+bwd"):
        if (p, 1) in by and (p, 2) in by:
            print(f"\n{p}: 2 threads are {by[(p, 1)]['median_s'] / by[(p, 2)]['median_s']:.2f}x faster than 1.")

    peer = load(os.path.join(out, "peer.json"))
    print("\n## Eager PyTorch peer (one thread each"
          f"{', glibc malloc tuned for PyTorch' if peer['malloc_tuning'] else ''})\n")
    print("| T | pass | radargate | torch | speedup | radargate peak MB | torch peak MB | memory ratio | "
          "ratio above base | radargate GFLOP/s | of SGEMM |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in peer["rows"]:
        rg, pt = r["radargate"], r["torch"]
        print(f"| {r['tokens']} | {'fwd+bwd' if r['backward'] else 'fwd'} | {fmt_time(rg['median_s'])} | "
              f"{fmt_time(pt['median_s'])} | {r['speedup']:.1f}x | {rg['peak_rss_mb']:.1f} | {pt['peak_rss_mb']:.1f} | "
              f"{r['memory_ratio']:.1f}x | {r['working_memory_ratio']:.0f}x | {rg['gflops']:.2f} | "
              f"{100 * rg['gflops'] / ceiling:.0f}% |")

    print("\n## Targets\n")
    get = {(r["tokens"], r["backward"]): r for r in peer["rows"]}

    def line(name, ok, detail):
        print(f"- {name}: **{'met' if ok else 'missed'}** ({detail})")

    if (256, False) in get:
        r = get[(256, False)]
        line("forward >= 10x faster than eager PyTorch", r["speedup"] >= 10, f"{r['speedup']:.1f}x")
        line("peak memory <= 1/10 of PyTorch's (forward)", r["memory_ratio"] >= 10, f"{r['memory_ratio']:.1f}x less")
        frac = r["radargate"]["gflops"] / ceiling
        line(">= 40% of the single-core SGEMM rate (forward)", frac >= 0.4,
             f"{100 * frac:.0f}% = {r['radargate']['gflops']:.1f} of {ceiling:.1f} GFLOP/s")
    if (256, True) in get:
        r = get[(256, True)]
        line("forward + backward >= 8x faster", r["speedup"] >= 8, f"{r['speedup']:.1f}x")
        line("peak memory <= 1/10 of PyTorch's (forward + backward)", r["memory_ratio"] >= 10,
             f"{r['memory_ratio']:.1f}x less")
        frac = r["radargate"]["gflops"] / ceiling
        line(">= 40% of the single-core SGEMM rate (forward + backward)", frac >= 0.4,
             f"{100 * frac:.0f}% = {r['radargate']['gflops']:.1f} of {ceiling:.1f} GFLOP/s")
    if (1, False) in get:
        r = get[(1, False)]
        line("T=1 decode >= 20x lower latency", r["speedup"] >= 20,
             f"{r['speedup']:.1f}x: {fmt_time(r['radargate']['median_s'])} vs {fmt_time(r['torch']['median_s'])}")
    for p in ("fwd", "fwd+bwd"):
        if (p, 1) in by and (p, 2) in by:
            s = by[(p, 1)]["median_s"] / by[(p, 2)]["median_s"]
            line(f"2 threads >= 1.7x faster than 1 ({p}, T=256)", s >= 1.7, f"{s:.2f}x")


if __name__ == "__main__":
    main()
