#!/usr/bin/python3
"""Tests of `radargate import-peft`, files of many layers, `--layer` and `radargate info`, on
adapters and base models written by Hugging Face PEFT and transformers themselves
(tests/peft/fixtures, made by scripts/python/make_peft_fixtures.py; versions in VERSIONS.json).
Needs numpy only.

    peft_tests.py --radargate BIN --workdir DIR CASE
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts", "python"))
import safetensors_np as st  # noqa: E402

FIX = os.path.join(HERE, "fixtures")


class Ctx:
    def __init__(self, exe, work, runtime=None):
        self.exe, self.work, self.runtime = exe, work, runtime

    def run(self, *args, expect=0):
        p = subprocess.run([self.exe, *args], capture_output=True, text=True, cwd=FIX)
        if p.returncode != expect:
            raise AssertionError(f"radargate {' '.join(args)}: exit {p.returncode}, expected {expect}\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def path(self, name):
        return os.path.join(self.work, name)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def adapter(name):
    return os.path.join(FIX, "adapters", name)


def load(path):
    return st.load(path)[0]


def f32_close(got, want, what, factor=64):
    """Equal to float32 rounding: |got - want| <= factor * eps32 * (|want| summed scale)."""
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())
    tol = factor * np.finfo(np.float32).eps * scale
    check(err <= tol, f"{what}: max |error| {err:.3e} > {tol:.3e}")
    return err


def run_layers(c, model, expected, tag):
    """Runs every layer of `model` on the x.<module> of `expected`; compares with y.<module>."""
    exp = load(expected)
    worst = 0.0
    modules = [k[2:] for k in exp if k.startswith("x.")]
    check(modules, f"{expected}: no modules")
    for m in modules:
        inp, out = c.path(f"{tag}.{m}.in.safetensors"), c.path(f"{tag}.{m}.out.safetensors")
        st.save(inp, {"x": np.asarray(exp["x." + m], np.float32)})
        c.run("run", "--model", model, "--layer", m, "--input", inp, "--output", out)
        y = load(out)["y"]
        worst = max(worst, f32_close(y, exp["y." + m], f"{tag} {m}"))
    print(f"{tag}: {len(modules)} modules, max |radargate - PEFT| = {worst:.3e}")
    return modules


def imp(c, out, adapters, *extra, variant="sum", expect=0):
    args = ["import-peft", "--variant", variant, "--output", out, "--quiet"]
    for a in adapters:
        args += ["--adapter", adapter(a)]
    return c.run(*args, *extra, expect=expect)


# --- exactness against PEFT's own forward ---------------------------------------------------------

def exact_case(c, case):
    cases = json.load(open(os.path.join(FIX, "cases.json")))
    spec = cases[case]
    model = c.path(case + ".safetensors")
    imp(c, model, spec["adapters"], "--base", os.path.join(FIX, spec["base"]))
    run_layers(c, model, os.path.join(FIX, "expected", case + ".safetensors"), case)


def case_exact_plain(c): exact_case(c, "plain")
def case_exact_two_ranks(c): exact_case(c, "two_ranks")
def case_exact_rslora(c): exact_case(c, "rslora")
def case_exact_patterns(c): exact_case(c, "patterns")
def case_exact_bf16(c): exact_case(c, "bf16")
def case_exact_mixed(c): exact_case(c, "mixed")
def case_exact_fan_in_fan_out(c): exact_case(c, "gpt2_fan_in_fan_out")


def case_patterns_rule(c):
    """The scalings PEFT 0.13.2's matching rule gives, read back from the written file."""
    model = c.path("patterns_rule.safetensors")
    imp(c, model, ["patterns"])
    t = load(model)
    want = {  # module: (r, alpha)
        "model.layers.0.self_attn.q_proj": (2, 8),   # rank key q_proj
        "model.layers.0.self_attn.v_proj": (3, 8),   # rank key layers.0.self_attn.v_proj
        "model.layers.1.self_attn.q_proj": (2, 8),   # rank key q_proj matches first: alpha stays 8
        "model.layers.1.self_attn.v_proj": (4, 5),   # alpha key v_proj
    }
    for m, (r, alpha) in want.items():
        s = float(t[m + ".lora.scale"][0])
        check(abs(s - alpha / r) < 1e-6, f"{m}: scale {s}, expected {alpha}/{r}")
        check(t[m + ".lora.A"].shape[1] == r, f"{m}: rank {t[m + '.lora.A'].shape}")
    print("patterns: r and alpha per module as PEFT 0.13.2 matches them")


def case_sharded_base(c):
    """A sharded base (model.safetensors.index.json) gives the same tensors as the single file."""
    a, b = c.path("single.safetensors"), c.path("sharded.safetensors")
    imp(c, a, ["plain", "rank2"], "--base", os.path.join(FIX, "llama"))
    imp(c, b, ["plain", "rank2"], "--base", os.path.join(FIX, "llama_sharded"))
    imp(c, c.path("single_file.safetensors"), ["plain"], "--base", os.path.join(FIX, "llama", "model.safetensors"))
    ta, tb = load(a), load(b)
    check(sorted(ta) == sorted(tb), "different tensor names")
    for k in ta:
        check(np.array_equal(ta[k], tb[k]), f"{k} differs between single and sharded base")
    shards = [f for f in os.listdir(os.path.join(FIX, "llama_sharded")) if f.endswith(".safetensors")]
    check(len(shards) > 1, f"expected several shards, found {shards}")
    print(f"sharded base ({len(shards)} shards) = single file: {len(ta)} tensors equal")


def case_no_base(c):
    """Without --base, y is the LoRA part only: PEFT's y minus the base's W0 x."""
    model = c.path("nobase.safetensors")
    imp(c, model, ["plain", "rank2"])
    base = load(os.path.join(FIX, "llama", "model.safetensors"))
    exp = load(os.path.join(FIX, "expected", "two_ranks.safetensors"))
    for m in [k[2:] for k in exp if k.startswith("x.")]:
        inp, out = c.path("nb.in.safetensors"), c.path("nb.out.safetensors")
        x = np.asarray(exp["x." + m], np.float32)
        st.save(inp, {"x": x})
        c.run("run", "--model", model, "--layer", m, "--input", inp, "--output", out)
        want = exp["y." + m].astype(np.float64) - x.astype(np.float64) @ base[m + ".weight"].astype(np.float64).T
        f32_close(load(out)["y"], want, f"no base {m}", factor=256)
    print("no base: y = PEFT's output - W0 x")


def case_gate_init(c):
    """radargate variant: gate and angle parameters are init's, layer j from seed + j."""
    model = c.path("rg.safetensors")
    imp(c, model, ["plain", "rank2"], "--seed", "7", variant="radargate")
    t = load(model)
    names = json.loads(st.load(model)[1]["radargate.layers"])
    check([n["name"] for n in names][:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"],
          f"layer order {names}")
    for j, n in enumerate(names):
        m = n["name"]
        d, d_in = t[m + ".lora.B"].shape[1], t[m + ".lora.A"].shape[2]
        ref = c.path(f"init{j}.safetensors")
        c.run("init", "--variant", "radargate", "--d-in", str(d_in), "--d", str(d), "--experts", "2", "--rank", "4",
              "--seed", str(7 + j), "--no-base", "--output", ref)
        r = load(ref)
        for p in ["map.M", "angle.Wx", "angle.Wv", "angle.Wc", "angle.U", "angle.bias", "stretch.Wg", "stretch.bg",
                  "stretch.ws"]:
            check(np.array_equal(r[p], t[m + "." + p]), f"{m}.{p} differs from init --seed {7 + j}")
    # verify runs on a layer of it
    exp = load(os.path.join(FIX, "expected", "two_ranks.safetensors"))
    inp = c.path("rg.in.safetensors")
    m = names[0]["name"]
    st.save(inp, {"x": np.asarray(exp["x." + m], np.float32)})
    p = c.run("verify", "--model", model, "--layer", m, "--input", inp, "--json")
    check(json.loads(p.stdout)["layer"] == m, "verify --json names the layer")
    print("radargate gate: init's parameters from seed + j; verify reads a layer")


# --- refusals ----------------------------------------------------------------------------------------

REFUSALS = {
    "dora": (["plain", "dora"], "adapter '{dir}': module 'model.layers.0.self_attn.q_proj': use_dora is true"),
    "modules_to_save": (["modules_to_save"], "adapter '{dir}': module 'lm_head': listed in modules_to_save"),
    "embedding": (["embedding"], "adapter '{dir}': module 'model.embed_tokens': LoRA on an embedding"),
    "conv": (["conv"], "adapter '{dir}': module 'conv': LoRA on a convolution"),
    "bias": (["bias_all"], "adapter '{dir}': module 'model.layers.0.self_attn.q_proj': bias is \"all\""),
    "modules": (["plain", "q_only"],
                "adapter '{dir}': module 'model.layers.0.self_attn.v_proj': not adapted here, but adapter"),
    "shapes": (["plain", "wide"], "adapter '{dir}': module 'model.layers.0.self_attn.q_proj': shape d_in 24, d 24 "
                                  "disagrees with adapter"),
}


def case_refusals(c):
    out = c.path("refused.safetensors")
    with open(out, "wb") as f:
        f.write(b"keep me")
    for what, (ads, msg) in REFUSALS.items():
        p = imp(c, out, ads, "--base", os.path.join(FIX, "llama"), expect=1)
        lines = p.stderr.strip().splitlines()
        want = "radargate import-peft: error: " + msg.format(dir=adapter(ads[-1]))
        check(len(lines) == 1, f"{what}: expected one error line, found {lines}")
        check(lines[0].startswith(want), f"{what}: expected\n  {want}\nfound\n  {lines[0]}")
        check(open(out, "rb").read() == b"keep me", f"{what}: the existing output file was changed")
        check(not [f for f in os.listdir(c.work) if ".tmp." in f], f"{what}: a temporary file was left")
        print(f"refused {what}: {lines[0][len('radargate import-peft: error: '):][:110]}...")
    # --modules picks modules every adapter adapts: the q_only pair then imports
    imp(c, c.path("q.safetensors"), ["plain", "q_only"], "--modules", r"q_proj$")
    # bad base and bad regex
    p = imp(c, out, ["plain"], "--base", os.path.join(FIX, "gpt2"), expect=1)
    check("has no tensor 'model.layers.0.self_attn.q_proj.weight'" in p.stderr, p.stderr)
    p = imp(c, out, ["plain"], "--modules", "(", expect=1)
    check("option --modules" in p.stderr, p.stderr)
    p = c.run("import-peft", "--variant", "sum", "--output", out, expect=2)
    check("option --adapter is required" in p.stderr, p.stderr)
    p = c.run("import-peft", "--variant", "sum", "--output", out, "--adapter", expect=2)
    check("option --adapter needs a value (DIR)" in p.stderr, p.stderr)


# --- --layer and info -----------------------------------------------------------------------------

def case_layer_option(c):
    model = c.path("multi.safetensors")
    imp(c, model, ["plain"], "--base", os.path.join(FIX, "llama"))
    inp = c.path("multi.in.safetensors")
    st.save(inp, {"x": np.ones((2, 16), np.float32)})
    names = ", ".join(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                       "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"])
    for cmd in (["run", "--output", c.path("o.safetensors")], ["verify"]):
        p = c.run(cmd[0], "--model", model, "--input", inp, *cmd[1:], expect=1)
        check(f"holds 4 layers; choose one with --layer NAME: {names}" in p.stderr, p.stderr)
        p = c.run(cmd[0], "--model", model, "--input", inp, "--layer", "nope", *cmd[1:], expect=1)
        check(f"no layer 'nope'; the file holds 4 layers: {names}" in p.stderr, p.stderr)
    p = c.run("bench", "--model", model, "--tokens", "4", "--repeat", "1", expect=1)
    check("choose one with --layer NAME" in p.stderr, p.stderr)
    p = c.run("bench", "--model", model, "--layer", "model.layers.1.self_attn.v_proj", "--tokens", "4", "--repeat", "1",
              "--json")
    j = json.loads(p.stdout)
    check(j["d_in"] == 16 and j["d"] == 8 and j["experts"] == 1 and j["base"], p.stdout)
    p = c.run("bench", "--model", model, "--variant", "sum", "--tokens", "4", expect=2)
    check("comes from the --model file" in p.stderr, p.stderr)
    # one-layer files: unchanged, and --layer is an error there
    one = c.path("one.safetensors")
    c.run("init", "--variant", "softmax", "--d-in", "16", "--d", "4", "--experts", "2", "--rank", "2", "--output", one)
    c.run("run", "--model", one, "--input", inp, "--output", c.path("o1.safetensors"))
    p = c.run("run", "--model", one, "--input", inp, "--output", c.path("o1.safetensors"), "--layer", "x", expect=1)
    check("one-layer file" in p.stderr, p.stderr)
    print("--layer: required with several layers, names listed; one-layer files unchanged")


def case_info(c):
    model = c.path("info.safetensors")
    imp(c, model, ["plain", "rank2"], "--base", os.path.join(FIX, "llama"), "--dtype", "BF16")
    p = c.run("info", "--model", model, "--json")
    j = json.loads(p.stdout)
    check(j["named"] and len(j["layers"]) == 4, p.stdout)
    l0 = j["layers"][0]
    check(l0["name"] == "model.layers.0.self_attn.q_proj" and l0["variant"] == "sum" and l0["dtype"] == "BF16", l0)
    check(l0["tensors"] == {"lora.A": [2, 4, 16], "lora.B": [2, 16, 4], "lora.scale": [2], "base.W0": [16, 16]}, l0)
    check(l0["parameters"] == 2 * 4 * 16 * 2 + 2 + 256, l0)
    check(j["parameters"] == sum(l["parameters"] for l in j["layers"]), j)
    check(json.loads(j["metadata"]["radargate.import"])["peft_rules"] == "0.13.2", j["metadata"])
    p = c.run("info", "--model", model)
    check("4 layers" in p.stdout and "layer model.layers.1.self_attn.v_proj" in p.stdout and "BF16" in p.stdout, p.stdout)
    one = c.path("one_info.safetensors")
    c.run("init", "--variant", "radargate", "--d-in", "6", "--d", "4", "--experts", "3", "--rank", "2", "--output", one)
    j = json.loads(c.run("info", "--model", one, "--json").stdout)
    check(not j["named"] and j["layers"][0]["name"] == "" and j["layers"][0]["planes"] == 2, j)
    print("info: layers, shapes, dtype, parameter counts (text and JSON)")


# --- the example runtime ------------------------------------------------------------------------------

def case_example_runtime(c):
    """examples/peft_runtime.cpp: variant sum with one adapter gives transformers + PEFT's logits; a
    radargate gate over three adapters reports how far each layer left its experts' cone."""
    check(c.runtime, "--runtime is required")
    ref = load(os.path.join(FIX, "llama_logits.safetensors"))
    check(np.abs(ref["logits"] - ref["base_logits"]).max() > 1e-2, "the adapter must change the logits")
    model = c.path("sum.safetensors")
    imp(c, model, ["plain"], "--base", os.path.join(FIX, "llama"))
    p = subprocess.run([c.runtime, "--base", os.path.join(FIX, "llama"), "--layers", model, "--expect",
                        os.path.join(FIX, "llama_logits.safetensors")], capture_output=True, text=True)
    print(p.stdout, p.stderr)
    check(p.returncode == 0 and ": match" in p.stdout, "logits differ from transformers + PEFT")
    check("4 projections as RadarGate layers" in p.stdout, p.stdout)
    rg = c.path("rg.safetensors")
    imp(c, rg, ["plain", "rank2", "rslora"], "--base", os.path.join(FIX, "llama"), "--seed", "3", variant="radargate")
    p = subprocess.run([c.runtime, "--base", os.path.join(FIX, "llama"), "--layers", rg, "--ids", "3,17,9,28,1,12,5"],
                       capture_output=True, text=True)
    print(p.stdout, p.stderr)
    check(p.returncode == 0, "the runtime failed with a radargate gate")
    rows = [l.split() for l in p.stdout.splitlines() if l.startswith("model.layers.")]
    check(len(rows) == 4 and all(r[1] == "radargate" for r in rows), p.stdout)
    outside = sum(int(r[3].split("/")[0]) for r in rows)
    check(outside > 0, "a random radargate gate should leave the cone on some token")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--runtime", help="the examples/peft_runtime binary (case example_runtime)")
    ap.add_argument("case")
    a = ap.parse_args()
    work = os.path.join(a.workdir, "peft_" + a.case)
    os.makedirs(work, exist_ok=True)
    for f in os.listdir(work):
        os.remove(os.path.join(work, f))
    fn = globals().get("case_" + a.case)
    if fn is None:
        print(f"unknown case {a.case}", file=sys.stderr)
        return 2
    fn(Ctx(os.path.abspath(a.radargate), work, a.runtime and os.path.abspath(a.runtime)))
    print(f"{a.case}: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
