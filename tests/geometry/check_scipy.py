#!/usr/bin/python3
"""`radargate cone` against SciPy on random problems, degenerate families included.

    check_scipy.py --radargate BIN --workdir DIR [--problems N] [--seed S]

For every problem (V : [d, N], y : [d]) of every family (generic; duplicate, zero and collinear
columns; N > d; rank deficient; entries near 1e-20 and 1e20; column norms spread over 1e-20..1e20)
nearly collinear columns; points 1e-3 .. 1e-7 outside the boundary; larger problems)
the problems are written with scripts/python/safetensors_np.py, grouped by shape, and sent through
`radargate cone` and `radargate cone --hull`. Then:

  1. wherever scipy.optimize.nnls's own answer passes a KKT check (relative, 1e-9), both agree on
     inside/outside (SciPy's verdict: ||V x - y|| <= tol ||y||) and the residuals agree to 1e-8
     relative to ||y|| (float64);
  2. our certificate (from the output file alone) verifies on every problem, in this script's own
     float64 arithmetic: inside -> lambda >= 0 with ||V lambda - y|| <= tol ||y||; outside -> a unit
     w with v_j . w <= dual_tol ||v_j|| and w . y > tol ||y||. The hull likewise (lambda sums to
     1; the hyperplane (w, offset) has w . v_j <= offset and w . y - offset > tol * scale);
  3. hull verdicts agree with SciPy on the lifted problem (y, 1) in cone{(v_j, 1)} (an exact
     reformulation of hull membership) wherever SciPy's lifted answer passes its KKT check and
     is clearly inside (relative residual < 1e-12) or clearly outside (> 1e-6).

Prints the figures and a final line "N passed, M failed"; the exit code is non-zero on any failure.
A missing SciPy is a failure, not a skip.
"""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts", "python"))

try:
    import numpy as np
    import scipy
    import scipy.optimize
except ImportError as e:  # a missing dependency fails the test
    print("FAILED: this test needs numpy and scipy (python3-scipy): %s" % e)
    print("0 passed, 1 failed")
    sys.exit(1)

import safetensors_np  # noqa: E402

TOL = 1e-9        # verdict tolerance (radargate cone's default)
DUAL_TOL = 1e-9   # cone certificate: v_j . w / ||v_j|| (radargate cone's default)
KKT_TOL = 1e-9    # SciPy's answer must pass this to count as a reference
RES_TOL = 1e-8    # residual agreement, relative to ||y||

FIGURES = {"max_dual": 0.0}  # largest v_j . w / ||v_j|| over the verified cone certificates

FAMILIES = ["generic", "duplicate", "zero_column", "collinear", "wide (N > d)", "rank_deficient",
            "scale 1e-20", "scale 1e20", "column scales 1e-20..1e20", "near boundary", "nearly collinear",
            "larger (d <= 24, N <= 48)"]
YKINDS = ["cone inside", "cone face", "hull inside", "random", "zero", "a column", "minus a column"]


def make_problem(rng, family, ykind):
    d = int(rng.integers(1, 9))
    n = int(rng.integers(1, 11))
    if family == "wide (N > d)":
        d = int(rng.integers(1, 5))
        n = d + int(rng.integers(1, 9))
    if family.startswith("larger"):
        d = int(rng.integers(8, 25))
        n = int(rng.integers(8, 49))
    V = rng.standard_normal((d, n))
    a, b = int(rng.integers(n)), int(rng.integers(n))
    if family == "duplicate":
        V[:, b] = V[:, a]
    elif family == "zero_column":
        V[:, a] = 0.0
    elif family == "collinear":
        V[:, b] = rng.standard_normal() * 3.0 * V[:, a]  # either sign
    elif family == "nearly collinear":  # columns 1e-7 .. 1e-10 apart in angle
        V[:, b] = V[:, a] + 10.0 ** -rng.integers(7, 11) * rng.standard_normal(d) * np.linalg.norm(V[:, a])
    elif family == "rank_deficient":
        k = int(rng.integers(1, min(d, n) + 1))
        V = rng.standard_normal((d, k)) @ rng.standard_normal((k, n))
    lam = np.abs(rng.standard_normal(n))
    if ykind == "cone face":
        lam[rng.random(n) < 0.5] = 0.0
    if ykind == "hull inside":
        lam /= lam.sum()
    if ykind in ("cone inside", "cone face", "hull inside"):
        y = V @ lam
    elif ykind == "random":
        y = rng.standard_normal(d) * 2.0
    elif ykind == "zero":
        y = np.zeros(d)
    elif ykind == "a column":
        y = V[:, a].copy()
    else:
        y = -V[:, a]
    if family == "near boundary":
        # The nearest point q of the cone to a random y, pushed out along the normal by a relative
        # 1e-3 .. 1e-7: outside at a known small distance.
        z = rng.standard_normal(d) * 2.0
        x, _ = scipy.optimize.nnls(V, z)
        q = V @ x
        r = z - q
        if np.linalg.norm(r) > 1e-6 * np.linalg.norm(z) and np.linalg.norm(q) > 1e-3:
            y = q + 10.0 ** -rng.integers(3, 8) * np.linalg.norm(q) * r / np.linalg.norm(r)
    scale = {"scale 1e-20": 1e-20, "scale 1e20": 1e20}.get(family, 1.0)
    V, y = V * scale, y * scale
    if family == "column scales 1e-20..1e20":
        V = V * 10.0 ** rng.integers(-20, 21, size=n).astype(float)
    return V, y


def scipy_nnls(V, y):
    """-> (x, rnorm, kkt_ok) with the KKT check relative to unit columns and ||y||."""
    try:
        x, rnorm = scipy.optimize.nnls(V, y)
    except RuntimeError:  # SciPy's iteration cap
        return None, None, False
    yn = np.linalg.norm(y)
    if yn == 0:
        return x, rnorm, bool(np.all(x == 0))
    r = (y - V @ x) / yn
    ok = bool(np.all(x >= 0)) and np.all(np.isfinite(x))
    for j in range(V.shape[1]):
        cn = np.linalg.norm(V[:, j])
        if cn == 0:
            continue
        w = V[:, j] @ r / cn
        if w > KKT_TOL or (x[j] > 0 and abs(w) > KKT_TOL):
            ok = False
    return x, rnorm, ok


def check_cone_certificate(V, y, lam, inside, cert):
    yn = np.linalg.norm(y)
    if inside == 1:
        if not (np.all(lam >= 0) and np.all(np.isfinite(lam))):
            return False, "lambda has a negative or non-finite entry"
        res = np.linalg.norm(V @ lam - y)
        return (res <= TOL * yn if yn > 0 else res == 0), "residual %.3g vs %.3g" % (res, TOL * yn)
    if inside == 0:
        w = cert
        wn = np.linalg.norm(w)
        if not (abs(wn - 1) < 1e-12 and yn > 0):
            return False, "certificate is not a unit vector (norm %.17g)" % wn
        worst = -np.inf
        for j in range(V.shape[1]):
            cn = np.linalg.norm(V[:, j])
            if cn > 0:
                worst = max(worst, V[:, j] @ w / cn)
        margin = w @ y / yn
        FIGURES["max_dual"] = max(FIGURES["max_dual"], worst)
        return (worst <= DUAL_TOL and margin > TOL), "max v.w/|v| %.3g, w.y/|y| %.3g" % (worst, margin)
    return False, "undetermined"


def check_hull_certificate(V, y, lam, inside, cert, offset):
    scale = max([np.linalg.norm(y)] + [np.linalg.norm(V[:, j]) for j in range(V.shape[1])])
    if inside == 1:
        if not (np.all(lam >= 0) and np.all(np.isfinite(lam))):
            return False, "lambda has a negative or non-finite entry"
        if abs(lam.sum() - 1) > TOL:
            return False, "lambda sums to %.17g" % lam.sum()
        res = np.linalg.norm(V @ lam - y)
        return (res <= TOL * scale if scale > 0 else res == 0), "residual %.3g vs %.3g" % (res, TOL * scale)
    if inside == 0:
        w = cert
        wn = np.linalg.norm(w)
        if not (wn > 0 and scale > 0):
            return False, "empty certificate"
        # w . v_j <= offset, up to this script's own float64 rounding of the dot products.
        slack = 64 * np.finfo(float).eps * wn * scale * V.shape[0]
        worst = max(V[:, j] @ w - offset for j in range(V.shape[1]))
        margin = (w @ y - offset) / (wn * scale)
        return (worst <= slack and margin > TOL), "max w.v - b %.3g, margin %.3g" % (worst, margin)
    return False, "undetermined"


def run_cone(args, workdir, tag, Vs, ys, hull):
    src = os.path.join(workdir, "%s.safetensors" % tag)
    dst = os.path.join(workdir, "%s.out.safetensors" % tag)
    safetensors_np.save(src, {"V": np.ascontiguousarray(Vs), "y": np.ascontiguousarray(ys)})
    cmd = [args.radargate, "cone", "--input", src, "--output", dst, "--threads", "2"] + (["--hull"] if hull else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise SystemExit("FAILED: %s exited with %d: %s" % (" ".join(cmd), p.returncode, p.stderr))
    out, _ = safetensors_np.load(dst)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--problems", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=20240611)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="scipy_", dir=args.workdir)
    rng = np.random.default_rng(args.seed)

    problems = []  # (family, ykind, V, y)
    for i in range(args.problems):
        fam = FAMILIES[i % len(FAMILIES)]
        yk = YKINDS[(i // len(FAMILIES)) % len(YKINDS)]
        V, y = make_problem(rng, fam, yk)
        problems.append((fam, yk, V, y))

    # Group by shape; one `radargate cone` call per group and set.
    groups = {}
    for k, (_, _, V, _) in enumerate(problems):
        groups.setdefault(V.shape, []).append(k)
    ours = {"cone": [None] * len(problems), "hull": [None] * len(problems)}
    for gi, (shape, idx) in enumerate(sorted(groups.items())):
        Vs = np.stack([problems[k][2] for k in idx])
        ys = np.stack([problems[k][3] for k in idx])
        for s in ("cone", "hull"):
            out = run_cone(args, workdir, "g%d_%s" % (gi, s), Vs, ys, s == "hull")
            for row, k in enumerate(idx):
                ours[s][k] = {key: out[key][row] for key in out}

    stats = {f: dict(n=0, ref=0, agree=0, res_ok=0, max_dr=0.0, cert=0, hcert=0, lifted=0, lifted_agree=0,
                     inside=0, outside=0, hin=0, hout=0) for f in FAMILIES}
    failures = []
    passed = 0
    for k, (fam, yk, V, y) in enumerate(problems):
        st = stats[fam]
        st["n"] += 1
        ok = True
        yn = np.linalg.norm(y)
        c, h = ours["cone"][k], ours["hull"][k]
        ins = int(c["inside"])
        st["inside"] += ins == 1
        st["outside"] += ins == 0
        st["hin"] += int(h["inside"]) == 1
        st["hout"] += int(h["inside"]) == 0
        # 2. our certificates
        cok, why = check_cone_certificate(V, y, c["lambda"], ins, c["certificate"])
        st["cert"] += cok
        if not cok:
            ok = False
            failures.append("problem %d (%s, y %s, d=%d N=%d): cone certificate does not verify: %s"
                            % (k, fam, yk, V.shape[0], V.shape[1], why))
        hok, why = check_hull_certificate(V, y, h["lambda"], int(h["inside"]), h["certificate"], float(h["offset"]))
        st["hcert"] += hok
        if not hok:
            ok = False
            failures.append("problem %d (%s, y %s, d=%d N=%d): hull certificate does not verify: %s"
                            % (k, fam, yk, V.shape[0], V.shape[1], why))
        # 1. SciPy where its answer passes KKT
        x, rnorm, kkt = scipy_nnls(V, y)
        if kkt:
            st["ref"] += 1
            s_inside = rnorm <= TOL * yn if yn > 0 else True
            agree = (ins == 1) == s_inside and ins != 2
            st["agree"] += agree
            dr = abs(float(c["residual"]) - rnorm) / (yn if yn > 0 else 1.0)
            st["max_dr"] = max(st["max_dr"], dr)
            st["res_ok"] += dr <= RES_TOL
            if not agree or dr > RES_TOL:
                ok = False
                failures.append("problem %d (%s, y %s): SciPy (KKT ok) says %s with residual %.17g, radargate says %s "
                                "with residual %.17g" % (k, fam, yk, "inside" if s_inside else "outside", rnorm,
                                                          ["outside", "inside", "undetermined"][ins], c["residual"]))
        # 3. hull verdict against SciPy on the lifted cone problem
        Vl = np.vstack([V, np.ones((1, V.shape[1]))])
        sc = max(np.abs(V).max(), np.abs(y).max(), 1e-300)
        Vl[:-1] /= sc
        yl = np.concatenate([y / sc, [1.0]])
        xl, rl, kl = scipy_nnls(Vl, yl)
        if kl:
            rel = rl / np.linalg.norm(yl)
            if rel < 1e-12 or rel > 1e-6:
                st["lifted"] += 1
                agree = (int(h["inside"]) == 1) == (rel < 1e-12)
                st["lifted_agree"] += agree
                if not agree:
                    ok = False
                    failures.append("problem %d (%s, y %s): lifted SciPy says %s (relative residual %.3g), radargate "
                                    "--hull says %d" % (k, fam, yk, "inside" if rel < 1e-12 else "outside", rel,
                                                        int(h["inside"])))
        passed += ok

    print("radargate cone vs scipy.optimize.nnls (SciPy %s, numpy %s), seed %d, %d problems"
          % (scipy.__version__, np.__version__, args.seed, len(problems)))
    print("tol %g, dual_tol %g; SciPy reference = answers passing a KKT check at %g; residuals agree to %g x ||y||"
          % (TOL, DUAL_TOL, KKT_TOL, RES_TOL))
    hdr = "%-27s %5s %9s %9s %9s %9s %10s %9s %9s %12s" % (
        "family", "n", "cone in", "SciPy ref", "agree", "resid ok", "max |dr|/|y|", "cone cert", "hull cert",
        "hull vs lift")
    print(hdr)
    print("-" * len(hdr))
    tot = dict.fromkeys(["n", "ref", "agree", "res_ok", "cert", "hcert", "lifted", "lifted_agree", "inside"], 0)
    max_dr = 0.0
    for f in FAMILIES:
        st = stats[f]
        for key in tot:
            tot[key] += st[key]
        max_dr = max(max_dr, st["max_dr"])
        print("%-27s %5d %4d/%-4d %9d %9d %9d %12.2e %9d %9d %7d/%-4d" % (
            f, st["n"], st["inside"], st["n"], st["ref"], st["agree"], st["res_ok"], st["max_dr"], st["cert"],
            st["hcert"], st["lifted_agree"], st["lifted"]))
    print("-" * len(hdr))
    print("%-27s %5d %4d/%-4d %9d %9d %9d %12.2e %9d %9d %7d/%-4d" % (
        "all", tot["n"], tot["inside"], tot["n"], tot["ref"], tot["agree"], tot["res_ok"], max_dr, tot["cert"],
        tot["hcert"], tot["lifted_agree"], tot["lifted"]))
    print("SciPy's answer failed its KKT check on %d of %d problems (not used as a reference there; our certificates "
          "were still checked)" % (tot["n"] - tot["ref"], tot["n"]))
    print("largest v_j . w / ||v_j|| over all outside-the-cone certificates (must be <= %g): %.3g"
          % (DUAL_TOL, FIGURES["max_dual"]))
    for line in failures[:20]:
        print("FAIL " + line)
    if len(failures) > 20:
        print("... %d more failures" % (len(failures) - 20))
    failed = len(problems) - passed
    if len(problems) < 1000:
        print("FAIL fewer than 1000 problems (%d)" % len(problems))
        failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
