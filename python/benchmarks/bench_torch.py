#!/usr/bin/env python3
"""Times radargate.torch.RadarGate against the eager PyTorch layer, in the same process and run.

    python3 python/benchmarks/bench_torch.py [--rounds 3] [--json out.json]

Target shape (docs/PERFORMANCE.md): T=256, N=40, d_in=d=4096, r=8, k=8, P=2048, variant
radargate, float32, no base, one thread (torch.set_num_threads(1), which the module's library
threads follow). The peer is scripts/python/radargate_torch.py (materialises the [T, N, d] expert
outputs, autograd for backward) on the very same parameter values. Three passes, each timed for
the module and the peer alternately, `--rounds` times, best of the rounds reported:

  forward           under torch.no_grad()
  forward+backward  autograd on x and every trainable parameter (the module: the library's backward)
  AdamW step        zero_grad, forward, MSE loss, backward, torch.optim.AdamW.step()

Then the binding's overhead per call at T=1 on a small layer (d_in=d=64, N=8, r=4): the module's
call minus the library's own time for the same work, measured in a C++ loop (time_forward,
time_forward_backward of the binding), both in process CPU time; for the forward under no_grad
and with autograd recording, and for forward + backward (torch.autograd.grad over x and every
parameter). An autograd.Function that does nothing over the same inputs is timed beside it: the
floor of any module built on autograd.Function.

As scripts/python/peer_torch.py does, glibc is told to keep freed blocks (MALLOC_* variables; the
script re-executes itself with them unless --no-malloc-tuning), so that PyTorch's large tensors
are not fresh page-faulting mappings on every call.
"""

import argparse
import json
import math
import os
import sys
import time

MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 1024 ** 3),
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TOP_PAD_": str(64 * 1024 * 1024),
}

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts", "python"))


def best(fn, n):
    """Best wall time of n calls of fn."""
    t = math.inf
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--experts", type=int, default=40)
    ap.add_argument("--d", type=int, default=4096, help="d_in = d")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--angle-rank", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best is reported")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-malloc-tuning", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true", help="leave out the T=1 overhead measurement")
    ap.add_argument("--overhead-only", action="store_true", help="only the T=1 overhead measurement")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    if not a.no_malloc_tuning and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.environ.update(MALLOC_ENV)
        os.execv(sys.executable, [sys.executable] + sys.argv)

    import torch
    import radargate_torch as rgt
    from radargate.torch import RadarGate

    torch.set_num_threads(a.threads)
    T, N, d, r, k = a.tokens, a.experts, a.d, a.rank, a.angle_rank
    print(f"bench_torch: T={T} N={N} d_in=d={d} r={r} k={k} P={d // 2}, float32, {a.threads} thread(s), "
          f"torch {torch.__version__}, malloc tuning {'off' if a.no_malloc_tuning else 'on'}", flush=True)
    out = {"torch": torch.__version__}
    if not a.overhead_only:
        t0 = time.perf_counter()
        rg = RadarGate(variant="radargate", d_in=d, d=d, experts=N, rank=r, angle_rank=k, base=False, seed=1)
        peer = {n: p.detach().clone().requires_grad_(True) for n, p in rg.named_parameters()}
        cfg = rg.config
        g = torch.Generator().manual_seed(2)
        x = torch.randn(T, d, generator=g)
        target = torch.randn(T, d, generator=g)
        print(f"  model built in {time.perf_counter() - t0:.1f} s", flush=True)

        with torch.no_grad():
            err = float((rg(x) - rgt.forward(cfg, peer, x)).abs().max() / rgt.forward(cfg, peer, x).abs().max())
        print(f"  agreement: max |y_radargate - y_eager| / max |y_eager| = {err:.2e}", flush=True)

        def fwd_rg():
            with torch.no_grad():
                rg(x)

        def fwd_peer():
            with torch.no_grad():
                rgt.forward(cfg, peer, x)

        xg = x.clone().requires_grad_(True)

        def fb_rg():
            rg(xg).sum().backward()

        def fb_peer():
            rgt.forward(cfg, peer, xg).sum().backward()

        opt_rg = torch.optim.AdamW(rg.parameters(), lr=1e-4)
        opt_peer = torch.optim.AdamW(peer.values(), lr=1e-4)

        def step_rg():
            opt_rg.zero_grad()
            torch.nn.functional.mse_loss(rg(x), target).backward()
            opt_rg.step()

        def step_peer():
            opt_peer.zero_grad()
            torch.nn.functional.mse_loss(rgt.forward(cfg, peer, x), target).backward()
            opt_peer.step()

        passes = [("forward", fwd_rg, fwd_peer), ("forward+backward", fb_rg, fb_peer), ("AdamW step", step_rg, step_peer)]
        for _, f_rg, f_peer in passes:  # warm-up: first-touch of every buffer, the optimizers' state
            f_rg()
            f_peer()
        res = {name: [math.inf, math.inf] for name, _, _ in passes}
        for rnd in range(a.rounds):
            for name, f_rg, f_peer in passes:
                res[name][0] = min(res[name][0], best(f_rg, 3))
                res[name][1] = min(res[name][1], best(f_peer, 1))
            print(f"  round {rnd + 1}/{a.rounds}: " + ", ".join(
                f"{n} {v[0] * 1e3:.1f} vs {v[1] * 1e3:.1f} ms" for n, v in res.items()), flush=True)
        out.update({"shape": {"T": T, "N": N, "d_in": d, "d": d, "r": r, "k": k, "P": d // 2, "threads": a.threads},
                    "agreement": err, "passes": {}})
        print("\n| pass | radargate.torch | eager PyTorch | speedup |\n|---|---:|---:|---:|")
        for name, (t_rg, t_peer) in res.items():
            out["passes"][name] = {"radargate_ms": t_rg * 1e3, "eager_ms": t_peer * 1e3, "speedup": t_peer / t_rg}
            print(f"| {name} | {t_rg * 1e3:.1f} ms | {t_peer * 1e3:.1f} ms | {t_peer / t_rg:.1f}x |")

    if not a.skip_overhead:
        small = RadarGate(variant="radargate", d_in=64, d=64, experts=8, rank=4, base=False, seed=1)
        x1 = torch.randn(1, 64)
        core = small._bind().core
        y1 = torch.empty(1, 64)
        n = 2000

        # Process CPU time, not wall time: on a shared machine the time the scheduler gives to
        # other jobs would otherwise count as overhead. Everything below runs on this thread.
        clock = time.process_time

        def loop(fn):
            t0 = clock()
            for _ in range(n):
                fn()
            return (clock() - t0) / n

        def library():
            t0 = clock()
            core.time_forward(x1, y1, n)
            return (clock() - t0) / n

        x1g = x1.clone().requires_grad_(True)

        def call_nograd():
            with torch.no_grad():
                small(x1)

        # For scale, in the same run: one small torch op, and an autograd.Function that does
        # nothing but take the module's inputs (x and the 12 parameters) and return an empty y.
        class Empty(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, *ps):
                return x.new_empty((1, 64))

            @staticmethod
            def backward(ctx, dy):
                return (None,) * 13

        params = list(small.parameters())
        w = torch.randn(64, 64)

        # Forward and backward: torch.autograd.grad of y with respect to x and every parameter
        # (no accumulation into .grad), against the library's forward + backward in a C++ loop.
        from radargate._config import PARAM_NAMES
        dy1 = torch.randn(1, 64)
        gx1 = torch.empty(1, 64)
        by_name = dict(zip(small._names, params))
        g1 = [torch.empty_like(by_name[nm]) if nm in by_name else None for nm in PARAM_NAMES]
        inputs = [x1g] + params

        def library_fb():
            t0 = clock()
            core.time_forward_backward(x1, y1, dy1, gx1, g1, n)
            return (clock() - t0) / n

        def call_fb():
            torch.autograd.grad(small(x1g), inputs, dy1)

        def empty_fb():
            torch.autograd.grad(Empty.apply(x1g, *params), inputs, dy1, allow_unused=True)

        lib, mod_ng, mod_ag, lin, empty, lib_fb, mod_fb, emp_fb = (math.inf,) * 8
        for _ in range(5):
            lib = min(lib, library())
            mod_ng = min(mod_ng, loop(call_nograd))
            mod_ag = min(mod_ag, loop(lambda: small(x1g)))
            lin = min(lin, loop(lambda: torch.nn.functional.linear(x1, w)))
            empty = min(empty, loop(lambda: Empty.apply(x1g, *params)))
            lib_fb = min(lib_fb, library_fb())
            mod_fb = min(mod_fb, loop(call_fb))
            emp_fb = min(emp_fb, loop(empty_fb))
        out["overhead_T1"] = {"library_us": lib * 1e6, "module_nograd_us": mod_ng * 1e6,
                              "module_autograd_us": mod_ag * 1e6, "torch_linear_us": lin * 1e6,
                              "empty_function_us": empty * 1e6, "library_forward_backward_us": lib_fb * 1e6,
                              "module_forward_backward_us": mod_fb * 1e6,
                              "empty_function_forward_backward_us": emp_fb * 1e6}
        us = 1e6
        print(f"\nT=1, d_in=d=64, N=8, r=4, {len(params)} parameters (process CPU time per call, best of 5 loops of "
              f"{n} calls; overhead = the call's time minus the library's time for the same work, timed in a C++ "
              f"loop):\n"
              f"| call | time | library (C++ loop) | overhead | floor: an empty autograd.Function |\n|---|---:|---:|---:|---:|\n"
              f"| forward under no_grad | {mod_ng * us:.1f} us | {lib * us:.1f} us | {(mod_ng - lib) * us:.1f} us | |\n"
              f"| forward, autograd recording | {mod_ag * us:.1f} us | {lib * us:.1f} us | {(mod_ag - lib) * us:.1f} us | "
              f"{empty * us:.1f} us |\n"
              f"| forward + backward (autograd.grad, x and every parameter) | {mod_fb * us:.1f} us | {lib_fb * us:.1f} us | "
              f"{(mod_fb - lib_fb) * us:.1f} us | {emp_fb * us:.1f} us |\n"
              f"For scale, same run: torch.nn.functional.linear [1, 64] x [64, 64] {lin * us:.1f} us")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
