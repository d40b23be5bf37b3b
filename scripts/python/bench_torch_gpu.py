#!/usr/bin/env python3
"""The PyTorch peer of the CUDA benchmark: scripts/python/radargate_torch.py (eager, and under
torch.compile where that works) at the same shapes, on the same GPU, timed the same way (CUDA
events, median of repeats after warm-up, random inputs). Backward computes the gradients of x and
of every parameter (no frozen base in the layer).

    bench_torch_gpu.py [--T 2048] [--N 40] [--d-in 4096] [--d 4096] [--r 16] [--k 16] [--P 0]
                       [--variant radargate] [--dtype bf16] [--decode-T 1] [--repeats 20]
                       [--no-compile] [--json FILE]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import radargate_torch as rt  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def make_params(variant, N, r, d_in, d, k, P, dtype, dev, seed=2024):
    g = torch.Generator().manual_seed(seed)
    rotation, gate, _ = rt.VARIANTS[variant]

    def rn(*shape, sd=1.0):
        return (torch.randn(*shape, generator=g) * sd).to(dev, dtype)

    p = {
        "lora.A": rn(N, r, d_in, sd=d_in ** -0.5),
        "lora.B": rn(N, d, r, sd=r ** -0.5),
        "lora.scale": (0.5 + 0.5 * torch.rand(N, generator=g)).to(dev, dtype),
    }
    if rotation:
        p["map.M"] = rn(N, N)
        p["angle.Wx"] = rn(k, d_in, sd=d_in ** -0.5)
        p["angle.Wv"] = rn(k, d, sd=d ** -0.5)
        p["angle.Wc"] = rn(k, d, sd=d ** -0.5)
        p["angle.U"] = rn(P, k, sd=k ** -0.5)
        p["angle.bias"] = rn(N, P, sd=0.5)
    if gate in ("static", "linear", "stretch"):
        p["stretch.bg"] = rn(N)
    if gate in ("linear", "stretch"):
        p["stretch.Wg"] = rn(N, d_in, sd=d_in ** -0.5)
    if gate == "stretch":
        p["stretch.ws"] = rn(d, sd=d ** -0.5)
    return p


def median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    for name, default in (("T", 2048), ("N", 40), ("d-in", 4096), ("d", 4096), ("r", 16), ("k", 16), ("P", 0),
                          ("decode-T", 1), ("repeats", 20)):
        ap.add_argument("--" + name, type=int, default=default)
    ap.add_argument("--variant", default="radargate")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device("cuda")
    dtype = DTYPES[a.dtype]
    P = a.P or a.d // 2
    cfg = {"variant": a.variant}
    params = make_params(a.variant, a.N, a.r, a.d_in, a.d, a.k, P, dtype, dev)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": a.dtype,
           "config": {"variant": a.variant, "T": a.T, "N": a.N, "d_in": a.d_in, "d": a.d, "r": a.r, "k": a.k, "P": P,
                      "decode_T": a.decode_T},
           "cases": []}

    def dump():
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=2)

    def record(name, fn, warmup, repeats):
        t0 = time.time()
        try:
            ms = median_ms(fn, warmup, repeats)
            entry = {"name": name, "ms": ms, "wall_s": time.time() - t0}
            print(f"{name:40s} {ms:10.4f} ms   ({time.time() - t0:.1f} s incl. warm-up)", flush=True)
        except Exception as e:  # a path that does not run here is reported, not fatal
            entry = {"name": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            print(f"{name:40s} failed: {entry['error']}", flush=True)
            traceback.print_exc(limit=3)
        out["cases"].append(entry)
        dump()  # results so far survive a later case that runs out of time
        torch.cuda.empty_cache()

    def fwd(x):
        return rt.forward(cfg, params, x)

    inputs = {}
    for T in (a.T, a.decode_T):
        inputs[T] = (torch.randn(T, a.d_in, device=dev, dtype=dtype), torch.randn(T, a.d, device=dev, dtype=dtype))

    def cases(f, kind):
        for T in (a.T, a.decode_T):
            decode = T == a.decode_T and T != a.T
            x, dy = inputs[T]
            reps = a.repeats * (4 if decode else 1)

            def run_fwd():
                with torch.no_grad():
                    f(x)

            record(f"{kind} forward T={T}", run_fwd, 3, reps)
            if decode:
                continue
            leaves = [x.clone().requires_grad_(True)] + [p.requires_grad_(True) for p in params.values()]

            def run_fb():
                y = f(leaves[0])
                torch.autograd.grad(y, leaves, dy)

            record(f"{kind} forward+backward T={T}", run_fb, 3, max(3, a.repeats // 2))
            for p in params.values():
                p.requires_grad_(False)

    cases(fwd, "eager")
    if not a.no_compile:
        cases(torch.compile(fwd), "compile")
    dump()


if __name__ == "__main__":
    main()
