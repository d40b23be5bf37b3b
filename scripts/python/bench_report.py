#!/usr/bin/python3
"""Writes the Markdown report of scripts/bench-cpu from the JSON files of one or more runs.

    /usr/bin/python3 scripts/python/bench_report.py OUT_DIR RUN_DIR [RUN_DIR ...] > OUT_DIR/report.md

With several runs every figure is the best over the runs (shortest time, highest rate): on a
machine shared with other jobs, interference only ever slows a run down.
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


def best_by(items, key, value):
    """The item with the smallest value(item) for each key(item), in first-seen key order."""
    out = {}
    for it in items:
        k = key(it)
        if k not in out or value(it) < value(out[k]):
            out[k] = it
    return out


def main():
    out, runs = sys.argv[1], sys.argv[2:]
    lscpu = open(os.path.join(out, "lscpu.txt")).read()
    model = re.search(r"Model name:\s*(.*)", lscpu)
    cpus = re.search(r"^CPU\(s\):\s*(.*)", lscpu, re.M)
    flags = re.search(r"Flags:\s*(.*)", lscpu)
    isa = [f for f in ("avx2", "fma", "avx512f") if flags and f in flags.group(1).split()]
    print("# cpu backend benchmark report\n")
    print(f"Machine: {model.group(1) if model else '?'}, {cpus.group(1) if cpus else '?'} CPUs, "
          f"ISA extensions: {', '.join(isa) or 'none of avx2/fma/avx512f'}.\n")
    print(f"{len(runs)} run(s); " + ("every figure is the best over the runs." if len(runs) > 1 else "") + "\n")
    for i, r in enumerate(runs, 1):
        before = open(os.path.join(r, "load_before.txt")).read().strip()
        after = open(os.path.join(r, "load_after.txt")).read().strip()
        print(f"- run {i}: load before `{before}`, after `{after}`")
    print()

    ceil_rows = [b for r in runs for b in load(os.path.join(r, "gemm.json"))["benchmarks"]]
    gemm = best_by([b for b in ceil_rows if "FLOPS" in b], lambda b: b["name"], lambda b: -b["FLOPS"])
    reads = best_by([b for b in ceil_rows if b["name"].startswith("BM_read")], lambda b: b["name"],
                    lambda b: -b["bytes_per_second"])
    print("## GEMM ceiling (one thread)\n")
    print("| benchmark | time | GFLOP/s |")
    print("|---|---:|---:|")
    ceiling = 0.0
    for name, b in gemm.items():
        g = b["FLOPS"] * 1e-9
        if name.startswith("BM_openblas_gemm<float>"):
            ceiling = max(ceiling, g)
        print(f"| {name.replace('/real_time', '')} | {b['real_time']:.2f} {b['time_unit']} | {g:.1f} |")
    print(f"\nSGEMM ceiling (best OpenBLAS float rate above): **{ceiling:.1f} GFLOP/s**\n")
    if reads:
        print("## Read bandwidth (one thread, sum of a float buffer)\n")
        print("| buffer | time | GB/s |")
        print("|---|---:|---:|")
        for name, b in reads.items():
            print(f"| {name.replace('BM_read/', '').replace('/real_time', '')} | {b['real_time']:.1f} "
                  f"{b['time_unit']} | {b['bytes_per_second'] * 1e-9:.1f} |")
        print()

    layer = best_by([b for r in runs for b in load(os.path.join(r, "layer.json"))["benchmarks"]],
                    lambda b: b["name"], lambda b: b["real_time"])
    print("## Google Benchmark suite (float, essential FLOPs)\n")
    print("| benchmark | time | GFLOP/s | of SGEMM ceiling | GB/s |")
    print("|---|---:|---:|---:|---:|")
    for name, b in layer.items():
        g = b["FLOPS"] * 1e-9
        print(f"| {name.replace('/real_time', '')} | {b['real_time']:.2f} {b['time_unit']} | {g:.2f} | "
              f"{100 * g / ceiling:.0f}% | {b['bytes_per_second'] * 1e-9:.2f} |")

    rows = [json.loads(l) for r in runs for l in open(os.path.join(r, "threads.jsonl")) if l.strip()]
    by = best_by(rows, lambda r: ("fwd+bwd" if r["backward"] else "fwd", r["threads"]), lambda r: r["median_s"])
    print("\n## Threads (radargate bench, T=256 N=40 d_in=d=4096 r=k=8 P=2048, median of 7 calls)\n")
    print("| pass | threads | median | GFLOP/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for (p, t), r in sorted(by.items()):
        print(f"| {p} | {t} | {fmt_time(r['median_s'])} | {r['gflops']:.2f} | {r['peak_rss_mb']:.1f} |")
    for p in ("fwd", "fwd+bwd"):
        if (p, 1) in by and (p, 2) in by:
            print(f"\n{p}: 2 threads are {by[(p, 1)]['median_s'] / by[(p, 2)]['median_s']:.2f}x faster than 1.")

    route_files = [os.path.join(r, "gemm_route.jsonl") for r in runs]
    route_rows = [json.loads(l) for f in route_files if os.path.exists(f) for l in open(f) if l.strip()]
    if route_rows:
        rb = best_by(route_rows, lambda r: (r["tokens"], r["backward"], r["gemm"]), lambda r: r["median_s"])
        print("\n## GEMM route (radargate bench, 1 thread, the two builds alternating)\n")
        print("The matrix products through OpenBLAS (`-DRADARGATE_USE_BLAS=ON`, every other figure of this "
              "report) and through Eigen's own GEMM (the default build).\n")
        print("| T | pass | OpenBLAS route | Eigen route | Eigen / OpenBLAS | OpenBLAS route of SGEMM | "
              "Eigen route of SGEMM |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for t, bwd in sorted({(k[0], k[1]) for k in rb}, key=lambda k: (-k[0], k[1])):
            b, e = rb.get((t, bwd, "blas")), rb.get((t, bwd, "eigen"))
            if not b or not e:
                continue
            print(f"| {t} | {'fwd+bwd' if bwd else 'fwd'} | {fmt_time(b['median_s'])} | {fmt_time(e['median_s'])} | "
                  f"{e['median_s'] / b['median_s']:.2f}x | {100 * b['gflops'] / ceiling:.0f}% | "
                  f"{100 * e['gflops'] / ceiling:.0f}% |")

    peers = [load(os.path.join(r, "peer.json")) for r in runs]
    prow = [row for pj in peers for row in pj["rows"]]
    key = lambda row: (row["tokens"], row["backward"])  # noqa: E731
    best_rg = best_by(prow, key, lambda row: row["radargate"]["median_s"])
    best_pt = best_by(prow, key, lambda row: row["torch"]["median_s"])
    print("\n## Eager PyTorch peer (one thread each"
          f"{', glibc malloc tuned for PyTorch' if peers[0]['malloc_tuning'] else ''}; "
          f"torch {prow[0]['torch']['torch']})\n")
    print("| T | pass | radargate | torch | speedup | radargate peak MB | torch peak MB | memory ratio | "
          "ratio above base | radargate GFLOP/s | of SGEMM |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for k in best_rg:
        rg, pt = best_rg[k]["radargate"], best_pt[k]["torch"]
        speed = pt["median_s"] / rg["median_s"]
        mem = pt["peak_rss_mb"] / rg["peak_rss_mb"]
        work = (pt["peak_rss_mb"] - pt["base_rss_mb"]) / max(rg["peak_rss_mb"] - rg["base_rss_mb"], 1e-3)
        summary[k] = (rg, pt, speed, mem)
        print(f"| {k[0]} | {'fwd+bwd' if k[1] else 'fwd'} | {fmt_time(rg['median_s'])} | {fmt_time(pt['median_s'])} | "
              f"{speed:.1f}x | {rg['peak_rss_mb']:.1f} | {pt['peak_rss_mb']:.1f} | {mem:.1f}x | {work:.0f}x | "
              f"{rg['gflops']:.2f} | {100 * rg['gflops'] / ceiling:.0f}% |")

    print("\n## Targets\n")

    def line(name, ok, detail):
        print(f"- {name}: **{'met' if ok else 'missed'}** ({detail})")

    for bwd, label, need in ((False, "forward", 10), (True, "forward + backward", 8)):
        if (256, bwd) not in summary:
            continue
        rg, pt, speed, mem = summary[(256, bwd)]
        line(f"{label} >= {need}x faster than eager PyTorch (T=256)", speed >= need, f"{speed:.1f}x")
        line(f"peak memory <= 1/10 of PyTorch's ({label})", mem >= 10, f"{mem:.1f}x less")
        frac = rg["gflops"] / ceiling
        line(f">= 40% of the single-core SGEMM rate ({label})", frac >= 0.4,
             f"{100 * frac:.0f}% = {rg['gflops']:.1f} of {ceiling:.1f} GFLOP/s")
    if (1, False) in summary:
        rg, pt, speed, _ = summary[(1, False)]
        line("T=1 decode >= 20x lower latency", speed >= 20,
             f"{speed:.1f}x: {fmt_time(rg['median_s'])} vs {fmt_time(pt['median_s'])}")
    for p in ("fwd", "fwd+bwd"):
        if (p, 1) in by and (p, 2) in by:
            s = by[(p, 1)]["median_s"] / by[(p, 2)]["median_s"]
            line(f"2 threads >= 1.7x faster than 1 ({p}, T=256)", s >= 1.7, f"{s:.2f}x")


if __name__ == "__main__":
    main()
