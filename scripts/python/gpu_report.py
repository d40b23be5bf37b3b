#!/usr/bin/env python3
"""Writes the markdown report of scripts/gpu-check from the CUDA benchmark's and the PyTorch
benchmark's JSON (same run, same machine) and the GPU test log.

    gpu_report.py CUDA_JSON TORCH_JSON TEST_LOG [COMMAND]
"""
import json
import re
import sys


def main():
    cuda = json.load(open(sys.argv[1]))
    try:
        torch_ = json.load(open(sys.argv[2]))
    except (OSError, ValueError) as e:
        torch_ = {"cases": [], "error": str(e)}
    log = open(sys.argv[3]).read() if len(sys.argv) > 3 else ""
    command = sys.argv[4] if len(sys.argv) > 4 else "scripts/gpu-check"
    c = cuda["config"]
    bw, peak = cuda["bandwidth_Bps"], cuda["gemm_flops"]
    L = []
    L.append("# GPU check")
    L.append("")
    L.append(f"Command: `{command}`  ")
    L.append(f"Device: {cuda['device']} ({cuda['sms']} multiprocessors); PyTorch {torch_.get('torch', '?')} on "
             f"{torch_.get('device', '?')}, in the same run.  ")
    L.append(f"Ceilings measured in this run: device-to-device copy {bw / 1e9:.0f} GB/s (bytes read + written), "
             f"{c['dtype']} cuBLAS matrix product {peak / 1e12:.1f} TFLOP/s (8192^3).  ")
    L.append(f"Layer: variant `{c['variant']}`, {c['dtype']} storage, T={c['T']}, N={c['N']}, d_in={c['d_in']}, "
             f"d={c['d']}, r={c['r']}, k={c['k']}, P={c['P']}; backward = gradients of x and every parameter.")
    L.append("")
    m = re.search(r"(\d+) checks, (\d+) failures", log)
    skipped = "skipped: no GPU" in log
    if m:
        L.append(f"GPU tests (`ctest -L gpu`): {m.group(1)} checks, {m.group(2)} failures.")
    elif skipped:
        L.append("GPU tests: skipped (no GPU).")
    else:
        L.append("GPU tests: no summary found in the log (see gpu-tests.log).")
    L.append("")
    L.append("| case | radargate CUDA (ms) | roofline (ms) | of roofline | eager PyTorch (ms) | vs eager | "
             "best PyTorch (ms) | best path | vs best |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    tcases = {e["name"]: e for e in torch_.get("cases", [])}
    for e in cuda["cases"]:
        name = e["name"]
        roof = 1e3 * max(e["bytes"] / bw, e["flops"] / peak)
        kind = "forward+backward" if "backward" in name else "forward"
        T = name.split("T=")[1]
        peers = {k.split(" ")[0]: v["ms"] for k, v in tcases.items()
                 if "ms" in v and k.split(" ", 1)[1] == f"{kind} T={T}"}
        eager = peers.get("eager")
        es = f"{eager:.3f} | {eager / e['ms']:.1f}x" if eager else "- | -"
        if peers:
            which = min(peers, key=peers.get)
            bs = f"{peers[which]:.3f} | {which} | {peers[which] / e['ms']:.1f}x"
        else:
            bs = "- | - | -"
        L.append(f"| {name} | {e['ms']:.3f} | {roof:.3f} | {e['ms'] / roof:.1f}x | {es} | {bs} |")
    L.append("")
    L.append("PyTorch paths, all timings (ms):")
    L.append("")
    for e in torch_.get("cases", []):
        L.append(f"- {e['name']}: " + (f"{e['ms']:.3f}" if "ms" in e else f"failed ({e['error']})"))
    if "error" in torch_:
        L.append(f"- PyTorch benchmark did not produce results: {torch_['error']}")
    L.append("")
    L.append("Roofline = max(bytes / copy bandwidth, matrix FLOPs / cuBLAS rate), both measured above. Bytes: x, y "
             "and every parameter once (forward); plus dy, dx, x again and every gradient (forward+backward). Matrix "
             "FLOPs: 2 T N r (d_in + d) + 2 T N P k + 2 T k d_in + 2 T N d_in (forward), three times that for "
             "forward+backward. The per-element work (T N P angles: tanh, sin, cos, the rotation and the gate) is "
             "not in the roofline.")
    print("\n".join(L))


if __name__ == "__main__":
    main()
