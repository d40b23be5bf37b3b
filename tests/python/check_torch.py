#!/usr/bin/env python3
"""Cross-check of the radargate command-line tool against PyTorch autograd.

    /usr/bin/python3 check_torch.py <path to the radargate binary>

Part 1 checks the PyTorch implementation (scripts/python/radargate_torch.py) on its own: against a
per-token loop written straight from the formulas of docs/MATH.md, with torch.autograd.gradcheck, and on
properties (zero angles rotate nothing, rotations keep each plane's norm, sum/uniform need no gate
parameters, top-k ties go to the lower index); and the safetensors module on round trips.

Part 2 writes random models of every variant and a spread of options and shapes as safetensors,
runs `radargate run --model M --input I --output O --backward`, and compares y and every grad.*
(grad.x and the gradient of every parameter in the model file) with PyTorch autograd of
sum(dy * y).

Error measure, per tensor: max|a - b| / max(max|b|, 1e-300), a = radargate, b = PyTorch in float64
on the very values the files hold. Tolerance: 1e-9 for F64 files; 1e-4 for F32 files (the
measure is then radargate's float32 rounding); 1e-3 for F16 and 8e-3 for BF16 files, whose outputs
are rounded to those types.

Cases also cover a forward-only run (the output holds y alone) and --grads selections (the output
holds y and exactly the gradients asked for).

One line per case, then `N passed, M failed`; the exit code is non-zero on any failure.
"""

import json
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts", "python"))

try:
    import numpy as np
    import torch
except ImportError as exc:
    print(f"FAIL: {sys.executable} cannot import numpy and torch ({exc}); the PyTorch cross-check needs "
          "them (Debian: apt-get install python3-torch python3-numpy, then run with /usr/bin/python3)")
    print("0 passed, 1 failed")
    sys.exit(1)

import radargate_torch as rgt  # noqa: E402
import safetensors_np as st  # noqa: E402

# F16 / BF16 files are computed in float32 and written back in their dtype, so the error is about
# one rounding of each output (at most half an ulp: 2^-11 of the value for F16, 2^-8 for BF16);
# the bounds leave a factor of two.
TOL = {"F64": 1e-9, "F32": 1e-4, "F16": 1e-3, "BF16": 8e-3}


def to_file_dtype(a, dtype):
    """float64 array -> the array written to a file of `dtype` (rounded to nearest even)."""
    if dtype == "BF16":
        return st.bf16_from_float32(np.asarray(a, dtype=np.float32))
    return np.asarray(a).astype({"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype])


def from_file_dtype(a):
    """An array read from a file -> float64 (exactly)."""
    if isinstance(a, st.BF16Array):
        return st.bf16_to_float32(a).astype(np.float64)
    return np.asarray(a, dtype=np.float64)


def file_dtype(a):
    return "BF16" if isinstance(a, st.BF16Array) else {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
                                                        np.dtype(np.float16): "F16"}.get(a.dtype, str(a.dtype))

# variant -> (rotation, gate kind, default normalize); restated from docs/MATH.md, "Forward" so the loop
# oracle below does not share code with radargate_torch.
TABLE = {
    "sum": (False, "none", None),
    "uniform": (False, "uniform", None),
    "static": (False, "static", "identity"),
    "softmax": (False, "linear", "softmax"),
    "topk": (False, "linear", "topk_softmax"),
    "stretch_only": (False, "stretch", "softmax"),
    "rotation_only": (True, "uniform", None),
    "radargate": (True, "stretch", "softmax"),
}


# ------------------------------------------------------------------------------------------------
# Random models


def make_case(name, variant, T=5, d_in=6, d=8, N=3, r=2, k=3, P=None, omit=(), set_params=None,
              dtype="F64", backward=True, grads=None, **config):
    """One model/input pair; `backward=False` runs forward only, `grads` is a --grads list."""
    cfg = {"variant": variant}
    cfg.update(config)
    return {"name": name, "config": cfg, "dims": dict(T=T, d_in=d_in, d=d, N=N, r=r, k=k, P=P),
            "omit": set(omit), "set": set_params or {}, "dtype": dtype, "backward": backward, "grads": grads}


def random_model(case, seed):
    """(config, params, x, dy) as float64 numpy arrays, params holding exactly the tensors the
    variant reads (minus case['omit'], with case['set'] overrides)."""
    rng = np.random.default_rng(seed)
    D = case["dims"]
    T, d_in, d, N, r, k = D["T"], D["d_in"], D["d"], D["N"], D["r"], D["k"]
    P = D["P"] if D["P"] is not None else d // 2
    cfg = case["config"]
    rotation, gate, _ = TABLE[cfg["variant"]]

    def g(*shape, fan=1):
        return rng.standard_normal(shape) / math.sqrt(fan)

    p = {
        "lora.A": g(N, r, d_in, fan=d_in),
        "lora.B": g(N, d, r, fan=r),
        "lora.scale": 1.0 + 0.3 * rng.standard_normal(N),
        "base.W0": g(d, d_in, fan=d_in),
        "base.b0": g(d),
    }
    if rotation:
        p.update({
            "angle.Wx": g(k, d_in, fan=d_in),
            "angle.Wv": g(k, d, fan=d),
            "angle.Wc": g(k, d, fan=d),
            "angle.U": g(P, k, fan=k),
            "angle.bias": 0.5 * g(N, P),
        })
        if cfg.get("map", "learned") == "learned":
            p["map.M"] = g(N, N)
    if gate in ("static", "linear", "stretch"):
        p["stretch.bg"] = g(N)
    if gate in ("linear", "stretch"):
        p["stretch.Wg"] = g(N, d_in, fan=d_in)
    if gate == "stretch":
        p["stretch.ws"] = g(d, fan=d)
    for n in case["omit"]:
        p.pop(n)
    for n, val in case["set"].items():
        p[n] = np.asarray(val, dtype=np.float64)
    x = g(T, d_in)
    dy = g(T, d)
    return cfg, p, x, dy


# ------------------------------------------------------------------------------------------------
# A per-token loop oracle for the forward pass, written from the formulas of docs/MATH.md.


def loop_forward(cfg, p, x):
    rotation, gate, default_norm = TABLE[cfg["variant"]]
    norm = cfg.get("normalize", default_norm)
    tau = cfg.get("tau", 1.0)
    K = cfg.get("topk", 2)
    A, B = p["lora.A"], p["lora.B"]
    N, r, d_in = A.shape
    d = B.shape[1]
    s = p.get("lora.scale", np.ones(N))
    y = np.zeros((x.shape[0], d))
    for t in range(x.shape[0]):
        xt = x[t]
        v = [s[i] * (B[i] @ (A[i] @ xt)) for i in range(N)]
        u = v
        if rotation:
            U = p["angle.U"]
            P, k = U.shape
            Wx = p.get("angle.Wx", np.zeros((k, d_in)))
            Wv = p.get("angle.Wv", np.zeros((k, d)))
            Wc = p.get("angle.Wc", np.zeros((k, d)))
            bias = p.get("angle.bias", np.zeros((N, P)))
            u = []
            for i in range(N):
                c = np.zeros(d)
                others = [j for j in range(N) if j != i]
                if others:
                    if cfg.get("map", "learned") == "learned":
                        e = np.array([math.exp(p["map.M"][i, j]) for j in others])
                        w = e / e.sum()
                    else:
                        w = np.full(len(others), 1.0 / (N - 1))
                    for wj, j in zip(w, others):
                        c += wj * v[j]
                z = Wx @ xt + Wv @ v[i] + Wc @ c
                pre = U @ z + bias[i]
                alpha = math.pi * np.tanh(pre) if cfg.get("bound", "pi_tanh") == "pi_tanh" else pre
                vt = v[i].copy()
                for m in range(P):
                    a, b = (2 * m, 2 * m + 1) if cfg.get("pairing", "adjacent") == "adjacent" else (m, m + d // 2)
                    co, si = math.cos(alpha[m]), math.sin(alpha[m])
                    vt[a] = co * v[i][a] - si * v[i][b]
                    vt[b] = si * v[i][a] + co * v[i][b]
                u.append(vt)
        if gate == "none":
            gw = np.ones(N)
        elif gate == "uniform":
            gw = np.full(N, 1.0 / N)
        else:
            l = p.get("stretch.bg", np.zeros(N)).copy()
            for i in range(N):
                if gate in ("linear", "stretch") and "stretch.Wg" in p:
                    l[i] += p["stretch.Wg"][i] @ xt
                if gate == "stretch" and "stretch.ws" in p:
                    l[i] += p["stretch.ws"] @ u[i]
            l = l / tau
            if norm == "softmax":
                e = np.exp(l - l.max())
                gw = e / e.sum()
            elif norm == "sigmoid":
                gw = 1.0 / (1.0 + np.exp(-l))
            elif norm == "identity":
                gw = l
            else:
                sel = sorted(range(N), key=lambda i: (-l[i], i))[:K]
                gw = np.zeros(N)
                e = np.exp(l[sel] - l[sel].max())
                gw[sel] = e / e.sum()
        out = sum(gw[i] * u[i] for i in range(N))
        if "base.W0" in p:
            out = out + p["base.W0"] @ xt
        if "base.b0" in p:
            out = out + p["base.b0"]
        y[t] = out
    return y


# ------------------------------------------------------------------------------------------------
# Helpers


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def torch_reference(cfg, p, x, dy):
    """y and the gradients of sum(dy * y) with respect to x and every parameter, in float64."""
    tp = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in p.items()}
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = rgt.forward(cfg, tp, tx)
    (y * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    grads = {"x": tx.grad}
    for n, t in tp.items():
        grads[n] = t.grad if t.grad is not None else torch.zeros_like(t)
    return y.detach().numpy(), {n: g.numpy() for n, g in grads.items()}


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def report(self, ok, name, detail):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


# ------------------------------------------------------------------------------------------------
# Cases


def cli_cases():
    c = make_case
    cases = [c(f"{v}.default", v) for v in TABLE]
    cases += [
        # radargate: every option, odd d, P < d/2, N = 1, r = 1, absent optionals
        c("radargate.half_odd_d_P2_none_mean", "radargate", d=7, P=2, pairing="half", bound="none", map="mean"),
        c("radargate.half_even_full_P", "radargate", d=8, pairing="half"),
        c("radargate.adjacent_odd_d", "radargate", d=9, d_in=4),
        c("radargate.N1_r1", "radargate", N=1, r=1),
        c("radargate.N1_mean_half", "radargate", N=1, d=5, pairing="half", map="mean"),
        c("radargate.sigmoid_tau0.5", "radargate", normalize="sigmoid", tau=0.5),
        c("radargate.topk_softmax_K2_N4", "radargate", N=4, normalize="topk_softmax", topk=2),
        c("radargate.identity_tau2", "radargate", normalize="identity", tau=2.0),
        c("radargate.minimal_tensors", "radargate", map="mean",
          omit=("lora.scale", "base.W0", "base.b0", "angle.Wx", "angle.Wv", "angle.Wc", "angle.bias",
                "stretch.Wg", "stretch.bg", "stretch.ws")),
        c("radargate.no_Wc_learned_k1_P1", "radargate", k=1, P=1, omit=("angle.Wc",)),
        c("radargate.T1_d_in1_d2", "radargate", T=1, d_in=1, d=2, N=2),
        c("radargate.wide_N6_r3_k4", "radargate", T=7, d_in=10, d=12, N=6, r=3, k=4, P=5, tau=1.5),
        c("radargate.zero_angles", "radargate", omit=("angle.bias",), set_params={"angle.U": np.zeros((4, 3))}),
        # rotation_only
        c("rotation_only.half_odd_none_mean", "rotation_only", d=7, pairing="half", bound="none", map="mean"),
        c("rotation_only.N1", "rotation_only", N=1),
        c("rotation_only.P1_r1", "rotation_only", P=1, r=1, omit=("base.W0", "base.b0")),
        # stretch_only
        c("stretch_only.sigmoid_tau2_no_ws", "stretch_only", normalize="sigmoid", tau=2.0, omit=("stretch.ws",)),
        c("stretch_only.topk_softmax_K1", "stretch_only", N=4, normalize="topk_softmax", topk=1),
        c("stretch_only.N1", "stretch_only", N=1, d=3),
        # topk
        c("topk.K1_N4", "topk", N=4, topk=1),
        c("topk.N1_K1", "topk", N=1, topk=1),
        c("topk.K_equals_N_tau0.3", "topk", N=3, topk=3, tau=0.3),
        c("topk.ties_lower_index_wins", "topk", N=4, topk=2,
          omit=("stretch.Wg",), set_params={"stretch.bg": [0.5, 1.0, 1.0, 1.0]}),
        # softmax / static / uniform / sum
        c("softmax.N1_r1_no_base", "softmax", N=1, r=1, omit=("base.W0", "base.b0")),
        c("softmax.sigmoid_tau0.7", "softmax", normalize="sigmoid", tau=0.7),
        c("static.softmax_tau3", "static", normalize="softmax", tau=3.0),
        c("static.topk_softmax_ties", "static", N=4, normalize="topk_softmax", topk=2,
          set_params={"stretch.bg": [1.0, 1.0, 1.0, 0.0]}),
        c("static.N1_no_bg", "static", N=1, omit=("stretch.bg",)),
        c("uniform.N1_odd_d", "uniform", N=1, d=5),
        c("sum.no_scale_r1_odd_d", "sum", r=1, d=7, omit=("lora.scale",)),
        c("sum.N1", "sum", N=1),
        # run modes: forward only, a --grads selection
        c("radargate.forward_only", "radargate", backward=False),
        c("radargate.grads_x_U_ws", "radargate", grads=["x", "angle.U", "stretch.ws"]),
        c("topk.grads_lora", "topk", N=4, grads=["lora.A", "lora.B", "lora.scale"]),
        # other file dtypes
        c("radargate.f32", "radargate", dtype="F32"),
        c("topk.f32_half_tau", "topk", N=4, tau=0.5, dtype="F32"),
        c("radargate.f16", "radargate", dtype="F16"),
        c("radargate.bf16", "radargate", dtype="BF16"),
    ]
    return cases


# ------------------------------------------------------------------------------------------------
# Part 1: the PyTorch implementation on its own


def self_checks(res, cases, tmp):
    # safetensors round trips, including an unaligned tensor offset
    rng = np.random.default_rng(7)
    tensors = {"f64": rng.standard_normal((3, 4)), "f32": rng.standard_normal(5).astype(np.float32),
               "f16": rng.standard_normal((2, 3)).astype(np.float16),
               "bf16": st.bf16_from_float32(rng.standard_normal(6))}
    path = os.path.join(tmp, "roundtrip.safetensors")
    st.save(path, tensors, {"radargate.config": json.dumps({"variant": "sum"})})
    back, meta = st.load(path)
    ok = all(back[n].dtype == np.asarray(tensors[n]).dtype and np.array_equal(back[n], tensors[n]) for n in tensors)
    ok = ok and isinstance(back["bf16"], st.BF16Array) and json.loads(meta["radargate.config"]) == {"variant": "sum"}
    bf = st.bf16_to_float32(st.bf16_from_float32(np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5], np.float32)))
    ok = ok and np.array_equal(bf, np.array([1.0, 1.0, 1.0 + 2 ** -6, -2.5], np.float32))  # ties to even
    with open(path, "rb") as fh:
        raw = bytearray(fh.read())
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    for info in hdr.values():
        if isinstance(info, dict) and "data_offsets" in info:
            info["data_offsets"] = [o + 3 for o in info["data_offsets"]]
    text = json.dumps(hdr).encode()
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text + b"\1\2\3" + raw[8 + n:])
    back2, _ = st.load(path)
    ok = ok and all(np.array_equal(back2[k], back[k]) for k in back)
    res.report(ok, "self.safetensors_roundtrip", "F64/F32/F16/BF16, metadata, RNE, unaligned offsets")

    # PyTorch forward against the per-token loop, every CLI case
    worst = 0.0
    bad = []
    for i, case in enumerate(cases):
        cfg, p, x, _ = random_model(case, 1000 + i)
        tp = {n: torch.tensor(v) for n, v in p.items()}
        e = rel_err(rgt.forward(cfg, tp, torch.tensor(x)).numpy(), loop_forward(cfg, p, x))
        worst = max(worst, e)
        if not e <= 1e-12:
            bad.append(f"{case['name']} ({e:.2e})")
    res.report(not bad, "self.torch_vs_loop", f"{len(cases)} models, max rel err {worst:.2e}"
               + (f"; over 1e-12: {', '.join(bad)}" if bad else ""))

    # gradcheck (float64, central differences) on small models of every variant
    for v in TABLE:
        for opts in ({}, {"pairing": "half", "bound": "none", "map": "mean", "normalize": "sigmoid", "tau": 0.7}):
            case = make_case("gc", v, T=2, d_in=3, d=5, N=3, r=2, k=2, P=2, **opts)
            cfg, p, x, _ = random_model(case, 77)
            names = list(p)
            ins = [torch.tensor(p[n], requires_grad=True) for n in names] + [torch.tensor(x, requires_grad=True)]

            def f(*ts, cfg=cfg, names=names):
                return rgt.forward(cfg, dict(zip(names, ts[:-1])), ts[-1])

            try:
                ok = torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-7, rtol=1e-6)
                detail = "ok"
            except Exception as exc:  # gradcheck raises on mismatch
                ok, detail = False, str(exc).splitlines()[0]
            tag = "default" if not opts else "half_none_mean_sigmoid"
            res.report(ok, f"self.gradcheck.{v}.{tag}", detail)

    # properties
    case = make_case("p", "radargate", N=1, d=7, P=3, pairing="half", omit=("base.W0", "base.b0"))
    cfg, p, x, _ = random_model(case, 5)
    tp = {n: torch.tensor(val) for n, val in p.items()}
    vt = rgt.forward(dict(cfg, variant="rotation_only"), tp, torch.tensor(x)).numpy()
    v = np.einsum("dr,ri,ti->td", p["lora.B"][0], p["lora.A"][0], x) * p["lora.scale"][0]
    a, b = rgt.plane_indices("half", 7, 3)
    norm_err = np.max(np.abs(np.hypot(vt[:, a], vt[:, b]) - np.hypot(v[:, a], v[:, b])))
    untouched = [j for j in range(7) if j not in set(a.tolist()) | set(b.tolist())]
    moved = np.max(np.abs(vt[:, a] - v[:, a]))
    off_err = rel_err(vt[:, untouched], v[:, untouched])
    ok = norm_err < 1e-13 and off_err < 1e-14 and moved > 1e-3
    res.report(ok, "self.rotation_keeps_plane_norms", f"max |norm change| {norm_err:.1e}, off-plane coords rel err {off_err:.1e}, "
               f"max in-plane change {moved:.2f}")

    case = make_case("z", "radargate", N=3, omit=("angle.bias",), set_params={"angle.U": np.zeros((4, 3))})
    cfg, p, x, _ = random_model(case, 6)
    tp = {n: torch.tensor(val) for n, val in p.items()}
    y_rot = rgt.forward(cfg, tp, torch.tensor(x))
    y_plain = rgt.forward(dict(cfg, variant="stretch_only"), tp, torch.tensor(x))
    u_rot = rgt.forward(dict(cfg, variant="rotation_only"), tp, torch.tensor(x))
    u_plain = rgt.forward(dict(cfg, variant="uniform"), tp, torch.tensor(x))
    ok = torch.equal(y_rot, y_plain) and torch.equal(u_rot, u_plain)
    res.report(ok, "self.zero_angles_identity", "radargate == stretch_only and rotation_only == uniform, bitwise, "
               "when U = 0 and bias = 0")

    case = make_case("s", "sum", N=4)
    cfg, p, x, _ = random_model(case, 8)
    lora = {n: torch.tensor(p[n]) for n in ("lora.A", "lora.B")}
    v = np.einsum("ndr,nri,ti->tnd", p["lora.B"], p["lora.A"], x)
    e1 = rel_err(rgt.forward({"variant": "sum"}, lora, torch.tensor(x)).numpy(), v.sum(1))
    e2 = rel_err(rgt.forward({"variant": "uniform"}, lora, torch.tensor(x)).numpy(), v.mean(1))
    res.report(max(e1, e2) < 1e-13, "self.sum_uniform_no_gate_params", f"sum err {e1:.1e}, uniform err {e2:.1e}")

    # gates sum to one; top-k zeros and ties
    # With A_i = [[1]], B_i = e_i and x = 1 the output is the gate vector itself.
    bgt = {"lora.A": torch.ones(4, 1, 1, dtype=torch.float64), "lora.B": torch.eye(4, dtype=torch.float64)[:, :, None],
           "stretch.bg": torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)}
    one = torch.ones(1, 1, dtype=torch.float64)
    g_top = rgt.forward({"variant": "static", "normalize": "topk_softmax", "topk": 2}, bgt, one)[0]
    g_soft = rgt.forward({"variant": "static", "normalize": "softmax"}, bgt, one)[0]
    ok = torch.equal(g_top, torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)) and abs(float(g_soft.sum()) - 1) < 1e-15
    res.report(ok, "self.gate_sums_and_topk_ties", f"static top-2 of [1,1,1,0] -> {g_top.tolist()}, softmax sum {float(g_soft.sum()):.17g}")


# ------------------------------------------------------------------------------------------------
# Part 2: the command-line tool against PyTorch


def cli_check(res, binary, case, seed, tmp):
    name, dtype = case["name"], case["dtype"]
    cfg, p, x, dy = random_model(case, seed)
    # What the tool reads is what PyTorch gets: round to the file's dtype first.
    fp = {n: to_file_dtype(v, dtype) for n, v in p.items()}
    fx, fdy = to_file_dtype(x, dtype), to_file_dtype(dy, dtype)
    p = {n: from_file_dtype(v) for n, v in fp.items()}
    x, dy = from_file_dtype(fx), from_file_dtype(fdy)
    model = os.path.join(tmp, f"{name}.model.safetensors")
    inp = os.path.join(tmp, f"{name}.input.safetensors")
    out = os.path.join(tmp, f"{name}.output.safetensors")
    st.save(model, fp, {"radargate.config": json.dumps(cfg)})
    st.save(inp, {"x": fx, "dy": fdy} if case["backward"] else {"x": fx})
    cmd = [binary, "run", "--model", model, "--input", inp, "--output", out]
    if case["backward"]:
        cmd.append("--backward")
    if case["grads"]:
        cmd += ["--grads", ",".join(case["grads"])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        res.report(False, name, f"could not run {' '.join(cmd)}: {exc}")
        return None
    if proc.returncode != 0:
        res.report(False, name, f"exit code {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
        return None
    try:
        got, _ = st.load(out)
    except (OSError, ValueError) as exc:
        res.report(False, name, f"cannot read the output file: {exc}")
        return None

    y_ref, g_ref = torch_reference(cfg, p, x, dy)
    ref = {"y": y_ref}
    ref.update({f"grad.{n}": g for n, g in g_ref.items()})
    if not case["backward"]:
        want = ["y"]
    else:
        want = ["y"] + [f"grad.{n}" for n in (case["grads"] or ["x"] + list(p))]
    problems, errs = [], {}
    for key in want:
        if key not in got:
            problems.append(f"missing {key}")
            continue
        if file_dtype(got[key]) != dtype:
            problems.append(f"{key} has dtype {file_dtype(got[key])}, expected {dtype}")
        if got[key].shape != ref[key].shape:
            problems.append(f"{key} has shape {list(got[key].shape)}, expected {list(ref[key].shape)}")
            continue
        errs[key] = rel_err(from_file_dtype(got[key]), ref[key])
        if not errs[key] <= TOL[dtype]:
            problems.append(f"{key} rel err {errs[key]:.3e} > {TOL[dtype]:.0e}")
    extra = sorted(set(got) - set(want))
    if extra:
        problems.append(f"unexpected tensors {extra}")
    worst = max(errs, key=errs.get) if errs else None
    summary = f"{dtype}, {len(errs)} tensors, max rel err {errs[worst]:.2e} ({worst})" if worst else "no tensors"
    res.report(not problems, name, summary + ("; " + "; ".join(problems) if problems else ""))
    return errs


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} <path to the radargate binary>")
        print("0 passed, 1 failed")
        return 2
    binary = argv[1]
    res = Results()
    cases = cli_cases()
    with tempfile.TemporaryDirectory(prefix="radargate_torch_") as tmp:
        self_checks(res, cases, tmp)
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            res.report(False, "cli", f"'{binary}' is not an executable file")
        else:
            worst = {dt: 0.0 for dt in TOL}
            count = {dt: 0 for dt in TOL}
            for i, case in enumerate(cases):
                errs = cli_check(res, binary, case, 2000 + i, tmp)
                count[case["dtype"]] += 1
                if errs:
                    worst[case["dtype"]] = max(worst[case["dtype"]], max(errs.values()))
            print("max rel err over all cases: " + ", ".join(
                f"{dt} {worst[dt]:.2e} (tol {TOL[dt]:.0e}, {count[dt]} cases)" for dt in TOL if count[dt]))
    print(f"{res.passed} passed, {res.failed} failed")
    return 0 if res.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
