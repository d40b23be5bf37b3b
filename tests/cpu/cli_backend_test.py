#!/usr/bin/python3
"""Command-line tests of the cpu backend: `radargate run --backend cpu` writes the same outputs as
the reference backend, and `radargate bench` measures the same computation on both backends.

`radargate init --dtype BF16` + `run` (the cpu backend keeps lora.A and lora.B in bf16) agrees
with the reference on the same file and with the F32 model to bf16 precision.

    cli_backend_test.py --radargate BIN --workdir DIR run_backends|bench|half
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts", "python"))
import numpy as np  # noqa: E402
import safetensors_np  # noqa: E402

VARIANTS = ["sum", "uniform", "static", "softmax", "topk", "stretch_only", "rotation_only", "radargate"]


def run(cmd, expect=0):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != expect:
        raise AssertionError(f"{' '.join(cmd)}: exit {p.returncode}, expected {expect}\n{p.stdout}{p.stderr}")
    return p


def case_run_backends(a):
    worst = 0.0
    for i, variant in enumerate(VARIANTS):
        model = os.path.join(a.workdir, f"{variant}.safetensors")
        inp = os.path.join(a.workdir, f"{variant}.in.safetensors")
        extra = []
        if variant in ("rotation_only", "radargate"):
            extra = ["--angle-rank", "3", "--planes", "7"] + (["--pairing", "half"] if i % 2 else [])
        if variant == "topk":
            extra += ["--topk", "2"]
        run([a.radargate, "init", "--variant", variant, "--d-in", "19", "--d", "23", "--experts", "3", "--rank", "2",
             "--dtype", "F64", "--seed", str(i + 1), "--output", model, "--write-input", inp, "--tokens", "9"] + extra)
        outs = {}
        for backend, more in (("reference", []), ("cpu", ["--threads", "2"])):
            out = os.path.join(a.workdir, f"{variant}.{backend}.out.safetensors")
            p = run([a.radargate, "run", "--model", model, "--input", inp, "--output", out, "--backward",
                     "--backend", backend] + more)
            assert f"backend {backend}" in p.stdout, p.stdout
            outs[backend], _ = safetensors_np.load(out)
        ref, cpu = outs["reference"], outs["cpu"]
        assert sorted(ref) == sorted(cpu), (variant, sorted(ref), sorted(cpu))
        assert "y" in ref and "grad.x" in ref and "grad.lora.B" in ref, sorted(ref)
        for name in ref:
            scale = max(float(np.max(np.abs(ref[name]))), 1e-300)
            err = float(np.max(np.abs(ref[name] - cpu[name]))) / scale
            worst = max(worst, err)
            assert err <= 1e-10, f"{variant} {name}: relative error {err}"
    print(f"run --backend cpu equals --backend reference for {len(VARIANTS)} variants (worst {worst:.3g})")


def case_bench(a):
    shape = ["--tokens", "7", "--experts", "3", "--d-in", "11", "--d", "13", "--rank", "2", "--angle-rank", "3",
             "--dtype", "f64", "--repeat", "3", "--seed", "4"]
    for variant in ("radargate", "topk", "softmax"):
        res = {}
        for backend in ("reference", "cpu"):
            p = run([a.radargate, "bench", "--variant", variant, "--backend", backend, "--backward", "--json"] + shape)
            j = json.loads(p.stdout)
            for key in ("median_s", "gflops", "peak_rss_mb", "flops", "median_forward_s", "median_backward_s"):
                assert key in j and j[key] > 0, (key, j)
            assert j["backend"] == backend and j["variant"] == variant and j["backward"] is True, j
            assert j["gemm"] in (("none",) if backend == "reference" else ("eigen", "blas")), j
            assert (j["kernels"] == "none") if backend == "reference" else bool(j["kernels"]), j
            res[backend] = j
        c_ref, c_cpu = res["reference"]["checksum"], res["cpu"]["checksum"]
        assert abs(c_ref - c_cpu) <= 1e-9 * max(1.0, abs(c_ref)), (variant, c_ref, c_cpu)
        assert res["reference"]["flops"] == res["cpu"]["flops"], res
    p = run([a.radargate, "bench", "--variant", "radargate"] + shape)
    assert "GFLOP/s" in p.stdout and "peak RSS" in p.stdout, p.stdout
    for bad, msg in ((["--backend", "gpu"], "--backend"), (["--backend", "reference", "--threads", "2"], "--threads"),
                     (["--dtype", "f16"], "--dtype"), (["--planes", "9"], "--planes")):
        p = run([a.radargate, "bench", "--variant", "radargate"] + shape + bad, expect=2)
        assert msg in p.stderr, p.stderr
    print("bench: same checksum and FLOP count on both backends; bad options exit 2")


def case_half(a):
    worst_ref, worst_f32 = 0.0, 0.0
    for i, variant in enumerate(VARIANTS):
        extra = ["--angle-rank", "3", "--planes", "9"] if variant in ("rotation_only", "radargate") else []
        outs = {}
        for dtype in ("F32", "BF16"):
            model = os.path.join(a.workdir, f"{variant}.{dtype}.safetensors")
            inp = os.path.join(a.workdir, f"{variant}.{dtype}.in.safetensors")
            run([a.radargate, "init", "--variant", variant, "--d-in", "37", "--d", "29", "--experts", "4", "--rank", "3",
                 "--dtype", dtype, "--seed", str(i + 11), "--output", model, "--write-input", inp, "--tokens", "5"] + extra)
            for backend in ("reference", "cpu") if dtype == "BF16" else ("cpu",):
                out = os.path.join(a.workdir, f"{variant}.{dtype}.{backend}.out.safetensors")
                run([a.radargate, "run", "--model", model, "--input", inp, "--output", out, "--backward",
                     "--backend", backend])
                t, _ = safetensors_np.load(out)
                outs[dtype, backend] = {k: np.asarray(safetensors_np.bf16_to_float32(v) if dtype == "BF16" else v,
                                                      np.float64) for k, v in t.items()}
            if dtype == "BF16":
                j = json.loads(run([a.radargate, "bench", "--model", model, "--tokens", "2", "--repeat", "1",
                                    "--json"]).stdout)
                assert j["dtype"] == "bf16" and j["weight_bytes"] > 0, j
        half, ref, f32 = outs["BF16", "cpu"], outs["BF16", "reference"], outs["F32", "cpu"]
        assert sorted(half) == sorted(ref) == sorted(f32), (sorted(half), sorted(ref))
        for name in ref:
            h, r = half[name], ref[name]
            scale = max(float(np.max(np.abs(r))), 1e-30)
            err = float(np.max(np.abs(h - r))) / scale  # outputs are written in bf16: 2^-8 relative each
            worst_ref = max(worst_ref, err)
            assert err <= 1e-2, f"{variant} {name}: bf16 cpu vs bf16 reference, relative error {err}"
        for name in ("y", "grad.x"):
            h, f = half[name], f32[name]
            err = float(np.max(np.abs(h - f))) / max(float(np.max(np.abs(f))), 1e-30)
            worst_f32 = max(worst_f32, err)
            assert err <= 5e-2, f"{variant} {name}: BF16 model vs F32 model, relative error {err}"
    print(f"run with a BF16 model: cpu (bf16 experts) equals the reference to {worst_ref:.3g}, "
          f"the F32 model to {worst_f32:.3g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("case", choices=("run_backends", "bench", "half"))
    a = ap.parse_args()
    a.workdir = os.path.join(a.workdir, a.case)
    os.makedirs(a.workdir, exist_ok=True)
    {"run_backends": case_run_backends, "bench": case_bench, "half": case_half}[a.case](a)


if __name__ == "__main__":
    main()
