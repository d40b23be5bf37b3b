#!/usr/bin/python3
"""Experiment (c): ablation on the task of (b) at N = 20 (docs/SCIENCE.md).

Rotation off or on, stretch off or on (gate: uniform or stretch), relational map learned or mean,
angle bound none or pi_tanh; test accuracy and loss, mean ± std over the seeds. Reuses the experts
of scaling.py when both use the same --workdir.

    /usr/bin/python3 examples/experiments/ablation.py --radargate build/radargate [--seeds 3]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

# (label, variant, map, bound)
CONFIGS = [("rotation off, stretch off (uniform)", "uniform", "learned", "pi_tanh"),
           ("rotation off, stretch on (stretch_only)", "stretch_only", "learned", "pi_tanh")]
for stretch in (False, True):
    for mp in ("learned", "mean"):
        for bound in ("pi_tanh", "none"):
            CONFIGS.append(("rotation on, stretch %s, map %s, bound %s" % ("on" if stretch else "off", mp, bound),
                            "radargate" if stretch else "rotation_only", mp, bound))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", default="/tmp/radargate-experiments")
    ap.add_argument("--results", default=os.path.join(C.ROOT, "docs", "science"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="a smoke test: 200 images, N = 3, 1 seed, 2 epochs")
    a = ap.parse_args()
    if a.tiny:
        a.seeds, a.epochs, a.n = 1, 2, 3
    run = C.Runner(a.radargate, a.workdir)
    data = C.digits(limit=200 if a.tiny else None)
    tr = C.write_data(run.path("digits_train.safetensors"), data["x_train"], labels=data["y_train"])
    te = C.write_data(run.path("digits_test.safetensors"), data["x_test"], labels=data["y_test"])
    results = {label: [] for label, _, _, _ in CONFIGS}
    for seed in range(a.seeds):
        A, B, _ = C.expert_pool(run, data, seed, a.n, epochs=2 if a.tiny else 30)
        for i, (label, v, mp, bound) in enumerate(CONFIGS):
            model = C.pool_model(run.path("c", "seed%d" % seed, "cfg%d.safetensors" % i), v, A, B, seed, mp, bound)
            out = run.path("c", "seed%d" % seed, "cfg%d.trained.safetensors" % i)
            last = C.train_gate(run, model, tr, te, out, "cross_entropy", seed, a.epochs, a.lr)
            if last is None:
                loss, acc = C.ce_and_accuracy(C.outputs(run, model, data["x_test"]), data["y_test"])
                r = {"test_accuracy": acc, "test_loss": loss}
            else:
                r = {"test_accuracy": last["val_accuracy"], "test_loss": last["val_loss"], "train_loss": last["train_loss"]}
            results[label].append(r)
            run.log("seed %d %-48s test accuracy %.4f  test loss %.4f" % (seed, label, r["test_accuracy"], r["test_loss"]))
    os.makedirs(a.results, exist_ok=True)
    tag = "ablation_tiny" if a.tiny else "ablation"
    with open(os.path.join(a.results, tag + ".json"), "w") as f:
        json.dump({"n": a.n, "seeds": a.seeds, "epochs": a.epochs, "lr": a.lr, "results": results}, f, indent=1)
    lines = ["| rotation | stretch | map | bound | test accuracy | test loss |", "|---|---|---|---|---|---|"]
    for label, v, mp, bound in CONFIGS:
        rot = v in C.ROTATING
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            "on" if rot else "off", "on" if v in ("stretch_only", "radargate") else "off", mp if rot else "-",
            bound if rot else "-", C.fmt(C.mean_std([r["test_accuracy"] for r in results[label]])),
            C.fmt(C.mean_std([r["test_loss"] for r in results[label]]))))
    table = "\n".join(lines)
    with open(os.path.join(a.results, tag + ".md"), "w") as f:
        f.write("N = %d, mean ± std over %d seeds\n\n%s\n" % (a.n, a.seeds, table))
    print(table)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    labels = [label.replace(", ", "\n", 1) for label, _, _, _ in CONFIGS]
    ms = [C.mean_std([r["test_accuracy"] for r in results[label]]) for label, _, _, _ in CONFIGS]
    ys = range(len(CONFIGS))
    ax.barh(list(ys), [m for m, _ in ms], xerr=[s for _, s in ms], capsize=3, color="tab:green", alpha=0.8)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([label for label, _, _, _ in CONFIGS], fontsize=7)
    ax.invert_yaxis()
    lo = min(m - s for m, s in ms)
    ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax.set_xlabel("test accuracy")
    ax.set_title("digits, ablation at N = %d (%d seeds)" % (a.n, a.seeds))
    fig.tight_layout()
    fig.savefig(os.path.join(a.results, tag + ".png"), dpi=110)
    run.log("done: %d tool calls; results in %s" % (run.calls, a.results))


if __name__ == "__main__":
    main()
