#!/usr/bin/python3
"""Experiment (a): fitting outside the cone (docs/SCIENCE.md).

Four frozen experts, each pre-trained on one pair of digit classes; the task is a regression
(mse) whose target for an image of class c is the one-hot code of c scaled to the experts' typical
output norm. Four expert outputs span at most a 4-dimensional cone in the d = 10 output space, so
almost every target lies outside it; the script measures that share with NNLS. All eight variants
are trained (those with nothing to learn, sum and uniform, are evaluated as they are); reported:
train and test mse, and the share of test tokens whose output `radargate verify` certifies to lie
outside the cone of the experts' outputs.

    /usr/bin/python3 examples/experiments/cone.py --radargate build/radargate [--seeds 3]
"""
import argparse
import json
import os
import sys

import numpy as np
from scipy.optimize import nnls

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

VARIANTS = ["sum", "uniform", "static", "softmax", "topk", "stretch_only", "rotation_only", "radargate"]
N_EXPERTS = 4


def mse(y, t):
    return float(np.mean((y - t) ** 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", default="/tmp/radargate-experiments")
    ap.add_argument("--results", default=os.path.join(C.ROOT, "docs", "science"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--tiny", action="store_true", help="a smoke test: 200 images, 1 seed, 2 epochs")
    a = ap.parse_args()
    if a.tiny:
        a.seeds, a.epochs = 1, 2
    run = C.Runner(a.radargate, a.workdir)
    data = C.digits(limit=200 if a.tiny else None)
    results = {v: [] for v in VARIANTS}
    target_outside = []
    for seed in range(a.seeds):
        A, B, pairs = C.expert_pool(run, data, seed, N_EXPERTS, epochs=2 if a.tiny else 30)
        # The experts' outputs v_i = B_i A_i x, the scale of the targets, and how many targets lie
        # outside the cone {sum_i g_i v_i, g >= 0}.
        V = np.einsum("ndr,nri,ti->tnd", B.astype(np.float64), A.astype(np.float64), data["x_train"].astype(np.float64))
        scale = float(np.median(np.linalg.norm(V, axis=2)))
        T_tr = scale * np.eye(C.D)[data["y_train"]]
        T_te = scale * np.eye(C.D)[data["y_test"]]
        out = 0
        for t in range(len(T_tr)):
            _, res = nnls(V[t].T, T_tr[t])
            out += res > 1e-6 * np.linalg.norm(T_tr[t])
        target_outside.append(out / len(T_tr))
        tr = C.write_data(run.path("a", "seed%d" % seed, "train.safetensors"), data["x_train"], targets=T_tr)
        te = C.write_data(run.path("a", "seed%d" % seed, "test.safetensors"), data["x_test"], targets=T_te)
        run.log("seed %d: experts %s, target norm %.3f, %.1f%% of the training targets outside the experts' cone"
                % (seed, pairs, scale, 100 * target_outside[-1]))
        for v in VARIANTS:
            model = C.pool_model(run.path("a", "seed%d" % seed, "%s.safetensors" % v), v, A, B, seed)
            trained = run.path("a", "seed%d" % seed, "%s.trained.safetensors" % v)
            last = C.train_gate(run, model, tr, te, trained, "mse", seed, a.epochs, a.lr)
            final = model if last is None else trained
            r = {"train_mse": mse(C.outputs(run, final, data["x_train"]), T_tr),
                 "test_mse": mse(C.outputs(run, final, data["x_test"]), T_te)}
            r["outside"], r["weighted_sum_outside"] = C.outside_share(run, final, data["x_test"])
            results[v].append(r)
            run.log("seed %d %-13s train mse %.4f  test mse %.4f  outside the cone %.1f%%"
                    % (seed, v, r["train_mse"], r["test_mse"], 100 * r["outside"]))
    os.makedirs(a.results, exist_ok=True)
    tag = "cone_tiny" if a.tiny else "cone"
    with open(os.path.join(a.results, tag + ".json"), "w") as f:
        json.dump({"seeds": a.seeds, "epochs": a.epochs, "lr": a.lr, "experts": N_EXPERTS,
                   "target_outside": target_outside, "results": results}, f, indent=1)
    lines = ["| variant | train mse | test mse | test tokens outside the cone |", "|---|---|---|---|"]
    for v in VARIANTS:
        rs = results[v]
        ms = C.mean_std([100 * r["outside"] for r in rs])
        lines.append("| %s | %s | %s | %.1f%% ± %.1f |" % (v, C.fmt(C.mean_std([r["train_mse"] for r in rs])),
                                                          C.fmt(C.mean_std([r["test_mse"] for r in rs])), ms[0], ms[1]))
    table = "\n".join(lines)
    with open(os.path.join(a.results, tag + ".md"), "w") as f:
        f.write("%d experts, mean ± std over %d seeds; %.1f%% of the training targets lie outside the experts' cone\n\n%s\n"
                % (N_EXPERTS, a.seeds, 100 * np.mean(target_outside), table))
    print(table)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax1 = plt.subplots(figsize=(7.2, 3.8))
    xs = np.arange(len(VARIANTS))
    te = [C.mean_std([r["test_mse"] for r in results[v]]) for v in VARIANTS]
    ax1.bar(xs, [m for m, _ in te], yerr=[s for _, s in te], capsize=3, color="tab:blue", alpha=0.8)
    ax1.set_yscale("log")
    ax1.set_ylabel("test mse (log scale)")
    ax1.set_xticks(xs)
    ax1.set_xticklabels(VARIANTS, rotation=30, ha="right")
    ax2 = ax1.twinx()
    ax2.plot(xs, [100 * np.mean([r["outside"] for r in results[v]]) for v in VARIANTS], "o", color="tab:red")
    ax2.set_ylabel("test tokens outside the cone (%)", color="tab:red")
    ax2.set_ylim(-5, 105)
    ax1.set_title("digits, targets outside the cone of %d frozen experts (%d seeds)" % (N_EXPERTS, a.seeds))
    fig.tight_layout()
    fig.savefig(os.path.join(a.results, tag + ".png"), dpi=110)
    run.log("done: %d tool calls; results in %s" % (run.calls, a.results))


if __name__ == "__main__":
    main()
