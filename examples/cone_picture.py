#!/usr/bin/python3
"""Draws the cone of a few expert outputs, the rotated outputs, and where a weighted-sum gate and
RadarGate land, in 2-D and 3-D. Every number comes from the library through the radargate tool:

    radargate init    a RadarGate layer (d = 2 with N = 2 experts; d = 3 with N = 3) and inputs
    radargate verify  --json --per-token: per token the expert outputs v_i, the rotated u_i, the
                      gate weights g, the LoRA part p = sum g_i u_i, the weighted-sum point
                      p_w = sum g_i v_i, and the certified verdicts and distances
    radargate cone    for each drawn token, V = [v_i] and y = p: the nearest point of the cone
                      (V lambda) and the separating certificate w (v_i . w <= 0 < p . w)

usage:  /usr/bin/python3 examples/cone_picture.py [--radargate build/radargate] [--out docs/images]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts", "python"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Polygon  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

import safetensors_np as st  # noqa: E402

C_V, C_U, C_W, C_P, C_CONE, C_CERT = "#1f4e9c", "#e07b00", "#1a9850", "#c51b1b", "#9ecae1", "#555555"


def run(binary, *args, cwd):
    p = subprocess.run([binary] + [str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("radargate %s failed (%d): %s" % (args[0], p.returncode, p.stderr))
    return p.stdout


def layer_tokens(binary, work, d, experts, seed, tokens):
    model, inp = "m%d.safetensors" % d, "x%d.safetensors" % d
    run(binary, "init", "--variant", "radargate", "--d-in", 4, "--d", d, "--experts", experts, "--rank", 1,
        "--angle-rank", 2, "--seed", seed, "--dtype", "F64", "--no-base", "--output", model, "--write-input", inp,
        "--tokens", tokens, cwd=work)
    report = json.loads(run(binary, "verify", "--model", model, "--input", inp, "--json", "--per-token", cwd=work))
    return report


def certify(binary, work, toks, tag):
    """radargate cone on (V = [v_i], y = p) for each token: nearest point and certificate."""
    V = np.stack([np.array(t["v"]).T for t in toks])  # [B, d, N]
    y = np.stack([np.array(t["lora_point"]) for t in toks])
    st.save(os.path.join(work, "%s.safetensors" % tag), {"V": V, "y": y})
    run(binary, "cone", "--input", "%s.safetensors" % tag, "--output", "%s.out.safetensors" % tag, cwd=work)
    out, _ = st.load(os.path.join(work, "%s.out.safetensors" % tag))
    return out


def pick(report, n, d):
    """Tokens whose LoRA part is outside the cone, with a well-shaped cone, most interesting first."""
    good = []
    for t in report["per_token"]:
        v = np.array(t["v"])
        norms = np.linalg.norm(v, axis=1)
        if t["lora_cone"]["verdict"] != "outside" or norms.min() < 0.35 * norms.max() or min(t["g"]) < 0.15:
            continue
        if d == 2:
            cosang = v[0] @ v[1] / (norms[0] * norms[1])
            if not (-0.5 < cosang < 0.85):
                continue
        rel = t["lora_cone"]["relative_distance"]
        if not 0.1 < rel < 0.7:
            continue
        if d == 3:  # a cone that is not nearly flat reads best: largest smallest singular value
            spread = np.linalg.svd(v / norms[:, None], compute_uv=False).min()
            if spread < 0.45 or norms.min() < 0.5 * norms.max():
                continue
            good.append((-spread, t))
        else:
            good.append((abs(rel - 0.35), t))
    good.sort(key=lambda x: x[0])
    return [t for _, t in good[:n]]


def arrow(ax, a, b, color, ls="-", lw=2.0, z=3):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, color=color, lw=lw, linestyle=ls,
                                 zorder=z, shrinkA=0, shrinkB=0))


def draw_2d(report, out, toks, path):
    fig, axes = plt.subplots(1, len(toks), figsize=(5.2 * len(toks), 6.0))
    axes = np.atleast_1d(axes)
    for k, (ax, t) in enumerate(zip(axes, toks)):
        v, u, g = np.array(t["v"]), np.array(t["u"]), np.array(t["g"])
        p, pw = np.array(t["lora_point"]), np.array(t["weighted_sum_point"])
        lam, w = out["lambda"][k], out["certificate"][k]
        q = v.T @ lam  # nearest point of the cone
        R = 1.25 * max(np.abs(np.vstack([v, u, p[None], pw[None]])).max(), 1e-9)
        # the cone: the wedge between the two rays, clipped to the view
        ang = sorted(np.arctan2(v[:, 1], v[:, 0]))
        if ang[1] - ang[0] > np.pi:
            ang = [ang[1], ang[0] + 2 * np.pi]
        arc = np.linspace(ang[0], ang[1], 60)
        wedge = np.vstack([[0, 0], np.c_[np.cos(arc), np.sin(arc)] * 3 * R])
        ax.add_patch(Polygon(wedge, closed=True, color=C_CONE, alpha=0.45, lw=0, zorder=0,
                             label="cone{v_i}  (all weighted sums, g >= 0)"))
        ax.plot(v[:, 0], v[:, 1], color=C_V, lw=1.2, ls=":", zorder=1, label="hull{v_i}  (g >= 0, sum g = 1)")
        # the certificate: the line w . x = 0 separates the cone from p
        tline = np.array([-3 * R, 3 * R])
        perp = np.array([-w[1], w[0]])
        ax.plot(tline * perp[0], tline * perp[1], color=C_CERT, lw=1.0, ls="--", zorder=1,
                label="certificate: w . x = 0  (v_i . w <= 0 < p . w)")
        for i in range(len(v)):
            arrow(ax, (0, 0), v[i], C_V)
            arrow(ax, (0, 0), u[i], C_U, ls="--", lw=1.6)
            a0, a1 = np.arctan2(v[i, 1], v[i, 0]), np.arctan2(u[i, 1], u[i, 0])
            da = (a1 - a0 + np.pi) % (2 * np.pi) - np.pi
            rr = 0.35 * np.linalg.norm(v[i])
            s = np.linspace(a0, a0 + da, 30)
            ax.plot(rr * np.cos(s), rr * np.sin(s), color=C_U, lw=1.0)
            ax.annotate("v%d" % (i + 1), v[i], color=C_V, fontsize=11, xytext=(4, 4), textcoords="offset points")
            ax.annotate("v%d rotated" % (i + 1), u[i], color=C_U, fontsize=9, xytext=(4, -12), textcoords="offset points")
        ax.plot(*pw, "o", color=C_W, ms=9, zorder=5, label="weighted-sum gate  sum g_i v_i")
        ax.plot(*p, "*", color=C_P, ms=16, zorder=6, label="RadarGate  sum g_i R_i v_i")
        ax.plot([p[0], q[0]], [p[1], q[1]], color=C_P, lw=1.0, ls=":", zorder=4)
        ax.plot(*q, "x", color=C_P, ms=7, zorder=5)
        lc = t["lora_cone"]
        ax.set_title("token %d:  g = (%s)\nRadarGate %s the cone, distance %.3f (%.0f%% of |p|)"
                     % (t["token"], ", ".join("%.2f" % x for x in g), lc["verdict"], lc["distance"],
                        100 * lc["relative_distance"]), fontsize=10)
        ax.set_xlim(-R, R)
        ax.set_ylim(-R, R)
        ax.set_aspect("equal")
        ax.axhline(0, color="#dddddd", lw=0.6, zorder=-1)
        ax.axvline(0, color="#dddddd", lw=0.6, zorder=-1)
        ax.tick_params(labelsize=8)
        if k == 0:
            ax.legend(loc="lower left", fontsize=7.5, framealpha=0.9)
    s = report["sets"]
    fig.suptitle("2-D, N = 2 experts: a weighted-sum gate stays in the cone (and on the hull); rotations leave it.\n"
                 "Over all %d tokens: RadarGate outside the cone %d, weighted sum outside %d (every verdict certified)"
                 % (report["tokens"], s["lora_cone"]["outside"], s["weighted_sum_cone"]["outside"]), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)


def draw_3d(report, out, toks, path):
    """Each token twice: looking down the cone's axis (the cone is then the triangle-shaped region
    around the centre) and from the side."""
    panels = [(k, view) for k in range(len(toks)) for view in ("along the cone's axis", "from the side")]
    fig = plt.figure(figsize=(5.4 * len(panels), 6.4))
    for n, (k, view) in enumerate(panels):
        t = toks[k]
        ax = fig.add_subplot(1, len(panels), n + 1, projection="3d")
        v, u, g = np.array(t["v"]), np.array(t["u"]), np.array(t["g"])
        p, pw = np.array(t["lora_point"]), np.array(t["weighted_sum_point"])
        q = v.T @ out["lambda"][k]
        L = 1.5
        faces = [[np.zeros(3), L * v[i], L * v[(i + 1) % 3]] for i in range(3)]
        ax.add_collection3d(Poly3DCollection(faces, facecolor=C_CONE, alpha=0.30, edgecolor="#6baed6", lw=0.6))
        ax.add_collection3d(Poly3DCollection([v], facecolor=C_V, alpha=0.10, edgecolor=C_V, lw=1.6, linestyle=":"))
        for i in range(3):
            ax.quiver(0, 0, 0, *v[i], color=C_V, lw=2.2, arrow_length_ratio=0.08)
            ax.quiver(0, 0, 0, *u[i], color=C_U, lw=1.6, linestyle="--", arrow_length_ratio=0.08)
            ax.text(*(v[i] * 1.06), "v%d" % (i + 1), color=C_V, fontsize=10)
            ax.text(*(u[i] * 1.06), "v%d rot." % (i + 1), color=C_U, fontsize=8)
        ax.scatter(*pw, color=C_W, s=70, depthshade=False, label="weighted-sum gate  sum g_i v_i")
        ax.scatter(*p, color=C_P, s=170, marker="*", depthshade=False, label="RadarGate  sum g_i R_i v_i")
        ax.plot(*np.c_[p, q], color=C_P, lw=1.2, ls=":")
        ax.scatter(*q, color=C_P, s=30, marker="x", depthshade=False, label="its nearest point in the cone")
        ax.scatter(0, 0, 0, color="k", s=8)
        pts = np.vstack([v, u, p[None], np.zeros((1, 3))])
        lo, hi = pts.min(0), pts.max(0)
        c, r = (lo + hi) / 2, (hi - lo).max() / 2 * 1.05
        ax.set_xlim(c[0] - r, c[0] + r)
        ax.set_ylim(c[1] - r, c[1] + r)
        ax.set_zlim(c[2] - r, c[2] + r)
        axis = (v / np.linalg.norm(v, axis=1, keepdims=True)).sum(0)
        axis /= np.linalg.norm(axis)
        elev, azim = np.degrees(np.arcsin(axis[2])), np.degrees(np.arctan2(axis[1], axis[0]))
        if view == "from the side":
            elev, azim = elev - 60, azim + 50
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()  # the picture is about directions; axes and panes only clutter it
        lc, lh = t["lora_cone"], t["lora_hull"]
        ax.set_title("token %d, seen %s;  g = (%s)\nRadarGate: %s the cone by %.3f, %s the hull by %.3f\n"
                     "weighted sum: %s the cone, %s the hull"
                     % (t["token"], view, ", ".join("%.2f" % x for x in g), lc["verdict"], lc["distance"],
                        lh["verdict"], lh["distance"], t["weighted_sum_cone"]["verdict"],
                        t["weighted_sum_hull"]["verdict"]), fontsize=9)
        if n == 0:
            ax.legend(loc="upper left", fontsize=7.5)
    s = report["sets"]
    fig.suptitle("3-D, N = 3 experts: the cone (blue faces) and the hull (dotted triangle) of v1, v2, v3.\n"
                 "All %d tokens: RadarGate outside the cone %d, outside the hull %d;\n"
                 "weighted sum outside the cone %d, outside the hull %d (every verdict certified)"
                 % (report["tokens"], s["lora_cone"]["outside"], s["lora_hull"]["outside"],
                    s["weighted_sum_cone"]["outside"], s["weighted_sum_hull"]["outside"]), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--radargate", default=os.path.join(HERE, "..", "build", "radargate"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "docs", "images"))
    ap.add_argument("--seed-2d", type=int, default=35, help="seed of the 2-D layer")
    ap.add_argument("--seed-3d", type=int, default=45, help="seed of the 3-D layer")
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    binary = os.path.abspath(a.radargate)
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        r2 = layer_tokens(binary, work, 2, 2, a.seed_2d, a.tokens)
        t2 = pick(r2, 3, 2)
        if not t2:
            sys.exit("no token of the 2-D layer lands outside its cone; try another --seed-2d")
        draw_2d(r2, certify(binary, work, t2, "c2"), t2, os.path.join(a.out, "cone_2d.png"))
        r3 = layer_tokens(binary, work, 3, 3, a.seed_3d, a.tokens)
        t3 = pick(r3, 1, 3)
        if not t3:
            sys.exit("no token of the 3-D layer lands outside its cone; try another --seed-3d")
        draw_3d(r3, certify(binary, work, t3, "c3"), t3, os.path.join(a.out, "cone_3d.png"))
    for name in ("cone_2d.png", "cone_3d.png"):
        print("wrote %s" % os.path.join(a.out, name))
    for tag, r in (("2-D", r2), ("3-D", r3)):
        s = r["sets"]
        print("%s layer, %d tokens: RadarGate outside the cone %d, outside the hull %d; weighted sum outside the cone "
              "%d, outside the hull %d; weighted-sum check %s"
              % (tag, r["tokens"], s["lora_cone"]["outside"], s["lora_hull"]["outside"],
                 s["weighted_sum_cone"]["outside"], s["weighted_sum_hull"]["outside"],
                 "passed" if r["passed"] else "FAILED"))


if __name__ == "__main__":
    main()
