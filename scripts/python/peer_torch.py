#!/usr/bin/python3
"""Times the eager PyTorch layer (radargate_torch.forward) beside `radargate bench` on the same shapes.

For each case it runs, in fresh processes so that each peak RSS belongs to one computation:
  * `radargate bench ... --json` (the C++ backend, median of --repeat calls), and
  * this script as a child that builds a random model of the same shapes in PyTorch and times
    radargate_torch.forward (forward under torch.no_grad(); forward + backward with autograd on
    x and every parameter), with torch.set_num_threads(1) unless --torch-threads says otherwise.
It prints times, essential GFLOP/s, peak memory and the ratios, and can write them all as JSON.

A case TOKENS:train times one training step on both sides: `radargate bench --train-step`
(forward, mse loss, backward of the trained tensors, radargate::train's AdamW update) beside the
same step in PyTorch (forward, torch.nn.functional.mse_loss, autograd of the trained tensors,
torch.optim.AdamW(lr=1e-4, weight_decay=0.01).step()). The trained tensors are those
`radargate train` learns by default: every tensor but lora.A, lora.B, lora.scale (and base.*).

Fairness: torch uses the system BLAS (OpenBLAS through Debian's libblas.so.3 alternative), and
the PyTorch child runs with glibc told to keep freed blocks (MALLOC_MMAP_THRESHOLD_ at its
maximum, MALLOC_TRIM_THRESHOLD_ large, and MALLOC_MMAP_MAX_=0 because glibc caps the mmap
threshold at 32 MiB, below the size of a [T, N, d] tensor). Without this every large tensor is
a fresh mmap whose pages fault on first touch on every call. --no-malloc-tuning turns it off to
show the difference.

    /usr/bin/python3 scripts/python/peer_torch.py --radargate build/radargate --json out.json
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),  # glibc's maximum
    "MALLOC_TRIM_THRESHOLD_": str(64 * 1024 ** 3),
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TOP_PAD_": str(64 * 1024 * 1024),
}

# variant -> rotation, gate kind (radargate_torch.VARIANTS holds the same table)
VARIANT_GATE = {
    "sum": (False, "none"), "uniform": (False, "uniform"), "static": (False, "static"),
    "softmax": (False, "linear"), "topk": (False, "linear"), "stretch_only": (False, "stretch"),
    "rotation_only": (True, "uniform"), "radargate": (True, "stretch"),
}


def param_shapes(variant, N, d_in, d, r, k, P):
    """The tensors a variant reads, with their shapes (every optional one present, no base),
    as radargate::random_model creates them."""
    rot, gate = VARIANT_GATE[variant]
    shapes = {"lora.A": (N, r, d_in), "lora.B": (N, d, r), "lora.scale": (N,)}
    if rot:
        shapes.update({"map.M": (N, N), "angle.Wx": (k, d_in), "angle.Wv": (k, d), "angle.Wc": (k, d),
                       "angle.U": (P, k), "angle.bias": (N, P)})
    if gate in ("static", "linear", "stretch"):
        shapes["stretch.bg"] = (N,)
    if gate in ("linear", "stretch"):
        shapes["stretch.Wg"] = (N, d_in)
    if gate == "stretch":
        shapes["stretch.ws"] = (d,)
    return shapes


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def torch_child(spec):
    """Runs in a child process: times radargate_torch.forward and prints one JSON line."""
    import torch
    sys.path.insert(0, HERE)
    import radargate_torch

    torch.set_num_threads(spec["torch_threads"])
    torch.manual_seed(1)
    dtype = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16}[spec["dtype"]]
    T, N, d_in, d, r, k, P = (spec[n] for n in ("tokens", "experts", "d_in", "d", "rank", "angle_rank", "planes"))
    sd = {"lora.A": 1 / math.sqrt(d_in), "stretch.Wg": 1 / math.sqrt(d_in), "angle.Wx": 1 / math.sqrt(d_in),
          "lora.B": 1 / math.sqrt(r), "angle.Wv": 1 / math.sqrt(d), "angle.Wc": 1 / math.sqrt(d),
          "stretch.ws": 1 / math.sqrt(d), "angle.U": 1 / math.sqrt(k), "angle.bias": 0.5}
    params = {}
    for name, shape in param_shapes(spec["variant"], N, d_in, d, r, k, P).items():
        t = torch.randn(shape, dtype=dtype) * sd.get(name, 1.0)
        if name == "lora.scale":
            t = 0.5 + 0.5 * t.abs()
        params[name] = t
    config = {"variant": spec["variant"], "topk": min(2, N)}
    x = torch.randn(T, d_in, dtype=dtype)
    dy = torch.randn(T, d, dtype=dtype)
    backward = spec["backward"]
    if spec.get("train_step"):
        trained = [t for n, t in params.items() if n not in ("lora.A", "lora.B", "lora.scale")]
        for t in trained:
            t.requires_grad_(True)
        opt = torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.01)
        target = torch.randn(T, d, dtype=dtype)
        base_rss = current_rss_mb()
        times = []
        for it in range(spec["warmup"] + spec["repeat"]):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            y = radargate_torch.forward(config, params, x)
            loss = torch.nn.functional.mse_loss(y, target)
            loss.backward()
            opt.step()
            t1 = time.perf_counter()
            del y, loss
            if it >= spec["warmup"]:
                times.append(t1 - t0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(json.dumps({"median_s": statistics.median(times), "min_s": min(times), "median_forward_s": 0.0,
                          "peak_rss_mb": peak, "base_rss_mb": base_rss, "torch": torch.__version__,
                          "torch_threads": torch.get_num_threads()}))
        return
    if backward:
        for t in params.values():
            t.requires_grad_(True)
        x.requires_grad_(True)
    base_rss = current_rss_mb()

    times, fwd_times = [], []
    for it in range(spec["warmup"] + spec["repeat"]):
        if backward:
            for t in list(params.values()) + [x]:
                t.grad = None
            t0 = time.perf_counter()
            y = radargate_torch.forward(config, params, x)
            t1 = time.perf_counter()
            y.backward(dy)
            t2 = time.perf_counter()
            del y
        else:
            with torch.no_grad():
                t0 = time.perf_counter()
                y = radargate_torch.forward(config, params, x)
                t1 = time.perf_counter()
                del y
            t2 = t1
        if it >= spec["warmup"]:
            times.append(t2 - t0)
            fwd_times.append(t1 - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"median_s": statistics.median(times), "min_s": min(times),
                      "median_forward_s": statistics.median(fwd_times), "peak_rss_mb": peak,
                      "base_rss_mb": base_rss, "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads()}))


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--radargate", required=True, help="path of the radargate binary (for 'radargate bench')")
    ap.add_argument("--variant", default="radargate")
    ap.add_argument("--experts", type=int, default=40)
    ap.add_argument("--d-in", type=int, default=4096)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--angle-rank", type=int, default=8)
    ap.add_argument("--planes", type=int, default=None, help="default floor(d/2)")
    ap.add_argument("--dtype", choices=("f32", "f64", "bf16"), default="f32",
                    help="bf16: PyTorch computes in bfloat16, radargate keeps lora.A and lora.B in bf16 "
                         "(bench --dtype bf16) and computes in float")
    ap.add_argument("--cases", default="256:fwd,256:fwdbwd,1:fwd",
                    help="comma-separated TOKENS:fwd|fwdbwd|train (default 256:fwd,256:fwdbwd,1:fwd)")
    ap.add_argument("--threads", type=int, default=1, help="radargate threads (default 1)")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--repeat-small", type=int, default=50, help="repeats for cases of fewer than 16 tokens")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="run PyTorch with glibc's default malloc settings")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    ap.add_argument("--torch-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_child:
        torch_child(json.loads(a.torch_child))
        return
    planes = a.planes if a.planes is not None else a.d // 2

    rows = []
    for case in a.cases.split(","):
        tok, mode = case.split(":")
        T, backward, train_step = int(tok), mode == "fwdbwd", mode == "train"
        repeat = a.repeat_small if T < 16 else a.repeat
        spec = {"variant": a.variant, "tokens": T, "experts": a.experts, "d_in": a.d_in, "d": a.d, "rank": a.rank,
                "angle_rank": a.angle_rank, "planes": planes, "dtype": a.dtype, "backward": backward,
                "repeat": repeat, "warmup": 1 if T >= 16 else 3, "torch_threads": a.torch_threads,
                "train_step": train_step}
        cmd = [a.radargate, "bench", "--variant", a.variant, "--tokens", str(T), "--experts", str(a.experts),
               "--d-in", str(a.d_in), "--d", str(a.d), "--rank", str(a.rank), "--angle-rank", str(a.angle_rank),
               "--planes", str(planes), "--dtype", a.dtype, "--threads", str(a.threads), "--repeat", str(repeat),
               "--warmup", str(spec["warmup"]), "--json"]
        if backward:
            cmd.append("--backward")
        if train_step:
            cmd.append("--train-step")
        rg = run_json(cmd)
        env = dict(os.environ)
        if not a.no_malloc_tuning:
            env.update(MALLOC_ENV)
        pt = run_json([sys.executable, os.path.abspath(__file__), "--radargate", a.radargate,
                       "--torch-child", json.dumps(spec)], env=env)
        rows.append({"tokens": T, "backward": backward, "train_step": train_step, "radargate": rg, "torch": pt,
                     "speedup": pt["median_s"] / rg["median_s"],
                     "memory_ratio": pt["peak_rss_mb"] / rg["peak_rss_mb"],
                     "working_memory_ratio": (pt["peak_rss_mb"] - pt["base_rss_mb"]) /
                                             max(rg["peak_rss_mb"] - rg["base_rss_mb"], 1e-3)})

    print(f"peer: eager PyTorch {rows[0]['torch']['torch']} ({rows[0]['torch']['torch_threads']} thread(s)"
          f"{', glibc malloc tuned' if not a.no_malloc_tuning else ', default glibc malloc'}) vs radargate "
          f"(cpu backend, {a.threads} thread(s)); variant {a.variant}, {a.dtype}, N={a.experts} d_in={a.d_in} "
          f"d={a.d} r={a.rank} k={a.angle_rank} P={planes}")
    hdr = (f"{'T':>5} {'pass':>8} | {'radargate s':>11} {'GFLOP/s':>8} {'peak MB':>8} | {'torch s':>9} "
           f"{'GFLOP/s':>8} {'peak MB':>8} | {'speedup':>7} {'mem ratio':>9} {'(above base)':>12}")
    print(hdr)
    print("-" * len(hdr))
    for row in rows:
        rg, pt = row["radargate"], row["torch"]
        flops = rg["flops"]
        mode = "train" if row.get("train_step") else "fwd+bwd" if row["backward"] else "fwd"
        print(f"{row['tokens']:>5} {mode:>8} | {rg['median_s']:>11.5f} "
              f"{rg['gflops']:>8.2f} {rg['peak_rss_mb']:>8.1f} | {pt['median_s']:>9.5f} "
              f"{flops / pt['median_s'] * 1e-9:>8.2f} {pt['peak_rss_mb']:>8.1f} | {row['speedup']:>6.1f}x "
              f"{row['memory_ratio']:>8.1f}x {row['working_memory_ratio']:>11.1f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"variant": a.variant, "dtype": a.dtype, "threads": a.threads,
                       "torch_threads": a.torch_threads, "malloc_tuning": not a.no_malloc_tuning,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
