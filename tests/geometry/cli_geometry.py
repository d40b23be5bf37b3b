#!/usr/bin/python3
"""Command-line tests of `radargate cone` and `radargate verify`.

    cli_geometry.py --radargate BIN --workdir DIR CASE

Bad input (shape mismatch, non-finite values, empty V or no tokens, missing or unknown tensors,
bad options) must give the exact one-line message naming the file, the tensor, the expected and
the found value, a non-zero exit code, nothing on stdout, and no output file (the directory is
left exactly as it was). The happy paths check answers that are known in closed form.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts", "python"))

import numpy as np  # noqa: E402

import safetensors_np as st  # noqa: E402


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


class Case:
    def __init__(self, radargate, workdir, name):
        self.bin = os.path.abspath(radargate)
        self.dir = tempfile.mkdtemp(prefix="geo_%s_" % name, dir=workdir)
        self.checks = 0

    def path(self, name):
        return os.path.join(self.dir, name)

    def rg(self, *args):
        return subprocess.run([self.bin] + [str(a) for a in args], cwd=self.dir, capture_output=True, text=True,
                              timeout=120)

    def save(self, name, tensors, metadata=None):
        st.save(self.path(name), tensors, metadata)
        return name

    def expect_error(self, args, message, code=1, output="out.safetensors", prefix=False):
        before = sorted(os.listdir(self.dir))
        p = self.rg(*args)
        after = sorted(os.listdir(self.dir))
        where = "radargate " + " ".join(str(a) for a in args)
        lines = p.stderr.splitlines()
        check(p.returncode == code, "%s: expected exit code %d, found %d (stderr %r)" % (where, code, p.returncode, p.stderr))
        check(lines, "%s: expected a message on stderr" % where)
        if code == 1:
            check(len(lines) == 1, "%s: expected one line on stderr, found %r" % (where, p.stderr))
        if prefix:
            check(lines[0].startswith(message), "%s:\n  expected a message starting: %s\n  found: %s" % (where, message, lines[0]))
        else:
            check(lines[0] == message, "%s:\n  expected message: %s\n  found message:    %s" % (where, message, lines[0]))
        check(p.stdout == "", "%s: expected nothing on stdout, found %r" % (where, p.stdout))
        check(not os.path.exists(self.path(output)), "%s: output file %s exists" % (where, output))
        check(after == before, "%s: the directory changed: before %s, after %s" % (where, before, after))
        self.checks += 1

    def cone_error(self, inp, message, extra=(), **kw):
        self.expect_error(["cone", "--input", inp, "--output", "out.safetensors"] + list(extra),
                          "radargate cone: error: " + message, **kw)

    def verify_error(self, model, inp, message, extra=(), **kw):
        self.expect_error(["verify", "--model", model, "--input", inp] + list(extra),
                          "radargate verify: error: " + message, **kw)

    def init(self, variant, name, tokens=6, d_in=6, d=8, experts=3):
        p = self.rg("init", "--variant", variant, "--d-in", d_in, "--d", d, "--experts", experts, "--rank", 2,
                    "--seed", 5, "--output", name + ".safetensors", "--write-input", name + "_in.safetensors",
                    "--tokens", tokens)
        check(p.returncode == 0, "init failed: %s" % p.stderr)
        return name + ".safetensors", name + "_in.safetensors"


def problems():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4))


# --- radargate cone -------------------------------------------------------------------------------

def case_cone_shape_mismatch(c):
    V, y = problems()
    c.cone_error(c.save("ymis.safetensors", {"V": V, "y": np.zeros((3, 5))}),
                 "file 'ymis.safetensors': tensor 'y': expected shape [3, 4] (B and d from V), found [3, 5]")
    c.cone_error(c.save("yb.safetensors", {"V": V, "y": np.zeros((2, 4))}),
                 "file 'yb.safetensors': tensor 'y': expected shape [3, 4] (B and d from V), found [2, 4]")
    c.cone_error(c.save("v2.safetensors", {"V": V[0], "y": y}),
                 "file 'v2.safetensors': tensor 'V': expected shape [B, d, N], found [4, 5]")
    c.cone_error(c.save("y1.safetensors", {"V": V, "y": y.reshape(-1)}),
                 "file 'y1.safetensors': tensor 'y': expected shape [3, 4] (B and d from V), found [12]")


def case_cone_non_finite(c):
    V, y = problems()
    Vn = V.copy()
    Vn[1, 2, 0] = np.nan
    c.cone_error(c.save("vnan.safetensors", {"V": Vn, "y": y}),
                 "file 'vnan.safetensors': tensor 'V': expected finite values, found nan at index [1, 2, 0]")
    yi = y.copy()
    yi[2, 3] = -np.inf
    c.cone_error(c.save("yinf.safetensors", {"V": V, "y": yi}),
                 "file 'yinf.safetensors': tensor 'y': expected finite values, found -inf at index [2, 3]")
    Vf = V.astype(np.float32)
    Vf[0, 0, 4] = np.inf
    c.cone_error(c.save("vinf32.safetensors", {"V": Vf, "y": y.astype(np.float32)}),
                 "file 'vinf32.safetensors': tensor 'V': expected finite values, found inf at index [0, 0, 4]")


def case_cone_empty(c):
    V, y = problems()
    c.cone_error(c.save("n0.safetensors", {"V": np.zeros((3, 4, 0)), "y": y}),
                 "file 'n0.safetensors': tensor 'V': expected a non-empty batch [B, d, N] with B, d, N >= 1, found [3, 4, 0]")
    c.cone_error(c.save("d0.safetensors", {"V": np.zeros((3, 0, 5)), "y": np.zeros((3, 0))}),
                 "file 'd0.safetensors': tensor 'V': expected a non-empty batch [B, d, N] with B, d, N >= 1, found [3, 0, 5]")
    c.cone_error(c.save("b0.safetensors", {"V": np.zeros((0, 4, 5)), "y": np.zeros((0, 4))}),
                 "file 'b0.safetensors': tensor 'V': expected a non-empty batch [B, d, N] with B, d, N >= 1, found [0, 4, 5]")


def case_cone_missing_or_unknown(c):
    V, y = problems()
    c.cone_error(c.save("noy.safetensors", {"V": V}),
                 "file 'noy.safetensors': tensor 'y': missing from the file (expected shape [B, d])")
    c.cone_error(c.save("nov.safetensors", {"y": y}),
                 "file 'nov.safetensors': tensor 'V': missing from the file (expected shape [B, d, N])")
    c.cone_error(c.save("extra.safetensors", {"V": V, "y": y, "Y": y}),
                 "file 'extra.safetensors': tensor 'Y': unknown input name; expected V [B, d, N] and y [B, d]")
    c.cone_error(c.save("int.safetensors", {"V": V.astype(np.int32), "y": y}),
                 "file 'int.safetensors': tensor 'V': expected a floating-point dtype (F64, F32, F16 or BF16), found I32")


def case_cone_bad_usage(c):
    V, y = problems()
    src = c.save("ok.safetensors", {"V": V, "y": y})
    c.cone_error(src, "option --tol: expected a number > 0, found '-1'", extra=["--tol", "-1"], code=2)
    c.cone_error(src, "unknown option '--hul'", extra=["--hul"], code=2)
    c.expect_error(["cone", "--input", src], "radargate cone: error: option --output is required", code=2)


def case_cone_happy_path(c):
    # V = identity in R^3 for every problem: cone = positive orthant, hull = unit simplex.
    pts = np.array([[0.2, 0.3, 0.5], [1.0, -1.0, 0.5], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    V = np.stack([np.eye(3)] * len(pts))
    src = c.save("eye.safetensors", {"V": V, "y": pts})
    p = c.rg("cone", "--input", src, "--output", "cone.safetensors")
    check(p.returncode == 0, "cone failed: %s" % p.stderr)
    check(p.stdout.strip() == "wrote cone.safetensors: 4 problems (cone, d = 3, N = 3): 3 inside, 1 outside, "
                              "0 undetermined", "unexpected summary %r" % p.stdout)
    out, meta = st.load(c.path("cone.safetensors"))
    check(sorted(out) == ["certificate", "inside", "lambda", "residual"], "cone output names: %s" % sorted(out))
    check(out["inside"].dtype == np.uint8, "inside must be U8, found %s" % out["inside"].dtype)
    check(list(out["inside"]) == [1, 0, 1, 1], "inside: %s" % out["inside"])
    check(np.allclose(out["lambda"][0], pts[0], atol=1e-15), "lambda[0] %s" % out["lambda"][0])
    check(np.allclose(out["lambda"][1], [1.0, 0.0, 0.5], atol=1e-15), "lambda[1] %s" % out["lambda"][1])
    check(abs(out["residual"][1] - 1.0) < 1e-15, "residual[1] %r" % out["residual"][1])
    check(np.allclose(out["certificate"][1], [0.0, -1.0, 0.0], atol=1e-15), "certificate[1] %s" % out["certificate"][1])
    check(np.all(out["certificate"][[0, 2, 3]] == 0), "inside rows must have a zero certificate")
    check(json.loads(meta["radargate.geometry"])["set"] == "cone", "metadata %r" % meta)
    p = c.rg("cone", "--input", src, "--output", "hull.safetensors", "--hull", "--threads", "1")
    check(p.returncode == 0, "cone --hull failed: %s" % p.stderr)
    out, _ = st.load(c.path("hull.safetensors"))
    check(sorted(out) == ["certificate", "inside", "lambda", "offset", "residual"], "hull names: %s" % sorted(out))
    check(list(out["inside"]) == [1, 0, 0, 0], "hull inside: %s" % out["inside"])
    check(abs(out["residual"][2] - 2 / np.sqrt(3)) < 1e-15, "hull residual[2] %r" % out["residual"][2])
    check(abs(out["residual"][3] - 1 / np.sqrt(3)) < 1e-15, "hull residual[3] %r" % out["residual"][3])
    w, b = out["certificate"][2], out["offset"][2]
    check(np.allclose(w, np.ones(3) / np.sqrt(3), atol=1e-15) and abs(b - 1 / np.sqrt(3)) < 1e-15,
          "hull certificate %s, %r" % (w, b))
    check(abs(out["lambda"][2].sum() - 1) < 1e-15, "hull lambda must sum to 1")
    c.checks += 1


# --- radargate verify -----------------------------------------------------------------------------

def case_verify_shape_mismatch(c):
    m, _ = c.init("radargate", "m")
    c.verify_error(m, c.save("x7.safetensors", {"x": np.zeros((4, 7), np.float32)}),
                   "file 'x7.safetensors': tensor 'x': expected shape [T, 6] (d_in = 6), found [4, 7]")
    c.verify_error(m, c.save("x64.safetensors", {"x": np.zeros((4, 6))}),
                   "file 'x64.safetensors': tensor 'x': expected dtype F32 (the model's dtype), found F64")
    t, meta = st.load(c.path(m))
    t["lora.B"] = np.concatenate([t["lora.B"], t["lora.B"][:, :, :1]], axis=2)
    c.verify_error(c.save("b3.safetensors", t, meta), "m_in.safetensors",
                   "file 'b3.safetensors': tensor 'lora.B': expected shape [3, 8, 2], found [3, 8, 3]")


def case_verify_non_finite(c):
    m, i = c.init("radargate", "m")
    x, _ = st.load(c.path(i))
    xn = x["x"].copy()
    xn[0, 1] = np.nan
    c.verify_error(m, c.save("xnan.safetensors", {"x": xn}),
                   "file 'xnan.safetensors': tensor 'x': expected finite values, found nan at index [0, 1]")
    t, meta = st.load(c.path(m))
    t["lora.B"] = t["lora.B"].copy()
    t["lora.B"][1, 2, 0] = np.inf
    c.verify_error(c.save("binf.safetensors", t, meta), i,
                   "file 'binf.safetensors': tensor 'lora.B': expected finite values, found inf at index [1, 2, 0]")


def case_verify_empty(c):
    m, i = c.init("radargate", "m")
    c.verify_error(m, c.save("x0.safetensors", {"x": np.zeros((0, 6), np.float32)}),
                   "file 'x0.safetensors': tensor 'x': expected at least one token, found shape [0, 6]")
    t, meta = st.load(c.path(m))
    t["lora.A"] = np.zeros((0, 2, 6), np.float32)
    c.verify_error(c.save("a0.safetensors", t, meta), i, "file 'a0.safetensors': tensor 'lora.A': ", prefix=True)
    c.verify_error(m, c.save("nox.safetensors", {"dy": np.zeros((4, 8), np.float32)}),
                   "file 'nox.safetensors': tensor 'x': missing from the file (expected shape [T, 6])")


def case_verify_bad_usage(c):
    m, i = c.init("softmax", "m")
    c.verify_error(m, i, "option --quantiles: expected numbers in [0, 1], found '2'", extra=["--quantiles", "0.5,2"],
                   code=2)
    c.verify_error(m, i, "option --tol: expected a number > 0, found '0'", extra=["--tol", "0"], code=2)


def case_verify_happy_path(c):
    # Weighted-sum variants: every token inside the cone; normalised ones inside the hull.
    for variant, hull in (("sum", False), ("softmax", True), ("topk", True), ("uniform", True)):
        m, i = c.init(variant, variant, tokens=16)
        p = c.rg("verify", "--model", m, "--input", i, "--json")
        check(p.returncode == 0, "verify %s: exit %d: %s" % (variant, p.returncode, p.stderr))
        r = json.loads(p.stdout)
        check(r["passed"] and r["variant"] == variant and r["tokens"] == 16, "verify %s: %s" % (variant, p.stdout[:300]))
        check(r["sets"]["lora_cone"]["inside"] == 16 and r["sets"]["lora_cone"]["outside"] == 0,
              "%s: lora part must be inside the cone: %s" % (variant, r["sets"]["lora_cone"]))
        check(r["checks"]["weighted_sum_in_cone"]["covered"] == 16, "%s: cone check must cover every token" % variant)
        check((r["checks"]["weighted_sum_in_hull"]["covered"] == 16) == hull, "%s: hull coverage" % variant)
        if hull:
            check(r["sets"]["lora_hull"]["inside"] == 16, "%s: lora part must be inside the hull" % variant)
    # radargate: rotations leave the cone; the table says so.
    m, i = c.init("radargate", "rg", tokens=16)
    p = c.rg("verify", "--model", m, "--input", i, "--json", "--per-token", "--quantiles", "0,0.5,1")
    check(p.returncode == 0, "verify radargate: %s" % p.stderr)
    r = json.loads(p.stdout)
    check(r["sets"]["lora_cone"]["outside"] >= 8, "radargate: expected points outside the cone: %s" % r["sets"]["lora_cone"])
    check(r["sets"]["weighted_sum_cone"]["outside"] == 0 and r["passed"], "radargate: weighted sum must stay inside")
    check(len(r["per_token"]) == 16 and len(r["per_token"][0]["v"]) == 3 and len(r["per_token"][0]["v"][0]) == 8,
          "per-token vectors")
    check(len(r["sets"]["lora_cone"]["distance_quantiles"]) == 3, "quantiles")
    # The per-token points are what the layer computes: p = sum g u.
    for tok in r["per_token"]:
        p_re = np.array(tok["g"]) @ np.array(tok["u"])
        check(np.allclose(p_re, tok["lora_point"], rtol=1e-12, atol=1e-12), "per-token lora point")
    p = c.rg("verify", "--model", m, "--input", i)
    check(p.returncode == 0 and "lora part     p   = sum g_i u_i  cone" in p.stdout and "passed" in p.stdout,
          "table output: %s" % p.stdout)
    c.checks += 1


CASES = {name[5:]: f for name, f in globals().items() if name.startswith("case_")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("case", choices=sorted(CASES))
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    c = Case(a.radargate, a.workdir, a.case)
    try:
        CASES[a.case](c)
    except Failure as e:
        print("FAILED %s: %s" % (a.case, e))
        return 1
    print("passed %s (%d checks)" % (a.case, c.checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
